"""The drift baseline: the signals (signals.py) on the val split, as the trained model answers it, written next to
the model at the end of training (BASELINE in the model directory, so it travels in model.tar.gz), and read back
from a file, a model directory, a model.tar.gz, or any of those on S3.

    {"format": FORMAT, "model_version", "source": {"channel", "images", "skipped"}, "created",
     "signals": {name: drift.summarize_numeric(...) | drift.summarize_counts(...)}}
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from pathlib import Path

from .. import COUNTS
from ..errors import DataError, UserError
from . import drift, signals

log = logging.getLogger("bincounter")
BASELINE = "drift_baseline.json"
FORMAT = "bincounter-drift-baseline/1"
#: at most this many val images measured (evenly spaced): enough for decile edges, seconds of work
MAX_IMAGES = 2000


def build_baseline(rows: list[dict], model_version: str | None, source: dict,
                   counts: tuple[int, ...] = COUNTS) -> dict:
    """Per-image signal dicts (signals.image_signals + answer_signals) -> the baseline document."""
    values = signals.collect(rows)
    summaries = {s: drift.summarize_numeric(values[s]) for s in signals.NUMERIC}
    summaries[signals.COUNT] = drift.summarize_counts(values[signals.COUNT], counts)
    return {"format": FORMAT, "model_version": model_version, "source": source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "signals": summaries}


def write_baseline(model_dir: str | Path, val_dir: str | Path, device: str = "auto",
                   max_images: int = MAX_IMAGES, batch_size: int = 32) -> Path:
    """The saved model (model_dir) on up to `max_images` images of the val channel (per-image or sharded), through
    the serving `Predictor`, so the answers are the endpoint's -> model_dir/BASELINE."""
    from ..evaluate import Predictor

    pred = Predictor(model_dir, device=device)
    images = _channel_images(val_dir, max_images)
    rows, skipped = [], 0
    for i in range(0, len(images), batch_size):
        chunk, arrays = [], []
        for data in images[i:i + batch_size]:
            try:
                arrays.append(pred.preprocess(data))
                chunk.append(signals.image_signals(data))
            except DataError:
                skipped += 1
        if chunk:
            import numpy as np

            for row, answer in zip(chunk, pred.format(pred.forward(np.stack(arrays))), strict=True):
                rows.append({**row, **(signals.answer_signals(answer) or {})})
    doc = build_baseline(rows, pred.config["model_version"],
                         {"channel": str(val_dir), "images": len(rows), "skipped": skipped},
                         tuple(pred.config.get("counts", COUNTS)))
    path = Path(model_dir) / BASELINE
    path.write_text(json.dumps(doc, indent=1))
    log.info("drift baseline: %d val images -> %s", len(rows), path)
    return path


def _channel_images(channel: str | Path, limit: int) -> list[bytes]:
    """Encoded images of a channel, at most `limit`, evenly spaced over it (deterministic)."""
    from ..data import shards

    channel = Path(channel)
    if shards.is_sharded(channel):
        index = shards.read_index(channel)
        step = max(1, -(-index["samples"] // limit))
        out, k = [], 0
        for s in index["shards"]:
            for _, parts in shards.iter_tar(channel / s["name"]):
                data = next((parts[e] for e in ("jpg", "jpeg", "png") if e in parts), None)
                if data is not None and k % step == 0 and len(out) < limit:
                    out.append(data)
                k += 1
        return out
    from ..data.dataset import list_channel

    samples = list_channel(channel)
    step = max(1, -(-len(samples) // limit))
    return [p.read_bytes() for p, _ in samples[::step][:limit]]


def read_baseline(where: str, s3=None) -> dict:
    """A baseline from a JSON file, a model directory, a model.tar.gz, or an s3:// URI of one of those (`s3`: a
    boto3 S3 client factory, called only for s3://)."""
    if where.startswith("s3://"):
        bucket, _, key = where[5:].partition("/")
        if not key or key.endswith("/"):
            key = key + BASELINE
        from ..aws import aws_call

        body = aws_call(f"reading {where}", s3().get_object, Bucket=bucket, Key=key)["Body"].read()
        return _parse(body, where, tarball=key.endswith(".tar.gz"))
    p = Path(where)
    if p.is_dir():  # a model directory, or a Processing job's input folder holding a model.tar.gz
        tars = sorted(p.glob("*.tar.gz"))
        p = p / BASELINE if (p / BASELINE).is_file() or len(tars) != 1 else tars[0]
    if not p.is_file():
        raise UserError(f"--baseline {where}: no such file (a {BASELINE}, a model directory or model.tar.gz; "
                        "training writes it next to the model)")
    return _parse(p.read_bytes(), where, tarball=p.name.endswith(".tar.gz"))


def _parse(data: bytes, where: str, tarball: bool) -> dict:
    if tarball:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = next((m for m in tar.getmembers() if m.isfile() and Path(m.name).name == BASELINE), None)
            if member is None:
                raise UserError(f"{where}: holds no {BASELINE} (a model trained before the drift watch: "
                                "retrain it, or pass a baseline JSON)")
            data = tar.extractfile(member).read()
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise UserError(f"{where}: not a drift baseline ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("signals"), dict):
        raise UserError(f"{where}: not a drift baseline (format {doc.get('format') if isinstance(doc, dict) else '?'}"
                        f", expected {FORMAT})")
    return doc


def after_training(model_dir: str | Path, val_dir: str | Path, device) -> Path | None:
    """The trainer's hook (rank 0, after the best model is saved): write the baseline; a failure here is a warning,
    never a failed training job (the model is saved; `sm monitor` says the baseline is missing)."""
    try:
        return write_baseline(model_dir, val_dir, device=str(device))
    except Exception as e:  # noqa: BLE001 - the trained model must survive whatever goes wrong here
        log.warning("drift baseline not written (%s: %s); the model is saved", type(e).__name__, e)
        return None
