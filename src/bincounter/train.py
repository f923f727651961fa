"""The trainer: plain typed arguments in (`TrainConfig`), a model directory out.

The same function runs from the CLI (`bincounter train ...`), under torchrun, and in the container
(`container/train.py` parses the SageMaker contract into a `TrainConfig` at the edge).

Per epoch it prints one line in the `metrics.EPOCH_KEYS` format (rank 0 only; `best_val_acc` is the tuning
objective, so the tuner ranks a trial by the epoch whose weights become the artifact), keeps the best epoch
by val_acc (then val_loss), writes that model as the artifact, and a resumable checkpoint when
`checkpoint_dir` is set. With a test channel it evaluates the best model on it at the end.

Randomness: the model is built under `seed` (the same initial weights on every rank); then each rank draws
its own stream from `seed + rank` (its own dropout masks). Checkpoints resume exactly: the sampler order is a
function of (seed, epoch), and the checkpoint holds each rank's RNG states and the fp16 grad scaler, so an
interrupted run continues with the same numbers an uninterrupted one prints. A checkpoint records what made
it (`MADE_WITH` settings, world size, a fingerprint of the data); a run whose settings differ stops with one
line instead of silently reusing it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from . import COUNTS
from .artifact import RESULT_FILES
from .data.shards import ShardDataset, open_channel
from .distributed import DistInfo, barrier, broadcast_object, cleanup, init_distributed, sync_buffers
from .engine import amp_dtype, evaluate, train_one_epoch
from .errors import UserError, write_failure_file
from .metrics import format_epoch_line, format_final_line, format_summary, plot_history, summarize_eval, write_report
from .model import classifier, create_model, export_onnx, model_mean_std, save_artifact
from .preprocess import Preprocess
from .rules import Rules
from .train_config import TrainConfig  # noqa: F401 (bincounter.train.TrainConfig, as before)

log = logging.getLogger("bincounter")
CHECKPOINT = "checkpoint.pt"
#: TrainConfig fields a checkpoint must agree on to be resumed (epochs and patience may grow: a longer run).
MADE_WITH = ("arch", "backend", "pretrained", "image_size", "batch_size", "lr", "weight_decay", "warmup_epochs",
             "label_smoothing", "drop_rate", "freeze_backbone_epochs", "seed", "loss")


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


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank's random stream (dropout, drop-path, loader worker seeds): seed + rank, as timm
    does, so that ranks do not draw the same masks. The model is built before, under `seed` alone: the same
    initial weights on every rank (DDP broadcasts rank 0's anyway)."""
    return seed + rank


def _loader(ds, cfg: TrainConfig, info: DistInfo, train: bool, workers: int):
    if isinstance(ds, ShardDataset):  # batches itself: the same number per rank, every sample once, nothing padded
        return ds.loader(cfg.batch_size, info.rank, info.world_size, workers,
                         pin_memory=info.device.type == "cuda", shuffle=train)
    if train:
        # the order is a function of (seed, epoch) via set_epoch, on one process too: resume is exact
        sampler = DistributedSampler(ds, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                     seed=cfg.seed, drop_last=False)
        shuffle = False
    else:
        # exact shard, no padding (DistributedSampler would repeat samples and skew the metrics)
        ds = Subset(ds, list(range(info.rank, len(ds), info.world_size))) if info.enabled else ds
        sampler, shuffle = None, False
    g = torch.Generator()
    g.manual_seed(rank_seed(cfg.seed, info.rank))
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=shuffle, sampler=sampler, num_workers=workers,
                      pin_memory=info.device.type == "cuda", drop_last=False, generator=g,
                      persistent_workers=workers > 0)


def _workers(cfg: TrainConfig, info: DistInfo) -> int:
    """DataLoader workers per process. On a GPU the CPU only feeds it: use most cores. On a CPU the model
    needs the cores itself; decoding inline costs ~1 ms per image (bench/train_pipeline.py measured
    c/a = 1.00 with 0 workers vs 0.78 with 2 on 2 cores), so only larger machines get workers."""
    if cfg.workers >= 0:
        return cfg.workers
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_proc = max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if info.device.type == "cuda":
        return min(8, per_proc - 1)
    return per_proc // 4


def _save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def data_fingerprint(*datasets) -> str:
    """sha256 over the (relative path, size) of every sample: the same channels give the same value on any
    host; a changed, added or removed image changes it."""
    import hashlib

    h = hashlib.sha256()
    for ds in datasets:
        root = Path(ds.root)
        for path, label in ds.samples:
            h.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\0{label}\n".encode())
        h.update(b"--\n")
    return h.hexdigest()


def made_with(cfg: TrainConfig, info: DistInfo, fingerprint: str) -> dict:
    return {**{k: getattr(cfg, k) for k in MADE_WITH}, "world_size": info.world_size, "data": fingerprint}


def _check_made_with(saved: dict | None, now: dict, path: Path) -> str | None:
    if saved is None:
        return (f"checkpoint {path} does not record what made it (written by an older bincounter); delete it or "
                "point --checkpoint-dir at an empty folder")
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


def _load_checkpoint(cfg: TrainConfig, info: DistInfo, now: dict) -> dict | None:
    """Rank 0 reads the newest checkpoint and broadcasts it (or the reason it cannot be used, so that every
    rank stops with the same line), so every host resumes from the same one."""
    state = problem = None
    if info.is_main and cfg.checkpoint_dir:
        p = Path(cfg.checkpoint_dir) / CHECKPOINT
        if p.is_file():
            try:
                state = torch.load(p, map_location="cpu", weights_only=True)
            except Exception as e:  # a torn file from a killed job: start over, say so
                log.warning("ignoring unreadable checkpoint %s (%s)", p, e)
            if state is not None:
                problem = _check_made_with(state.get("made_with"), now, p)
                if problem is None:
                    log.info("resuming from %s (epoch %d done)", p, state["epoch"])
    state, problem = broadcast_object((None, problem) if problem else (state, None), info)
    if problem:
        raise UserError(problem)
    return state


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
    if st.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(st["cuda"], device)


def train(cfg: TrainConfig) -> dict:
    """Train, save the best model to cfg.model_dir, return the metrics dict (also in metrics.json)."""
    cfg.validate()
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info)
    except Exception as e:
        if info.enabled and not isinstance(e, UserError):
            # under torchrun on SageMaker: say which rank/host failed and why, in /opt/ml/output/failure
            write_failure_file(_distributed_failure(e, info))
        raise
    finally:
        cleanup(info)


def _clear_previous_results(cfg: TrainConfig, info: DistInfo) -> None:
    """Rank 0: remove the result files (artifact.RESULT_FILES) an earlier run left in the output and model folders,
    so that every result there afterwards is this run's, or absent. The model files are replaced by this run's
    first save (which also removes an older model.onnx)."""
    if not info.is_main:
        return
    for d in dict.fromkeys(Path(x) for x in (cfg.output_dir, cfg.model_dir) if x):
        gone = [name for name in RESULT_FILES if _remove(d / name)]
        if gone:
            log.info("removed %d result files of an earlier run from %s (%s): this run writes its own", len(gone), d,
                     ", ".join(gone))


def _remove(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    else:
        return False
    return True


def _evaluate_test(model, test_ds, cfg: TrainConfig, info: DistInfo, workers: int, out_dir: Path, best: dict | None,
                   version: str | None) -> dict:
    """The best model on the test channel -> its summary, stamped with the model's version; rank 0 writes
    test_metrics.json + the confusion PNG."""
    ev = evaluate(model, _loader(test_ds, cfg, info, False, workers), info.device, info,
                  channels_last=cfg.channels_last, desc="test", show_progress=cfg.show_progress)
    test = {**summarize_eval(ev), "skipped": ev["skipped"], "model_version": version}
    if info.is_main:
        j, png = write_report(test, out_dir, "test")
        log.info("test (best epoch %s): %s -> %s, %s", best["epoch"] if best else "-", format_summary(test), j, png)
    return test


def _finish_rules(rules: Rules, best: dict | None, best_val_cm, history: list[dict], info: DistInfo,
                  version: str | None) -> int:
    """The end-of-run rules (they judge the best model), rules.json, then the final metric line: the tuner's
    last `rules_fired` is the count the report shows. -> that count."""
    rules.train_end(best["epoch"] if best else None, best_val_cm)
    if info.is_main and rules.enabled:
        log.info("training rules: %d fired -> %s", rules.count, rules.write(version))
    if info.is_main and history:
        print(format_final_line({"epoch": history[-1]["epoch"], "best_val_acc": best["val_acc"],
                                 "rules_fired": rules.count}), flush=True)
    return rules.count


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


def _train(cfg: TrainConfig, info: DistInfo) -> dict:
    setup_logging(info)
    _seed_all(cfg.seed)
    device = info.device
    cuda = device.type == "cuda"
    amp, channels_last = cfg.amp and cuda, cfg.channels_last
    if amp:
        log.info("mixed precision: %s autocast", str(amp_dtype(device)).replace("torch.", ""))

    model = create_model(cfg.arch, cfg.backend, len(COUNTS), pretrained=cfg.pretrained,
                         pretrained_path=cfg.pretrained_path, drop_rate=cfg.drop_rate,
                         head="ordinal" if cfg.loss == "ordinal" else "linear")
    if not cfg.pretrained and cfg.pretrained_path is None:
        log.warning("training %s from random init (--no-pretrained)", cfg.arch)
    _seed_all(rank_seed(cfg.seed, info.rank))  # from here on each rank draws its own stream
    pre = Preprocess(cfg.image_size, *model_mean_std(model))
    train_ds = open_channel(cfg.train_dir, pre, train=True, seed=cfg.seed)  # per-image or sharded
    val_ds = open_channel(cfg.val_dir, pre)
    test_ds = open_channel(cfg.test_dir, pre) if cfg.test_dir else None
    workers = _workers(cfg, info)
    train_dl = _loader(train_ds, cfg, info, True, workers)
    val_dl = _loader(val_ds, cfg, info, False, workers)
    log.info("data: train %d %s, val %d %s%s; %d loader workers per process, world size %d, device %s",
             len(train_ds), train_ds.class_counts(), len(val_ds), val_ds.class_counts(),
             f", test {len(test_ds)} {test_ds.class_counts()}" if test_ds else "", workers, info.world_size,
             device)

    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    head_ids = {id(p) for p in classifier(model).parameters()}
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    steps_per_epoch = max(1, len(train_dl))
    total, warm = cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)

    def lr_lambda(step: int) -> float:  # linear warm-up, cosine decay to 1% of lr
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    scaler = torch.amp.GradScaler("cuda") if amp and amp_dtype(device) == torch.float16 else None

    out_dir = Path(cfg.output_dir or cfg.model_dir)
    rules = Rules(info, out_dir, cfg.lr, enabled=cfg.rules)
    start_epoch, history, best, best_state, bad_epochs, best_val_cm, version = 1, [], None, None, 0, None, None
    # rank 0 alone compares and saves it (a fingerprint stats every file: not on every rank of a big job)
    now = made_with(cfg, info, data_fingerprint(train_ds, val_ds)) if cfg.checkpoint_dir and info.is_main else {}
    state = _load_checkpoint(cfg, info, now)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]
        best_val_cm = state.get("best_val_cm")
        rules.load_state_dict(state.get("rules") or {})
        best_state, bad_epochs = state["best_model"], state["bad_epochs"]
        _set_rng_state(state["rng"][info.rank], device)  # this rank's own (made_with holds the world size)

    _clear_previous_results(cfg, info)
    rules.start(train_ds.class_counts(), cfg.train_dir)  # after a resume: the restored rules stay fired once
    ddp = (torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
           if info.enabled else model)
    profiler = sampler = None
    if cfg.profile_steps > 0 and info.is_main:
        from .profiling import StepProfiler, SystemSampler

        profiler = StepProfiler(out_dir / "profile", cfg.profile_steps, device)
        sampler = SystemSampler().start()
    wait_total = step_total = 0.0
    if start_epoch > cfg.epochs:
        log.info("checkpoint already holds all %d epochs; nothing left to train", cfg.epochs)

    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.monotonic()
        train_ds.set_epoch(epoch)
        if isinstance(train_dl.sampler, DistributedSampler):
            train_dl.sampler.set_epoch(epoch)
        frozen = backbone if epoch <= cfg.freeze_backbone_epochs else None
        tr = train_one_epoch(ddp, train_dl, optimizer, scheduler, device, info, epoch=epoch,
                             label_smoothing=cfg.label_smoothing, amp=amp, channels_last=channels_last,
                             frozen_params=frozen, scaler=scaler, show_progress=cfg.show_progress,
                             on_step=profiler.step if profiler else None, rules=rules)
        wait_total, step_total = wait_total + tr["data_wait_s"], step_total + tr["step_s"]
        sync_buffers(model, info)  # every rank validates rank 0's model: the one that is saved
        ev = evaluate(model, val_dl, device, info, channels_last=channels_last,
                      desc=f"epoch {epoch} val", show_progress=cfg.show_progress)
        val = summarize_eval(ev)
        row = {"epoch": epoch, "train_loss": tr["loss"], "val_loss": val["loss"], "val_acc": val["accuracy"],
               "val_rmse": val["rmse"], "lr": optimizer.param_groups[0]["lr"],
               "epoch_time_s": round(time.monotonic() - t0, 1), "val_n": val["n"]}
        improved = best is None or (row["val_acc"], -row["val_loss"]) > (best["val_acc"], -best["val_loss"])
        row["best_val_acc"] = row["val_acc"] if improved else best["val_acc"]
        history.append(row)
        busy = tr["data_wait_s"] + tr["step_s"]
        rules.epoch_end(epoch, history, tr["data_wait_s"] / busy if busy else None,
                        lr_fraction=optimizer.param_groups[0]["lr"] / cfg.lr)
        row["rules_fired"] = rules.count
        if info.is_main:
            print(format_epoch_line(row), flush=True)
            if busy:
                log.info("epoch %d: input pipeline %.0f%% of train time (%.1f s waiting for batches)", epoch,
                         100 * tr["data_wait_s"] / busy, tr["data_wait_s"])
            if tr["skipped"] or ev["skipped"]:
                log.warning("epoch %d: skipped %d unreadable train images, %d val images", epoch,
                            tr["skipped"], ev["skipped"])
        if improved:
            best, bad_epochs = dict(row), 0
            best_val_cm = val["confusion_matrix"]
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if info.is_main:
                version = save_artifact(cfg.model_dir, model, cfg.arch, cfg.backend, pre, extra={
                    "best_epoch": epoch, "val_acc": row["val_acc"], "head": _head(cfg)})["model_version"]
        else:
            bad_epochs += 1
        if cfg.checkpoint_dir:
            rng = [_rng_state(device)]
            if info.enabled:  # each rank's dropout stream, so that a resumed run matches on every rank
                rng = [None] * info.world_size
                torch.distributed.all_gather_object(rng, _rng_state(device))
            if info.is_main:
                _save_checkpoint(Path(cfg.checkpoint_dir) / CHECKPOINT, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                    "epoch": epoch, "history": history, "best": best, "best_model": best_state,
                    "bad_epochs": bad_epochs, "rng": rng, "made_with": now, "best_val_cm": best_val_cm,
                    "rules": rules.state_dict()})
        if cfg.patience and bad_epochs >= cfg.patience:
            if info.is_main:
                log.info("early stop: val_acc has not improved for %d epochs (best epoch %d)",
                         bad_epochs, best["epoch"])
            break

    if profiler is not None:
        profiler.stop()
        rep = sampler.report(out_dir / "profile", wait_total, step_total)
        log.info("profile: %s (trace.json, top_ops.txt, system_report.json); input wait %s of train time",
                 out_dir / "profile", rep["input_wait_fraction"])
    result = {"best": best, "history": history, "world_size": info.world_size,
              "config": dataclasses.asdict(cfg)}
    if best_state is not None:
        model.load_state_dict(best_state)
        if info.is_main and version is None:  # resumed after its best epoch: this process has not saved it
            version = save_artifact(cfg.model_dir, model, cfg.arch, cfg.backend, pre, extra={
                "best_epoch": best["epoch"], "val_acc": best["val_acc"], "head": _head(cfg)})["model_version"]
        if info.is_main:  # model.onnx for the CPU serving image, from the same best weights
            try:
                export_onnx(cfg.model_dir, model)
            except UserError as e:  # the trained weights are saved: no reason to fail the job here
                log.warning("%s; model.safetensors is saved, add model.onnx later with `bincounter export`", e)
    result["model_version"] = version  # of the model in cfg.model_dir: every result file names it
    if test_ds is not None:
        result["test"] = _evaluate_test(model, test_ds, cfg, info, workers, out_dir, best, version)
    result["rules_fired"] = _finish_rules(rules, best, best_val_cm, history, info, version)
    if info.is_main and history:
        out_dir.mkdir(parents=True, exist_ok=True)
        png = plot_history(history, out_dir / "training_curves.png", title=f"{cfg.arch} ({cfg.loss})")
        log.info("training curves -> %s", png)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(result, indent=2, default=str))
        if out_dir != Path(cfg.model_dir):
            (Path(cfg.model_dir) / "metrics.json").write_text(json.dumps(result, indent=2, default=str))
    barrier(info)
    return result
