"""Using a saved model: `Predictor` (bytes in, counts out; the server uses it too) and `evaluate_model`
(a channel in, the accuracy/RMSE/confusion-matrix report out)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import COUNTS
from .artifact import check_weights, format_predictions, forward_batch_limit, forward_in_chunks
from .data.shards import ShardDataset, open_channel
from .distributed import DistInfo, pick_device
from .engine import evaluate
from .metrics import summarize, summarize_eval, write_report
from .model import load_artifact

log = logging.getLogger("bincounter")


class Predictor:
    """The PyTorch runtime: decode + preprocess exactly like the evaluation loader, then one batched forward
    pass. `serving.onnx_runtime.OnnxPredictor` is the same interface on ONNX Runtime (the CPU image):
    preprocess(bytes) -> float32 (3, S, S) array, forward(N x 3 x S x S array) -> (N, classes) probabilities,
    format(probabilities) -> answers. A forward pass over more than `max_forward_batch` images (default
    $BINCOUNTER_MAX_FORWARD_BATCH, else 64) runs in chunks of that size. The weights must be the file
    config.json's weights_sha256 names (`artifact.check_weights`), so the model_version answered is true."""

    runtime = "torch"

    def __init__(self, model_dir: str | Path, device: str = "auto", max_forward_batch: int | None = None):
        self.max_forward_batch = forward_batch_limit(max_forward_batch)
        self.device = pick_device(device)
        self.model, self.config, self.pre = load_artifact(model_dir, self.device)
        check_weights(model_dir, self.config)
        # channels_last: the same numbers (to ~1e-7), faster convolutions on CPU (measured: ~1.25x at batch 4)
        # and on CUDA
        self.model.to(memory_format=torch.channels_last)
        self.counts = tuple(self.config["counts"])

    def preprocess(self, data: bytes, formats: tuple[str, ...] | None = None) -> np.ndarray:
        return self.pre(data, formats)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        return forward_in_chunks(self._forward, batch, self.max_forward_batch)

    @torch.no_grad()
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        return torch.softmax(self.model(x).float(), dim=1).cpu().numpy()

    def format(self, probs: np.ndarray) -> list[dict]:
        return format_predictions(probs, self.counts, self.config["model_version"])

    def predict(self, images: list[bytes]) -> list[dict]:
        return self.format(self.forward(np.stack([self.preprocess(b) for b in images])))


def evaluate_model(model_dir: str | Path, channel: str | Path, out_dir: str | Path | None = None,
                   batch_size: int = 32, device: str = "auto", stem: str = "eval") -> tuple[dict, tuple]:
    dev = pick_device(device)
    model, config, pre = load_artifact(model_dir, dev)
    ds = open_channel(channel, pre)  # per-image or sharded (bincounter data shard)
    if isinstance(ds, ShardDataset):  # batches itself (every sample once, in index order)
        dl = ds.loader(batch_size, 0, 1, 0, shuffle=False)
    else:
        dl = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    model.to(memory_format=torch.channels_last)
    ev = evaluate(model, dl, dev, DistInfo(device=dev), channels_last=True, desc="evaluate", return_probs=True)
    summary = summarize_eval(ev, tuple(config.get("counts", COUNTS)))
    summary["skipped"] = ev["skipped"]
    summary["model_version"] = config["model_version"]
    # the plot says what was evaluated (the channel's folder, e.g. "test"), not the generic file stem
    paths = write_report(summary, out_dir or model_dir, stem, title=f"{_channel_name(channel)} set")
    return summary, paths


def _channel_name(channel: str | Path) -> str:
    return Path(channel).resolve().name or str(channel)


def evaluate_remote(predict_batch, channel: str | Path, out_dir: str | Path | None = None, batch_size: int = 16,
                    stem: str = "endpoint") -> tuple[dict, tuple]:
    """Evaluate any endpoint: `predict_batch(list of image bytes) -> list of {"count": ...}` over a channel
    (DIR/<count>/<id>.jpg). Used for SageMaker endpoints, local or real. -> (summary, report paths)."""
    from .data.dataset import list_channel
    from .metrics import confusion_matrix
    from .progress import progress

    samples = list_channel(channel)
    labels, preds, versions = [], [], {}
    with progress(len(samples), stem, unit="img") as bar:
        for i in range(0, len(samples), batch_size):
            chunk = samples[i:i + batch_size]
            out = predict_batch([p.read_bytes() for p, _ in chunk])
            labels += [c for _, c in chunk]
            preds += [COUNTS.index(int(o["count"])) for o in out]
            for o in out:
                versions[o.get("model_version")] = versions.get(o.get("model_version"), 0) + 1
            bar.update(len(chunk))
    summary = summarize(confusion_matrix(labels, preds))
    # the result names the model that answered (report.py refuses results of another model); an endpoint whose
    # traffic was split between models (an update in progress) names each, with its share of the answers
    if len(versions) == 1:
        summary["model_version"] = next(iter(versions))
    else:
        summary["model_versions"] = {str(v): n for v, n in versions.items()}
        log.warning("%s: the answers came from %d models (%s): an update in progress? The figures mix them",
                    stem, len(versions), ", ".join(f"{v}: {n}" for v, n in summary["model_versions"].items()))
    paths = (write_report(summary, out_dir, stem, title=f"{_channel_name(channel)} set, {stem}")
             if out_dir is not None else ())
    return summary, paths
