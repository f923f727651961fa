"""Data: ABID parsing (`abid`), synthetic bins (`synth`), the train/val/test split (`split`) and the
channel Dataset the trainer reads (`dataset`)."""
