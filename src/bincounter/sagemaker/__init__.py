"""SageMaker: the container side of the contract (`contract`, `train_entry`) and, on the client side, the
jobs and local mode (SDK v3)."""
