"""The image's side of the SageMaker contract: what runs inside the container. `contract` (the /opt/ml paths, env and
hyperparameter strings, parsed once at the edge), `train_entry` (`docker run IMAGE train`), `processing`
(`docker run IMAGE process ...`). The client side (`bincounter sm ...`, on the user's machine) is `bincounter.sm`;
the two share only `contract`
(its constants and the hyperparameter-string functions)."""
