"""`TrainConfig`: the trainer's plain typed arguments and their checks, in a module that imports no torch, so
that the CLI and `sm train --dry-run` can build and check one (`--hp`) in well under a second. The trainer is
`bincounter.train` (which re-exports this class).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError


@dataclass
class TrainConfig:
    train_dir: str
    val_dir: str
    model_dir: str
    test_dir: str | None = None
    output_dir: str | None = None  # reports (metrics JSON, confusion matrix); default: model_dir
    checkpoint_dir: str | None = None
    arch: str = "efficientnet_b0"
    backend: str = "timm"
    pretrained: bool = True
    pretrained_path: str | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    loss: str = "ce"  # ce: softmax head + cross-entropy; ordinal: model.OrdinalHead (CORN) + its likelihood
    drop_rate: float = 0.2  # dropout before the classifier (timm models)
    freeze_backbone_epochs: int = 0
    patience: int = 0  # early stopping: epochs without val_acc improvement; 0 = off
    image_size: int = 224
    workers: int = -1  # -1: min(4, cpus per process)
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # CUDA only: bf16 (or fp16 + grad scaler) autocast
    channels_last: bool = True  # CPU and CUDA (measured on CPU: 1.4-1.5x training throughput, docs/PERFORMANCE.md)
    show_progress: bool = True
    profile_steps: int = 0  # >0: torch.profiler trace of that many steps + system report in output_dir/profile
    rules: bool = True  # training rules (bincounter.rules): warnings, rules.json, stop on NaN
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.epochs < 1:
            raise UserError(f"epochs must be >= 1 (got {self.epochs})")
        if self.batch_size < 1:
            raise UserError(f"batch_size must be >= 1 (got {self.batch_size})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"lr must be a positive number (got {self.lr})")
        if self.image_size < 32:
            raise UserError(f"image_size must be >= 32 (got {self.image_size})")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"label_smoothing must be in [0, 1) (got {self.label_smoothing})")
        if self.loss not in ("ce", "ordinal"):
            raise UserError(f"loss must be ce or ordinal (got {self.loss!r})")
        if not self.pretrained and self.pretrained_path:
            raise UserError(f"--no-pretrained and --pretrained-path {self.pretrained_path} contradict each other "
                            "(in a SageMaker job: pretrained=false and a 'pretrained' channel): drop one")
        # a channels directory (data split's, or data shard's) given for a channel: name its channels
        for flag, d in (("--train", self.train_dir), ("--val", self.val_dir), ("--test", self.test_dir)):
            splits = [s for s in ("train", "val", "test") if d and (Path(d) / s).is_dir()]
            if splits and not (Path(d) / "index.json").is_file():
                root = Path(d)
                raise UserError(f"{flag} {d}: {d} holds {', '.join(s + '/' for s in splits)}: pass --train "
                                f"{root / 'train'} --val {root / 'val'}"
                                + (f" (and --test {root / 'test'})" if "test" in splits else ""))
        # output folders are checked before the first epoch, not when the first artifact is written
        for flag, d in (("--model-dir", self.model_dir), ("--output-dir", self.output_dir),
                        ("--checkpoint-dir", self.checkpoint_dir)):
            if d and Path(d).exists() and not Path(d).is_dir():
                raise UserError(f"{flag} {d} is a file, not a folder")
