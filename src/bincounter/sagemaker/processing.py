"""`docker run IMAGE process prepare|evaluate`: the image as a SageMaker Processing job (the pipeline's
Prepare and Evaluate steps; `bincounter process ...` runs the same code on any machine).

Processing contract: inputs are copied under /opt/ml/processing/<name>, outputs are uploaded from the
directories the job definition names, a failure's reason goes to /opt/ml/output/message (ExitMessage).

    prepare   raw ABID (bin-images/ + metadata/)  -> OUT/channels/{train,val,test} + manifest.csv, OUT/eda/
    evaluate  a model (dir, or model.tar.gz from a training job) + a test channel
              -> OUT/evaluation.json (SageMaker model-metrics layout + bincounter's full report), confusion PNG
    monitor   the drift check of an endpoint's capture (bincounter.monitor.check, flags in cli/sm_monitor.py; what
              `sm monitor --schedule` runs): drift.json + drift.html, exit 1 on drift
"""

from __future__ import annotations

import json
import logging
import math
import tarfile
import tempfile
from pathlib import Path

from .. import COUNTS
from ..errors import UserError

log = logging.getLogger(__name__)
BASE = Path("/opt/ml/processing")
EVALUATION = "evaluation.json"


def prepare(raw: str | Path, out: str | Path, val: float = 0.1, test: float = 0.1, seed: int = 0) -> dict:
    """EDA report + stratified split of a raw ABID directory. -> {"channels": {split: dir}, "eda": dir}."""
    from ..data import eda, split

    raw, out = Path(raw), Path(out)
    index = eda.run(raw, out / "eda")
    splits = split.run(raw, out / "channels", val=val, test=test, seed=seed)
    for s in split.SPLITS:
        if not splits[s]:
            raise UserError(f"{raw}: the {s} split is empty ({sum(len(v) for v in splits.values())} usable bins); "
                            "prepare needs more bins per count")
    log.info("eda report: %s", index)
    return {"channels": {s: str(out / "channels" / s) for s in split.SPLITS}, "eda": str(out / "eda")}


def _model_dir(path: Path, scratch: Path) -> Path:
    """A model directory, or the one a model.tar.gz (a training job's artifact) unpacks to."""
    if path.is_dir() and (path / "config.json").is_file():
        return path
    tars = [path] if path.is_file() else sorted(path.glob("*.tar.gz")) if path.is_dir() else []
    if len(tars) != 1:
        raise UserError(f"{path}: expected a model directory (config.json + weights) or one model.tar.gz")
    with tarfile.open(tars[0]) as tar:
        # only plain files and folders inside `scratch` (Debian bookworm's Python 3.11.2 has no extraction filters)
        members = tar.getmembers()
        for m in members:
            if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in Path(m.name).parts:
                raise UserError(f"{tars[0]}: unexpected member {m.name!r} (not a model.tar.gz from bincounter)")
        tar.extractall(scratch, members=members)
    return scratch


def model_metrics(summary: dict) -> dict:
    """SageMaker's model-quality layout (what the Model Registry shows, and what a pipeline's JsonGet reads:
    multiclass_classification_metrics.accuracy.value), plus bincounter's own report under "bincounter"."""
    def metric(v):
        return {"value": v, "standard_deviation": "NaN"}

    cm = summary["confusion_matrix"]
    counts = [str(c) for c in COUNTS]
    recall = summary["per_class_recall"]
    return {
        "multiclass_classification_metrics": {
            "accuracy": metric(summary["accuracy"]),
            "weighted_recall": metric(summary["accuracy"]),  # recall weighted by support = accuracy
            "confusion_matrix": {t: {p: cm[i][j] for j, p in enumerate(counts)} for i, t in enumerate(counts)},
            # a count with no test images has no recall: left out (NaN is not JSON, and JsonGet parses strictly)
            **{f"recall_count_{c}": metric(recall[c]) for c in counts if recall[c] is not None},
        },
        "regression_metrics": {"rmse": metric(summary["rmse"])},
        "bincounter": summary,
    }


def _finite(x):
    """NaN/inf -> null, everywhere: strict JSON for the pipeline's JsonGet and the Model Registry."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def evaluate(model: str | Path, data: str | Path, out: str | Path, batch_size: int = 32) -> dict:
    """Evaluate a model on a channel (per-image or sharded) -> OUT/evaluation.json (+ eval.json/PNG)."""
    from ..evaluate import evaluate_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = _model_dir(Path(model), Path(scratch))
        summary, paths = evaluate_model(model_dir, data, out, batch_size=batch_size)
    doc = model_metrics(summary)
    (out / EVALUATION).write_text(json.dumps(_finite(doc), indent=2, allow_nan=False))
    log.info("accuracy %.4f, RMSE %.4f on %d images -> %s (%s)", summary["accuracy"], summary["rmse"],
             summary["n"], out / EVALUATION, ", ".join(str(p) for p in paths))
    return doc
