"""Training rules: cheap checks inside the trainer that say when a run goes wrong, and why.

SageMaker Debugger's built-in rules (PoorWeightInitialization, ExplodingTensor, LossNotDecreasing, Overfit,
...) need the smdebug hook, which does not follow current PyTorch. These are the same ideas on numbers the
trainer has anyway (the loss it logs, one global gradient norm per step, the validation confusion matrix,
the input-wait share), on by default (`--rules/--no-rules`).

Each rule fires at most once per run: one WARNING line, an entry in OUTPUT_DIR/rules.json (rule, where,
evidence, advice) and the `rules_fired` count on the epoch line, which the tuner can read. Non-finite
numbers are not a warning: the run stops with one line (`TrainingStopped`, a UserError) and the reason in
the failure file, instead of training on NaN.

Thresholds (module constants, in docs/QUALITY.md too):
  poor_initialization   mean loss of the first INIT_STEPS steps (all ranks) > INIT_LOSS_FACTOR x ln(classes),
                        or the first batch's logits spread (std) > INIT_LOGIT_STD
  nonfinite             loss NaN/Inf, or the gradient norm NaN/Inf (with fp16 loss scaling: NONFINITE_STEPS
                        consecutive steps, since the scaler skips the odd overflow by design) -> stop
  exploding_gradients   gradient norm > EXPLODE_FACTOR x the median of the first NORM_STEPS steps
  vanishing_gradients   gradient norm < VANISH_NORM for VANISH_STEPS consecutive steps
  loss_not_decreasing   no epoch among the last PLATEAU_EPOCHS lowered the best earlier train loss by 1%, while
                        the lr is above PLATEAU_MIN_LR_FRACTION of its peak (the end of the schedule may flatten)
  overfitting           val loss rose and train loss fell for OVERFIT_EPOCHS epochs in a row
  input_bound           the input pipeline held INPUT_WAIT_SHARE or more of an epoch's train time (from epoch 2)
  empty_class           a count with no train images (it can never be predicted)
  never_predicted       a count with validation images that the best model never answers
  collapsed             the best model answers one count for more than COLLAPSE_SHARE of validation images
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path

import torch

from . import COUNTS
from .artifact import UNFINISHED
from .distributed import DistInfo, all_reduce_sum
from .errors import UserError

log = logging.getLogger("bincounter")

INIT_STEPS, INIT_LOSS_FACTOR, INIT_LOGIT_STD = 10, 1.5, 3.0
NONFINITE_STEPS = 20
NORM_STEPS, EXPLODE_FACTOR = 20, 50.0
VANISH_NORM, VANISH_STEPS = 1e-7, 20
PLATEAU_EPOCHS, PLATEAU_MIN_LR_FRACTION = 2, 0.25
OVERFIT_EPOCHS = 2
INPUT_WAIT_SHARE = 0.3
COLLAPSE_SHARE = 0.9
RULES_FILE = "rules.json"


class TrainingStopped(UserError):
    """A rule stopped the run (non-finite loss or gradients)."""


class Rules:
    def __init__(self, info: DistInfo, out_dir: str | Path, lr: float, enabled: bool = True,
                 num_classes: int = len(COUNTS)):
        self.info, self.out_dir, self.lr, self.enabled = info, Path(out_dir), lr, enabled
        self.k, self.device_type = num_classes, info.device.type
        self.fired: list[dict] = []
        self._names: set[str] = set()
        self._first_losses: list[float] = []
        self._norms: list[float] = []
        self._small = self._nonfinite = 0
        self._logit_std: float | None = None
        self.before_write = None  # called before rules.json is written (train.py: an earlier run's results go)

    # ------------------------------------------------------------------------------------------ plumbing
    def fire(self, rule: str, where: dict, evidence: dict, advice: str) -> None:
        if rule in self._names:
            return
        self._names.add(rule)
        entry = json.loads(json.dumps({"rule": rule, **where, "evidence": evidence, "advice": advice},
                                      default=lambda o: o.item() if hasattr(o, "item") else str(o)))  # plain types
        self.fired.append(entry)
        if self.info.is_main:
            at = " ".join(f"{k} {v}" for k, v in where.items())
            ev = ", ".join(f"{k}={_num(v)}" for k, v in evidence.items())
            log.warning("rule %s fired at %s: %s. %s", rule, at, ev, advice)
            self.write()

    def write(self, model_version: str | None = None) -> Path | None:
        """rules.json; at the end of a run with the `model_version` of the model the run saved."""
        if not (self.enabled and self.info.is_main):
            return None
        if self.before_write is not None:
            self.before_write()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / RULES_FILE
        # mid-run: no model of this run to name yet (artifact.UNFINISHED never matches one)
        doc = {"rules_fired": len(self.fired), "fired": self.fired, "model_version": model_version or UNFINISHED}
        path.write_text(json.dumps(doc, indent=2, default=str))
        return path

    @property
    def count(self) -> int:
        return len(self.fired)

    def state_dict(self) -> dict:
        """What a checkpoint keeps, so a resumed run reports the rules fired before the interruption."""
        return {"fired": self.fired, "first_losses": self._first_losses, "norms": self._norms, "small": self._small,
                "nonfinite": self._nonfinite, "logit_std": self._logit_std}

    def load_state_dict(self, st: dict) -> None:
        if not st:
            return
        self.fired = list(st["fired"])
        self._names = {f["rule"] for f in self.fired}
        self._first_losses, self._norms = list(st["first_losses"]), list(st["norms"])
        self._small, self._nonfinite, self._logit_std = st["small"], st["nonfinite"], st["logit_std"]

    # ------------------------------------------------------------------------------------------- checks
    def start(self, class_counts: list[int], train_dir: str) -> None:
        if not self.enabled:
            return
        empty = [COUNTS[i] for i, n in enumerate(class_counts) if n == 0]
        if empty:
            self.fire("empty_class", {"epoch": 0}, {"counts": empty, "train_per_count": class_counts},
                      f"the train channel has no images of count {', '.join(map(str, empty))} (folder "
                      f"{'/'.join(f'{train_dir}/{c}' for c in empty)} missing or empty): the model can never "
                      "predict that; add images or check `bincounter data split`")

    def step(self, epoch: int, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None,
             logits: torch.Tensor, scaled: bool) -> None:
        """After backward, before the optimizer step; on every rank. The decisions that stop a run use the global
        gradient norm, which DDP's all-reduce makes identical on every rank (a NaN loss on any rank makes it NaN
        everywhere), so every rank stops at the same step; this rank's own loss decides only on one process."""
        if not self.enabled:
            return
        where = {"epoch": epoch, "step": step}
        loss_v = float(loss)
        norm_v = float(grad_norm) if grad_norm is not None else float("nan")
        if not math.isfinite(loss_v) and (not self.info.enabled or grad_norm is None):
            self._stop("nonfinite", where, {"loss": loss_v, "grad_norm": norm_v},
                       f"the loss is {loss_v} at epoch {epoch} step {step}")
        if grad_norm is not None:
            if not math.isfinite(norm_v):
                self._nonfinite += 1
                if not scaled or self._nonfinite >= NONFINITE_STEPS:
                    self._stop("nonfinite", where, {"loss": loss_v, "grad_norm": norm_v,
                                                    "consecutive_steps": self._nonfinite},
                               f"the gradient norm is {norm_v} at epoch {epoch} step {step}")
            else:
                self._nonfinite = 0
                self._gradients(where, norm_v)
        if len(self._first_losses) < INIT_STEPS:
            if not self._first_losses:
                self._logit_std = float(logits.detach().float().std())
            self._first_losses.append(loss_v)
            if len(self._first_losses) == INIT_STEPS:
                self._init_check(where)

    def _gradients(self, where: dict, norm: float) -> None:
        if len(self._norms) < NORM_STEPS:
            self._norms.append(norm)
        elif norm > EXPLODE_FACTOR * max(statistics.median(self._norms), 1e-12):
            self.fire("exploding_gradients", where, {"grad_norm": norm, "median_first_steps":
                                                     statistics.median(self._norms)},
                      f"the gradients grew {norm / statistics.median(self._norms):.0f}x: lower --lr (now {self.lr:g}) "
                      "or raise --warmup-epochs")
        self._small = self._small + 1 if norm < VANISH_NORM else 0
        if self._small >= VANISH_STEPS:
            self.fire("vanishing_gradients", where, {"grad_norm": norm, "steps": self._small},
                      "no gradient reaches the weights: check --freeze-backbone-epochs, the lr schedule, or a "
                      "saturated head")

    def _init_check(self, where: dict) -> None:
        t = torch.tensor([sum(self._first_losses), len(self._first_losses)], dtype=torch.float64,
                         device=self.info.device)
        all_reduce_sum(t, self.info)  # every rank reaches step INIT_STEPS together
        mean = float(t[0] / t[1])
        ln_k = math.log(self.k)
        std = self._logit_std or 0.0
        if mean > INIT_LOSS_FACTOR * ln_k or std > INIT_LOGIT_STD:
            self.fire("poor_initialization", where, {"mean_loss_first_steps": mean, "ln_classes": ln_k,
                                                     "first_logit_std": std},
                      f"the first steps' loss is {mean / ln_k:.1f}x that of uniform guessing (ln {self.k}): "
                      "large initial logits wreck pretrained features; start the new head neutral (zero init, "
                      "bincounter's default) or lower --lr")

    def _stop(self, rule: str, where: dict, evidence: dict, what: str) -> None:
        advice = (f"lower --lr (now {self.lr:g}), raise --warmup-epochs, or train without --amp; the run stops "
                  "rather than train on NaN")
        self.fire(rule, where, evidence, advice)
        raise TrainingStopped(f"training stopped: {what} (rule {rule}); {advice}")

    def epoch_end(self, epoch: int, history: list[dict], wait_share: float | None, lr_fraction: float = 1.0) -> None:
        """`lr_fraction`: the lr now over the peak lr; a plateau is only news while the lr is still high (at
        the end of a cosine schedule the loss is meant to flatten)."""
        if not self.enabled or not self.info.is_main:
            return
        where = {"epoch": epoch}
        tl = [h["train_loss"] for h in history]
        vl = [h["val_loss"] for h in history]
        if len(tl) > PLATEAU_EPOCHS and lr_fraction > PLATEAU_MIN_LR_FRACTION:
            earlier, recent = min(tl[:-PLATEAU_EPOCHS]), min(tl[-PLATEAU_EPOCHS:])
            if recent > 0.99 * earlier:
                self.fire("loss_not_decreasing", where, {"best_train_loss_before": earlier,
                                                         f"best_of_last_{PLATEAU_EPOCHS}": recent},
                          f"the train loss stopped falling while the lr is still high: try another --lr (now "
                          f"{self.lr:g}) or check the labels (bincounter data eda)")
        if len(tl) > OVERFIT_EPOCHS:
            v, t = vl[-OVERFIT_EPOCHS - 1:], tl[-OVERFIT_EPOCHS - 1:]
            rising = all(b > a for a, b in zip(v, v[1:], strict=False))
            if rising and all(b < a for a, b in zip(t, t[1:], strict=False)):
                self.fire("overfitting", where, {"val_loss": v, "train_loss": t},
                          "val loss rises while train loss falls: the best epoch is kept; add data or "
                          "augmentation, raise --weight-decay/--drop-rate, or stop earlier (--patience)")
        if epoch >= 2 and wait_share is not None and wait_share >= INPUT_WAIT_SHARE:
            fix = ("raise --workers (DataLoader processes per GPU), store images closer to --image-size, or use "
                   "FastFile/sharded input" if self.device_type == "cuda" else
                   "on a CPU the model and the decoder share the cores: raise --workers only if cores are idle, "
                   "or store images closer to --image-size")
            self.fire("input_bound", where, {"input_wait_share": wait_share},
                      f"the model waited for data {100 * wait_share:.0f}% of the time: {fix}")

    def train_end(self, best_epoch: int | None, best_val_cm) -> None:
        if not self.enabled or not self.info.is_main or best_val_cm is None:
            return
        import numpy as np

        cm = np.asarray(best_val_cm)
        n = int(cm.sum())
        if not n:
            return
        where = {"epoch": best_epoch}
        answered = cm.sum(axis=0)
        support = cm.sum(axis=1)
        top = int(answered.argmax())
        if answered[top] / n > COLLAPSE_SHARE:
            self.fire("collapsed", where, {"count": COUNTS[top], "share": answered[top] / n},
                      f"the model answers count {COUNTS[top]} for {100 * answered[top] / n:.0f}% of the validation "
                      "images: try a lower --lr, more epochs, ImageNet weights (--pretrained-path), or check the "
                      "train channel's class balance (bincounter data eda)")
        never = [COUNTS[i] for i in range(len(COUNTS)) if answered[i] == 0 and support[i] > 0]
        if never:
            self.fire("never_predicted", where, {"counts": never, "val_support": [int(support[COUNTS.index(c)])
                                                                                  for c in never]},
                      f"the best model never answers count {', '.join(map(str, never))}: more epochs or data for "
                      "that count, or --loss ordinal")


def _num(v):
    return f"{v:.4g}" if isinstance(v, float) else v
