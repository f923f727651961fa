"""What a training run carries from one epoch to the next, and the checkpoint's schema.

`TrainingState` holds the model, optimizer, learning-rate schedule, fp16 grad scaler and training rules, and the
run's bookkeeping: the last finished epoch, the history of epoch rows, the best epoch with its weights and
confusion matrix, and the early-stopping counter. Its `state_dict()` / `load_state_dict()` pair is the one place
the checkpoint's contents are written and read, together with each rank's RNG states (so that a resumed run
draws the dropout masks an uninterrupted one draws). The pair is versioned by CHECKPOINT_VERSION: change what it
holds and bump it, and a checkpoint of another version is refused in one line instead of half-loaded.
`checkpoint.py` puts it in a file.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .distributed import DistInfo
from .errors import UserError
from .rules import Rules

#: The version of `TrainingState.state_dict()`. 1: the unversioned checkpoints written before it had one: the same
#: keys as 2, so they resume (a run interrupted before an upgrade is not lost).
CHECKPOINT_VERSION = 2
READS = (1, 2)


@dataclass(eq=False)
class TrainingState:
    """The run between epochs; the trainer builds it at epoch 0 and resumes it with load_state_dict()."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None  # fp16 autocast only (bf16 and fp32 need none)
    rules: Rules
    info: DistInfo  # not saved: whose RNG state to restore, and the ranks to gather RNG states from
    #: checkpoint.made_with of this run: settings, world size and data fingerprint (rank 0; {} on the others)
    made_with: dict = field(default_factory=dict)
    epoch: int = 0  # the last finished epoch
    history: list[dict] = field(default_factory=list)  # one row per epoch, as its metric line prints it
    best: dict | None = None  # the best epoch's row
    best_model: dict | None = None  # its weights, on the CPU
    best_val_cm: list | None = None  # its validation confusion matrix (the end-of-run rules judge it)
    bad_epochs: int = 0  # epochs since the best one (early stopping)

    def is_better(self, row: dict) -> bool:
        """Whether the epoch `row` beats the best so far: a higher val_acc, then a lower val_loss."""
        return self.best is None or (row["val_acc"], -row["val_loss"]) > (self.best["val_acc"], -self.best["val_loss"])

    def end_epoch(self, row: dict, val_cm: list, improved: bool) -> None:
        """Epoch `row` is done (and in the history): keep it as the best, with a copy of the model's weights, or
        count it towards early stopping."""
        self.epoch = row["epoch"]
        if improved:
            self.best, self.best_val_cm, self.bad_epochs = dict(row), val_cm, 0
            self.best_model = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        else:
            self.bad_epochs += 1

    def state_dict(self) -> dict:
        """The checkpoint's contents: all a resumed run needs to print the numbers an uninterrupted one prints.
        Plain types and tensors (it loads with weights_only). Under torch.distributed every rank calls it (each
        adds its RNG state) and rank 0 saves it."""
        return {"version": CHECKPOINT_VERSION, "made_with": self.made_with,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rules": self.rules.state_dict(), "epoch": self.epoch, "history": self.history, "best": self.best,
                "best_model": self.best_model, "best_val_cm": self.best_val_cm, "bad_epochs": self.bad_epochs,
                "rng": _gather_rng_states(self.info)}

    def load_state_dict(self, sd: dict) -> None:
        """Continue from `sd` (what state_dict() returned, on any rank), this rank from its own RNG state. A
        state_dict of another CHECKPOINT_VERSION is a UserError."""
        problem = version_problem(sd)
        if problem:
            raise UserError(problem)
        self.model.load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.scheduler.load_state_dict(sd["scheduler"])
        if self.scaler is not None and sd["scaler"]:  # a run that had none (bf16, CPU) saved None
            self.scaler.load_state_dict(sd["scaler"])
        self.rules.load_state_dict(sd["rules"])
        self.made_with, self.epoch, self.history = sd["made_with"], sd["epoch"], sd["history"]
        self.best, self.best_model, self.best_val_cm = sd["best"], sd["best_model"], sd["best_val_cm"]
        self.bad_epochs = sd["bad_epochs"]
        # this rank's own stream (checkpoint.made_with holds the world size: a resume has the same ranks)
        _set_rng_state(sd["rng"][self.info.rank], self.info.device)


def version_problem(sd: dict, name: str = "checkpoint") -> str | None:
    """One line saying why this bincounter cannot resume the checkpoint contents `sd` (written with another
    CHECKPOINT_VERSION) and what to do, or None when it can. `name`: how to call it in that line."""
    version = sd.get("version", 1) if isinstance(sd, dict) else None
    if version in READS:
        return None
    older = isinstance(version, int) and version < CHECKPOINT_VERSION
    return (f"{name} has format version {version!r}, this bincounter reads version {CHECKPOINT_VERSION} (written by "
            f"{'an older' if older else 'another'} bincounter): "
            f"{'' if older else 'resume it with the bincounter that wrote it, or '}point --checkpoint-dir at an "
            "empty folder (or delete the checkpoint) to start afresh")


def _rng_state(device: torch.device) -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()  # plain types: the checkpoint loads weights_only
    return {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(st: dict, device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    name, keys, pos, has_gauss, gauss = st["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(st["python"])
    if st["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(st["cuda"], device)


def _gather_rng_states(info: DistInfo) -> list[dict]:
    """Every rank's RNG states, by rank (each rank draws its own dropout stream: a resumed run matches on all)."""
    if not info.enabled:
        return [_rng_state(info.device)]
    states = [None] * info.world_size
    torch.distributed.all_gather_object(states, _rng_state(info.device))
    return states
