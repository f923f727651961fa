"""The ONNX Runtime predictor: what the CPU serving image (`--target serve-cpu`, no PyTorch) runs.

The same interface as `evaluate.Predictor` (preprocess / forward / format), the same preprocessing
(`preprocess.Preprocess`, numpy + PIL) and the same answers (`artifact.format_predictions`): the runtime
behind the worker is the only difference. model.onnx is checked against config.json before it is used: its
sha256, and that it was exported from the weights config.json describes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .. import artifact
from ..artifact import ONNX, WEIGHTS, format_predictions, preprocess_of, read_config, sha256_file
from ..errors import UserError

log = logging.getLogger("bincounter.serving")


def check_onnx(model_dir: str | Path) -> dict:
    """config.json of a model directory whose model.onnx is present and is the export of its weights; any
    problem is a one-line UserError that says how to fix it."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    meta = config.get("onnx")
    fix = ("add it where bincounter runs with PyTorch (unpack model.tar.gz, `bincounter export --model-dir DIR`, "
           "pack it again), or serve this model with the default (PyTorch) image")
    if not (model_dir / ONNX).is_file() or not meta:
        raise UserError(f"{model_dir} has no {ONNX} (this image serves with ONNX Runtime): {fix}")
    weights = model_dir / WEIGHTS
    exported_from = sha256_file(weights) if weights.is_file() else config.get("weights_sha256")
    if meta.get("weights_sha256") != exported_from:
        raise UserError(f"{model_dir}/{ONNX} was exported from other weights than {model_dir}/{WEIGHTS}: "
                        f"{fix.replace('add it', 'export it again')}")
    digest = sha256_file(model_dir / ONNX)
    if digest != meta.get("sha256"):
        raise UserError(f"{model_dir}/{ONNX}: sha256 {digest[:12]} is not the {str(meta.get('sha256'))[:12]} "
                        f"config.json records (a partial copy?): {fix.replace('add it', 'export it again')}")
    return config


def available_cpus(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (`docker run --cpus 1`,
    a SageMaker serverless memory size) when there is one."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = open(cpu_max).read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))  # ceil: 1.5 CPUs -> 2 threads
    except (OSError, ValueError):
        pass
    return cpus


def session_threads(workers: int | None = None) -> int:
    """Intra-op threads per worker: the CPUs shared out among the MMS workers (SAGEMAKER_MODEL_SERVER_WORKERS)."""
    if workers is None:
        workers = int(os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS", "1") or 1)
    return max(1, available_cpus() // max(1, workers))


class OnnxPredictor:
    runtime = "onnx"

    def __init__(self, model_dir: str | Path, threads: int | None = None, max_forward_batch: int | None = None):
        import onnxruntime as ort

        self.max_forward_batch = artifact.forward_batch_limit(max_forward_batch)
        self.config = check_onnx(model_dir)
        self.pre = preprocess_of(self.config)
        self.counts = tuple(self.config["counts"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or session_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # warnings about unused initialisers etc. are not the user's business
        self.session = ort.InferenceSession(str(Path(model_dir) / ONNX), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.device = "cpu"

    def preprocess(self, data: bytes, formats: tuple[str, ...] | None = None) -> np.ndarray:
        return self.pre(data, formats)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities, in passes of at most `max_forward_batch` images (BINCOUNTER_MAX_FORWARD_BATCH)."""
        return artifact.forward_in_chunks(self._forward, batch, self.max_forward_batch)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def format(self, probs: np.ndarray) -> list[dict]:
        return format_predictions(probs, self.counts, self.config["model_version"])

    def predict(self, images: list[bytes]) -> list[dict]:
        return self.format(self.forward(np.stack([self.preprocess(b) for b in images])))


def runtime_name(runtime: str | None = None) -> str:
    """"torch" or "onnx": `runtime`, else $BINCOUNTER_RUNTIME (the CPU image sets onnx), else torch when it is
    installed, else onnx."""
    runtime = (runtime or os.environ.get("BINCOUNTER_RUNTIME") or "auto").strip().lower()
    if runtime == "auto":
        import importlib.util

        return "torch" if importlib.util.find_spec("torch") else "onnx"
    if runtime not in ("torch", "onnx"):
        raise UserError(f"BINCOUNTER_RUNTIME={runtime!r}: expected torch, onnx or auto")
    return runtime
