"""`TrainConfig`: the trainer's plain typed arguments and their checks, in a module that imports no torch, so
that the CLI and `sm train --dry-run` can build and check one (`--hp`) in well under a second. The trainer is
`bincounter.train` (which re-exports this class).

The trainer's flags live here too (`add_train_arguments`): the one definition that `bincounter train`, the image's
entry point (SageMaker hyperparameters become these flags) and `sm`'s `--hp` checks all read. `config_from_args`
is the one place a parsed Namespace becomes a `TrainConfig`; nothing below it sees a Namespace.
"""

from __future__ import annotations

import argparse
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
    mlflow: str | None = None  # tracking URI (None: $MLFLOW_TRACKING_URI, else none): bincounter.tracking
    mlflow_experiment: str | None = None  # None: MLFLOW_EXPERIMENT_NAME, else "bincounter"
    mlflow_from_trial: str | None = None  # the tuning trial these hyperparameters came from (a tag on the run)
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
        if self.mlflow:  # torch- and mlflow-free: a URI that cannot work stops here, before any model is built
            from .tracking import check_uri, resolve_uri

            if resolve_uri(self.mlflow):
                check_uri(self.mlflow)
        # output folders are checked before the first epoch, not when the first artifact is written
        for flag, d in (("--model-dir", self.model_dir), ("--output-dir", self.output_dir),
                        ("--checkpoint-dir", self.checkpoint_dir)):
            if d and Path(d).exists() and not Path(d).is_dir():
                raise UserError(f"{flag} {d} is a file, not a folder")


# --------------------------------------------------------------------------- the trainer's flags
def positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s!r} must be >= 1")
    return v


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The trainer's flags. The container maps SageMaker hyperparameters onto these same flags."""
    d = p.add_argument_group("data and outputs")
    d.add_argument("--train", dest="train_dir", required=True, help="train channel: DIR/<count>/<id>.jpg")
    d.add_argument("--val", dest="val_dir", required=True, help="validation channel, same layout")
    d.add_argument("--test", dest="test_dir", help="optional test channel: evaluated with the best model")
    d.add_argument("--model-dir", required=True, help="where model.safetensors + config.json go")
    d.add_argument("--output-dir", help="reports (metrics JSON, confusion matrix PNG); default: --model-dir")
    d.add_argument("--checkpoint-dir", help="write a checkpoint every epoch and resume from it if present")
    m = p.add_argument_group("model")
    m.add_argument("--arch", default="efficientnet_b0", help="any timm (or torchvision) model name")
    m.add_argument("--backend", default="timm", choices=["timm", "torchvision"], help="the library --arch is from")
    m.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                   help="start from ImageNet weights (downloaded by the backend unless --pretrained-path)")
    m.add_argument("--pretrained-path", help="local weights file (or a dir with one), e.g. the SageMaker "
                   "'pretrained' channel; its classifier head is replaced")
    h = p.add_argument_group("hyperparameters")
    h.add_argument("--epochs", type=positive_int, default=10, help="passes over the train channel")
    h.add_argument("--batch-size", type=positive_int, default=32, help="per process (per GPU)")
    h.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (warm-up, then cosine); 1e-3 "
                   "vs 3e-4 and 3e-3: docs/QUALITY.md, recipe sweep")
    h.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    h.add_argument("--warmup-epochs", type=float, default=0.5,
                   help="linear warm-up (0 cost 0.03 test accuracy in the recipe sweep)")
    h.add_argument("--label-smoothing", type=float, default=0.1, help="(0.1 vs 0: docs/QUALITY.md)")
    h.add_argument("--loss", choices=["ce", "ordinal"], default="ce",
                   help="ce: softmax head + cross-entropy; ordinal: an ordinal head (CORN: P(count > k | count >= k)) "
                   "trained on its likelihood. Both report argmax and expected-count accuracy/RMSE "
                   "(docs/QUALITY.md compares them)")
    h.add_argument("--drop-rate", type=float, default=0.2, help="dropout before the classifier (timm)")
    h.add_argument("--freeze-backbone-epochs", type=int, default=0,
                   help="train only the new head for the first N epochs (no gain measured with the neutral head)")
    h.add_argument("--patience", type=int, default=0, help="early stopping after N epochs without val_acc "
                   "improvement (0: off)")
    h.add_argument("--image-size", type=positive_int, default=224, help="square input size in pixels")
    h.add_argument("--seed", type=int, default=0, help="seeds initialisation, augmentation and sampling")
    r = p.add_argument_group("runtime")
    r.add_argument("--workers", type=int, default=-1, help="DataLoader workers per process (-1: auto)")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: CUDA when there is a GPU, else CPU")
    r.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="autocast on CUDA")
    r.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format (faster on CUDA and, measured, on CPU)")
    r.add_argument("--progress", dest="show_progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bars (a bar on a terminal, periodic lines otherwise)")
    r.add_argument("--profile-steps", type=int, default=0, help="torch.profiler trace of N training steps and a "
                   "system-utilisation report in OUTPUT_DIR/profile/")
    r.add_argument("--rules", action=argparse.BooleanOptionalAction, default=True,
                   help="training rules: poor init, NaN/Inf (stops the run), exploding/vanishing gradients, loss "
                   "not decreasing, overfitting, input-bound, empty/never-predicted/collapsed counts; one WARNING "
                   "each, OUTPUT_DIR/rules.json, rules_fired on the epoch line")
    t = p.add_argument_group("experiment tracking (MLflow)")
    t.add_argument("--mlflow", metavar="URI", help="log params, every epoch's metrics, the rules fired, the reports "
                   "and the model to an MLflow run: an http(s) tracking server, a folder, or a SageMaker MLflow "
                   "tracking server ARN (needs sagemaker-mlflow). Default: $MLFLOW_TRACKING_URI if set, else no "
                   "tracking; 'off' turns it off")
    t.add_argument("--mlflow-experiment", metavar="NAME", help="the run's experiment (default: "
                   "$MLFLOW_EXPERIMENT_NAME, else 'bincounter'; sm tune: the tuning job's name)")
    t.add_argument("--mlflow-from-trial", metavar="JOB", help="the tuning trial these hyperparameters came from, "
                   "tagged on the run (sm train --from-tuning-job sets it)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The one place a parsed Namespace becomes the trainer's typed config (nothing below sees a Namespace).
    `TrainConfig` is looked up at call time, so a test can widen it."""
    fields = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
