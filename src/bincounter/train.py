"""The trainer: plain typed arguments in (`TrainConfig`), a model directory out.

The same function runs from the CLI (`bincounter train ...`), under torchrun, and in the container
(`bincounter.sagemaker.train_entry` parses the SageMaker contract into a `TrainConfig` at the edge). `_train` reads
top to bottom: build the model, the data and the `TrainingState` (train_state.py), resume from a checkpoint
(checkpoint.py), run the epochs (`_fit`, over engine.py's loops), then write the best model and the results.

Per epoch it prints one line in the `metrics.EPOCH_KEYS` format (rank 0 only; `best_val_acc` is the tuning
objective, so the tuner ranks a trial by the epoch whose weights become the artifact), keeps the best epoch
by val_acc (then val_loss), writes that model as the artifact, and a resumable checkpoint when
`checkpoint_dir` is set. With a test channel it evaluates the best model on it at the end. With `--mlflow` (or
MLFLOW_TRACKING_URI) rank 0 also writes the run to MLflow (tracking.py: opened before the model is built, every
epoch as it ends, the results at the end, FAILED when training fails).

Randomness: the model is built under `seed` (the same initial weights on every rank); then each rank draws
its own stream from `seed + rank` (its own dropout masks). Checkpoints resume exactly: the sampler order is a
function of (seed, epoch), and the checkpoint holds each rank's RNG states and the fp16 grad scaler, so an
interrupted run continues with the same numbers an uninterrupted one prints. A checkpoint records what made
it (settings, world size, a fingerprint of the data); a run whose settings differ stops with one line instead
of silently reusing it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from . import COUNTS
from .artifact import RESULT_FILES
from .checkpoint import data_fingerprint, made_with, read_checkpoint, write_checkpoint
from .distributed import DistInfo, barrier, cleanup, init_distributed, sync_buffers
from .engine import amp_dtype, evaluate, train_one_epoch
from .errors import UserError, write_failure_file
from .metrics import format_epoch_line, format_final_line, format_summary, plot_history, summarize_eval, write_report
from .model import classifier, create_model, export_onnx, model_mean_std, save_artifact
from .optim import create_optimizer, create_scheduler
from .preprocess import Preprocess
from .rules import Rules
from .train_config import TrainConfig  # noqa: F401 (bincounter.train.TrainConfig, as before)
from .train_data import TrainData, load_data, make_loader, rank_seed
from .train_state import TrainingState

log = logging.getLogger("bincounter")


def setup_logging(info: DistInfo | None = None, level: int = logging.INFO) -> None:
    """Rank-aware logging: rank 0 at `level`, other ranks warnings only and prefixed with their rank.
    Replaces a plain stderr handler (the CLI's basicConfig) with ours; leaves other handlers (a caller's,
    pytest's) alone. Idempotent."""
    rank = info.rank if info else int(os.environ.get("RANK", "0"))
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_bincounter", False)]
    if ours:
        h = ours[0]
    else:
        for other in list(root.handlers):
            if type(other) is logging.StreamHandler:  # exactly what logging.basicConfig installs
                root.removeHandler(other)
        h = logging.StreamHandler()
        h._bincounter = True
        root.addHandler(h)
    prefix = "" if rank == 0 else f"[rank {rank}] "
    h.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(message)s", "%H:%M:%S"))
    root.setLevel(level if rank == 0 else logging.WARNING)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg: TrainConfig) -> dict:
    """Train, save the best model to cfg.model_dir, return the metrics dict (also in metrics.json)."""
    cfg.validate()
    info = init_distributed(cfg.device)
    run: dict = {}  # what a failure reports to the MLflow run: the tracker, the rules, the output folder
    try:
        return _train(cfg, info, run)
    except BaseException as e:
        if run.get("tracker"):  # the output folder's rules.json only once this run has written its own results
            written = run.get("results") is not None and run["results"].cleared
            run["tracker"].fail(e, run["rules"].fired if run.get("rules") else None,
                                run.get("out_dir") if written else None)
        if isinstance(e, Exception) and info.enabled and not isinstance(e, UserError):
            # under torchrun on SageMaker: say which rank/host failed and why, in /opt/ml/output/failure
            write_failure_file(_distributed_failure(e, info))
        raise
    finally:
        cleanup(info)


def _start_tracking(cfg: TrainConfig, info: DistInfo):
    """Rank 0, with --mlflow or MLFLOW_TRACKING_URI: the MLflow run (bincounter.tracking, the one module that
    imports mlflow), before the model is built, so a server that does not answer stops the run first. Else None."""
    from .tracking import resolve_uri

    uri = resolve_uri(cfg.mlflow) if info.is_main else None
    if uri is None:
        return None
    from .tracking import start

    return start(uri, config=dataclasses.asdict(cfg), experiment=cfg.mlflow_experiment,
                 from_trial=cfg.mlflow_from_trial, world_size=info.world_size)


def _train(cfg: TrainConfig, info: DistInfo, run: dict) -> dict:
    setup_logging(info)
    tracker = run["tracker"] = _start_tracking(cfg, info)
    _seed_all(cfg.seed)
    if _amp(cfg, info):
        log.info("mixed precision: %s autocast", str(amp_dtype(info.device)).replace("torch.", ""))
    model = create_model(cfg.arch, cfg.backend, len(COUNTS), pretrained=cfg.pretrained,
                         pretrained_path=cfg.pretrained_path, drop_rate=cfg.drop_rate, head=_head(cfg))
    if not cfg.pretrained and cfg.pretrained_path is None:
        log.warning("training %s from random init (--no-pretrained)", cfg.arch)
    _seed_all(rank_seed(cfg.seed, info.rank))  # from here on each rank draws its own stream
    pre = Preprocess(cfg.image_size, *model_mean_std(model))
    data = load_data(cfg, info, pre)
    out_dir = Path(cfg.output_dir or cfg.model_dir)
    state = _create_state(model, data, cfg, info, out_dir)
    results = _Results(cfg, info)  # an earlier run's results go at this run's first write
    state.rules.before_write = results.clear
    run.update(rules=state.rules, out_dir=out_dir, results=results)
    if cfg.checkpoint_dir:
        # rank 0 alone compares and saves it (a fingerprint stats every file: not on every rank of a big job)
        state.made_with = made_with(cfg, info, data_fingerprint(data.train, data.val)) if info.is_main else {}
        saved = read_checkpoint(cfg.checkpoint_dir, info, state.made_with)
        if saved is not None:
            state.load_state_dict(saved)
    state.rules.start(data.train.class_counts(), cfg.train_dir)  # after a resume: the restored rules stay fired once

    version = _fit(state, data, cfg, info, pre, out_dir, results, tracker)

    results.clear()  # before the end-of-run files (a resumed run may have saved no model in _fit)
    result = {"best": state.best, "history": state.history, "world_size": info.world_size,
              "config": dataclasses.asdict(cfg)}
    # of the model in cfg.model_dir: every result file names it
    result["model_version"] = _write_best_model(state, cfg, info, pre, version)
    if info.is_main and result["model_version"]:  # the drift watch's baseline next to the model (monitor/)
        from .monitor.baseline import after_training
        after_training(cfg.model_dir, cfg.val_dir, info.device)
    if data.test is not None:
        result["test"] = _evaluate_test(state.model, data, cfg, info, out_dir, state.best, result["model_version"])
    result["rules_fired"] = _finish_rules(state, info, result["model_version"])
    _write_results(result, cfg, info, out_dir)
    if tracker:
        tracker.finish(result, state.rules.fired, out_dir, cfg.model_dir)
    barrier(info)
    return result


def _create_state(model, data: TrainData, cfg: TrainConfig, info: DistInfo, out_dir: Path) -> TrainingState:
    """The model on its device, its optimizer, schedule, fp16 grad scaler and rules, at epoch 0."""
    device = info.device
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = create_scheduler(optimizer, cfg.epochs, cfg.warmup_epochs, max(1, len(data.train_dl)))
    scaler = torch.amp.GradScaler("cuda") if _amp(cfg, info) and amp_dtype(device) == torch.float16 else None
    return TrainingState(model, optimizer, scheduler, scaler, Rules(info, out_dir, cfg.lr, enabled=cfg.rules), info)


def _fit(state: TrainingState, data: TrainData, cfg: TrainConfig, info: DistInfo, pre: Preprocess,
         out_dir: Path, results: _Results, tracker=None) -> str | None:
    """The epochs after the last one `state` holds: train, validate, print the metric line (and log it to MLflow:
    `tracker`), save the best model, checkpoint, stop early. -> the model_version this process saved (None: no
    epoch improved here)."""
    model, device = state.model, info.device
    ddp = (torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                     else None) if info.enabled else model)
    head_ids = {id(p) for p in classifier(model).parameters()}
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    if cfg.profile_steps > 0:
        results.clear()  # the profile is written from the first step
    profiler = _Profile.start(cfg, info, out_dir)
    version = None
    if state.epoch >= cfg.epochs:
        log.info("checkpoint already holds all %d epochs; nothing left to train", cfg.epochs)
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        t0 = time.monotonic()
        data.train.set_epoch(epoch)
        if isinstance(data.train_dl.sampler, DistributedSampler):
            data.train_dl.sampler.set_epoch(epoch)
        tr = train_one_epoch(ddp, data.train_dl, state.optimizer, state.scheduler, device, info, epoch=epoch,
                             label_smoothing=cfg.label_smoothing, amp=_amp(cfg, info),
                             channels_last=cfg.channels_last,
                             frozen_params=backbone if epoch <= cfg.freeze_backbone_epochs else None,
                             scaler=state.scaler, show_progress=cfg.show_progress,
                             on_step=profiler.step if profiler else None, rules=state.rules)
        sync_buffers(model, info)  # every rank validates rank 0's model: the one that is saved
        ev = evaluate(model, data.val_dl, device, info, channels_last=cfg.channels_last,
                      desc=f"epoch {epoch} val", show_progress=cfg.show_progress)
        val = summarize_eval(ev)
        row = {"epoch": epoch, "train_loss": tr["loss"], "val_loss": val["loss"], "val_acc": val["accuracy"],
               "val_rmse": val["rmse"], "lr": state.optimizer.param_groups[0]["lr"],
               "epoch_time_s": round(time.monotonic() - t0, 1), "val_n": val["n"]}
        improved = state.is_better(row)
        row["best_val_acc"] = row["val_acc"] if improved else state.best["val_acc"]
        state.history.append(row)
        busy = tr["data_wait_s"] + tr["step_s"]
        state.rules.epoch_end(epoch, state.history, tr["data_wait_s"] / busy if busy else None,
                              lr_fraction=state.optimizer.param_groups[0]["lr"] / cfg.lr)
        row["rules_fired"] = state.rules.count
        if info.is_main:
            _log_epoch(row, tr, ev)
            if tracker:
                tracker.log_history(state.history)
        state.end_epoch(row, val["confusion_matrix"], improved)
        if profiler:
            profiler.add(tr)
        if improved and info.is_main:
            results.clear()
            version = _save_model(state, cfg, pre)
        if cfg.checkpoint_dir:
            sd = state.state_dict()  # on every rank: each adds its RNG state
            if info.is_main:
                write_checkpoint(cfg.checkpoint_dir, sd)
        if cfg.patience and state.bad_epochs >= cfg.patience:
            if info.is_main:
                log.info("early stop: val_acc has not improved for %d epochs (best epoch %d)",
                         state.bad_epochs, state.best["epoch"])
            break
    if profiler:
        profiler.stop()
    return version


def _log_epoch(row: dict, tr: dict, ev: dict) -> None:
    """Rank 0: the epoch's metric line (stdout: the tuner's regexes read it), the input pipeline's share, skips."""
    print(format_epoch_line(row), flush=True)
    busy = tr["data_wait_s"] + tr["step_s"]
    if busy:
        log.info("epoch %d: input pipeline %.0f%% of train time (%.1f s waiting for batches)", row["epoch"],
                 100 * tr["data_wait_s"] / busy, tr["data_wait_s"])
    if tr["skipped"] or ev["skipped"]:
        log.warning("epoch %d: skipped %d unreadable train images, %d val images", row["epoch"],
                    tr["skipped"], ev["skipped"])


class _Profile:
    """--profile-steps on rank 0: a torch profiler trace of the first steps, system samples over the whole run,
    and the input pipeline's share of train time (profile/ in the output folder)."""

    def __init__(self, out: Path, steps: int, device: torch.device):
        from .profiling import StepProfiler, SystemSampler

        self.out, self.wait_s, self.step_s = out, 0.0, 0.0
        self.profiler = StepProfiler(out, steps, device)
        self.sampler = SystemSampler().start()

    @classmethod
    def start(cls, cfg: TrainConfig, info: DistInfo, out_dir: Path) -> _Profile | None:
        return cls(out_dir / "profile", cfg.profile_steps, info.device) if cfg.profile_steps > 0 and info.is_main \
            else None

    def step(self) -> None:
        self.profiler.step()

    def add(self, tr: dict) -> None:
        self.wait_s, self.step_s = self.wait_s + tr["data_wait_s"], self.step_s + tr["step_s"]

    def stop(self) -> None:
        self.profiler.stop()
        rep = self.sampler.report(self.out, self.wait_s, self.step_s)
        log.info("profile: %s (trace.json, top_ops.txt, system_report.json); input wait %s of train time",
                 self.out, rep["input_wait_fraction"])


def _save_model(state: TrainingState, cfg: TrainConfig, pre: Preprocess) -> str:
    """Rank 0: state.model (the best epoch's weights) as the artifact in cfg.model_dir -> its model_version."""
    return save_artifact(cfg.model_dir, state.model, cfg.arch, cfg.backend, pre, extra={
        "best_epoch": state.best["epoch"], "val_acc": state.best["val_acc"], "head": _head(cfg)})["model_version"]


def _write_best_model(state: TrainingState, cfg: TrainConfig, info: DistInfo, pre: Preprocess,
                      version: str | None) -> str | None:
    """The best epoch's weights back into state.model; rank 0 makes sure they are the artifact (saved during
    the epochs, or now when this process resumed after its best epoch) and adds model.onnx. -> model_version."""
    if state.best_model is None:
        return version
    state.model.load_state_dict(state.best_model)
    if not info.is_main:
        return version
    if version is None:  # resumed after its best epoch: this process has not saved it
        version = _save_model(state, cfg, pre)
    try:  # model.onnx for the CPU serving image, from the same best weights
        export_onnx(cfg.model_dir, state.model)
    except UserError as e:  # the trained weights are saved: no reason to fail the job here
        log.warning("%s; model.safetensors is saved, add model.onnx later with `bincounter export`", e)
    return version


def _write_results(result: dict, cfg: TrainConfig, info: DistInfo, out_dir: Path) -> None:
    """Rank 0: training_curves.png and metrics.json in the output folder (metrics.json in the model folder too)."""
    if not info.is_main:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    if result["history"]:
        png = plot_history(result["history"], out_dir / "training_curves.png", title=f"{cfg.arch} ({cfg.loss})")
        log.info("training curves -> %s", png)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2, default=str))
    if out_dir != Path(cfg.model_dir):
        (Path(cfg.model_dir) / "metrics.json").write_text(json.dumps(result, indent=2, default=str))


class _Results:
    """Rank 0's result files (artifact.RESULT_FILES) of an earlier run in the output and model folders. They stay
    until this run writes its first result (the first model save, rules.json, the profile, or the end-of-run files):
    `clear`, called before each such write (a no-op after the first and on other ranks), removes them all then.
    A run stopped before that leaves the earlier run's model and results whole; one past it leaves only its own,
    never a mix. The model files are replaced by the first save (which also removes an older model.onnx)."""

    def __init__(self, cfg: TrainConfig, info: DistInfo):
        self.dirs = list(dict.fromkeys(Path(x) for x in (cfg.output_dir, cfg.model_dir) if x)) if info.is_main else []
        self.cleared = False

    def clear(self) -> None:
        if self.cleared:
            return
        self.cleared = True
        for d in self.dirs:
            gone = [name for name in RESULT_FILES if _remove(d / name)]
            if gone:
                log.info("removed %d result files of an earlier run from %s (%s): this run writes its own",
                         len(gone), d, ", ".join(gone))


def _remove(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    else:
        return False
    return True


def _evaluate_test(model, data: TrainData, cfg: TrainConfig, info: DistInfo, out_dir: Path, best: dict | None,
                   version: str | None) -> dict:
    """The best model on the test channel -> its summary, stamped with the model's version; rank 0 writes
    test_metrics.json + the confusion PNG."""
    ev = evaluate(model, make_loader(data.test, cfg, info, False, data.workers), info.device, info,
                  channels_last=cfg.channels_last, desc="test", show_progress=cfg.show_progress)
    test = {**summarize_eval(ev), "skipped": ev["skipped"], "model_version": version}
    if info.is_main:
        j, png = write_report(test, out_dir, "test")
        log.info("test (best epoch %s): %s -> %s, %s", best["epoch"] if best else "-", format_summary(test), j, png)
    return test


def _finish_rules(state: TrainingState, info: DistInfo, version: str | None) -> int:
    """The end-of-run rules (they judge the best model), rules.json, then the final metric line: the tuner's
    last `rules_fired` is the count the report shows. -> that count."""
    rules, best, history = state.rules, state.best, state.history
    rules.train_end(best["epoch"] if best else None, state.best_val_cm)
    if info.is_main and rules.enabled:
        log.info("training rules: %d fired -> %s", rules.count, rules.write(version))
    if info.is_main and history:
        print(format_final_line({"epoch": history[-1]["epoch"], "best_val_acc": best["val_acc"],
                                 "rules_fired": rules.count}), flush=True)
    return rules.count


def _amp(cfg: TrainConfig, info: DistInfo) -> bool:
    return cfg.amp and info.device.type == "cuda"


def _head(cfg: TrainConfig) -> str:
    return "ordinal" if cfg.loss == "ordinal" else "linear"


def _distributed_failure(e: Exception, info: DistInfo) -> str:
    import socket

    from .distributed import dist_timeout_s

    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    where = f"rank {info.rank} of {info.world_size} on {socket.gethostname()}"
    low = first.lower()
    if "timed out" in low or "timeout" in low:
        return (f"{where}: a peer stopped answering for {dist_timeout_s():.0f} s (BINCOUNTER_DIST_TIMEOUT_S): "
                f"{type(e).__name__}: {first}")
    if "closed by peer" in low or "connection reset" in low or "broken pipe" in low:
        return f"{where}: lost the connection to another rank (its host died or left): {type(e).__name__}: {first}"
    return f"{where}: {type(e).__name__}: {first}"
