"""The resumable checkpoint as a file: CHECKPOINT in --checkpoint-dir, holding `TrainingState.state_dict()` (the
schema and its version live there).

A checkpoint records what made it (`made_with`: the TrainConfig settings a resume must share, the world size and
a fingerprint of the train/val data); a run whose settings or data differ stops with one line instead of silently
reusing it. Rank 0 reads it and broadcasts it (or the reason it cannot be resumed), so that every rank resumes
from the same one or stops with the same line; rank 0 writes it atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

from .distributed import DistInfo, broadcast_object
from .errors import UserError
from .train_config import TrainConfig
from .train_state import version_problem

log = logging.getLogger("bincounter")
CHECKPOINT = "checkpoint.pt"
#: TrainConfig fields a checkpoint must agree on to be resumed (epochs and patience may grow: a longer run).
MADE_WITH = ("arch", "backend", "pretrained", "image_size", "batch_size", "lr", "weight_decay", "warmup_epochs",
             "label_smoothing", "drop_rate", "freeze_backbone_epochs", "seed", "loss")


def data_fingerprint(*datasets) -> str:
    """sha256 over the (relative path, size) of every sample: the same channels give the same value on any
    host; a changed, added or removed image changes it."""
    h = hashlib.sha256()
    for ds in datasets:
        root = Path(ds.root)
        for path, label in ds.samples:
            h.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\0{label}\n".encode())
        h.update(b"--\n")
    return h.hexdigest()


def made_with(cfg: TrainConfig, info: DistInfo, fingerprint: str) -> dict:
    return {**{k: getattr(cfg, k) for k in MADE_WITH}, "world_size": info.world_size, "data": fingerprint}


def _made_with_problem(saved: dict, now: dict, path: Path) -> str | None:
    diff = [k for k in now if saved.get(k) != now[k]]
    if not diff:
        return None
    settings = [k for k in diff if k != "data"]
    parts = []
    if settings:
        parts.append(f"was made with {', '.join(f'{k}={saved.get(k)!r}' for k in settings)}; this run has "
                     f"{', '.join(f'{k}={now[k]!r}' for k in settings)}")
    if "data" in diff:
        parts.append("was made from other train/val data (images added, removed or changed since)")
    return (f"checkpoint {path} {'; and it '.join(parts)}. Resume with the same settings and data, or point "
            "--checkpoint-dir at an empty folder (or delete the checkpoint) to start afresh")


def read_checkpoint(checkpoint_dir: str | Path, info: DistInfo, now: dict) -> dict | None:
    """The checkpoint in `checkpoint_dir` if there is one this run can resume (`now`: this run's made_with, on
    rank 0), on every rank; None when there is none (or a torn one, with a warning). A checkpoint of another
    version, settings or data is a one-line UserError on every rank."""
    sd = problem = None
    if info.is_main:
        path = Path(checkpoint_dir) / CHECKPOINT
        if path.is_file():
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # a torn file from a killed job: start over, say so
                log.warning("ignoring unreadable checkpoint %s (%s)", path, e)
            if sd is not None:
                problem = version_problem(sd, f"checkpoint {path}") or _made_with_problem(sd["made_with"], now, path)
                if problem is None:
                    log.info("resuming from %s (epoch %d done)", path, sd["epoch"])
    sd, problem = broadcast_object((None, problem) if problem else (sd, None), info)
    if problem:
        raise UserError(problem)
    return sd


def write_checkpoint(checkpoint_dir: str | Path, sd: dict) -> None:
    """`sd` (a TrainingState.state_dict()) as the checkpoint, atomically: a killed job leaves the previous one."""
    path = Path(checkpoint_dir) / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(sd, tmp)
    os.replace(tmp, path)
