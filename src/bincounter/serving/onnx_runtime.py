"""The ONNX Runtime predictor: what the CPU serving image (`--target serve-cpu`, no PyTorch) runs.

The same interface as `evaluate.Predictor` (preprocess / forward / format), the same preprocessing
(`preprocess.Preprocess`, numpy + PIL) and the same answers (`artifact.format_predictions`): the runtime
behind the worker is the only difference. The file served is model.onnx, or model.int8.onnx when config.json
marks it servable (`served_onnx`; BINCOUNTER_ONNX_PRECISION=fp32 forces model.onnx; an INT8 model quantized
for VNNI CPUs is not served on a CPU without VNNI: `has_vnni`); either is checked against
config.json before it is used: its sha256, and that it was made from the weights config.json describes. Answers
of the INT8 model carry model_version "<version>-int8".
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .. import artifact
from ..artifact import (
    INT8_RECORD,
    ONNX,
    ONNX_INT8,
    WEIGHTS,
    format_predictions,
    preprocess_of,
    read_config,
    sha256_file,
)
from ..errors import UserError

log = logging.getLogger("bincounter.serving")


#: BINCOUNTER_ONNX_PRECISION: auto (INT8 when config.json marks it servable, else fp32), fp32 (model.onnx
#: whatever config.json says), int8 (model.int8.onnx, refused unless config.json marks it servable)
PRECISIONS = ("auto", "fp32", "int8")
INT8_SUFFIX = "-int8"  # model_version of the answers the INT8 model gives


def check_onnx(model_dir: str | Path) -> dict:
    """config.json of a model directory whose model.onnx is present and is the export of its weights; any
    problem is a one-line UserError that says how to fix it."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    fix = ("add it where bincounter runs with PyTorch (unpack model.tar.gz, `bincounter export --model-dir DIR`, "
           "pack it again), or serve this model with the default (PyTorch) image")
    _check_file(model_dir, config, ONNX, config.get("onnx"), fix, "exported")
    return config


def _check_file(model_dir: Path, config: dict, name: str, meta: dict | None, fix: str, made: str) -> None:
    """The hash gate of an ONNX file: present, recorded in config.json (`meta`), made from this directory's
    weights (`made`: exported, quantized) and the very bytes config.json records."""
    if not (model_dir / name).is_file() or not meta:
        raise UserError(f"{model_dir} has no {name} (this image serves with ONNX Runtime): {fix}")
    weights = model_dir / WEIGHTS
    made_from = sha256_file(weights) if weights.is_file() else config.get("weights_sha256")
    again = fix.replace("add it", f"{made[:-2]} it again")
    if meta.get("weights_sha256") != made_from:
        raise UserError(f"{model_dir}/{name} was {made} from other weights than {model_dir}/{WEIGHTS}: {again}")
    digest = sha256_file(model_dir / name)
    if digest != meta.get("sha256"):
        raise UserError(f"{model_dir}/{name}: sha256 {digest[:12]} is not the {str(meta.get('sha256'))[:12]} "
                        f"config.json records (a partial copy?): {again}")


#: the x86 flags of the instructions that run u8 x s8 dot products without 16-bit saturation (VNNI: AVX-512 on
#: Ice Lake and later Xeons and AMD Zen 4, AVX-VNNI, AMX); without one, ONNX Runtime's u8s8 kernels can saturate on
#: full 8-bit weights, which is why export's default quantizes with 7-bit weights (reduce_range)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """This CPU's flags that matter to INT8 speed and exactness (AVX2, AVX-512, VNNI, AMX); [] where unknown."""
    try:
        with open(cpuinfo) as f:
            line = next(ln for ln in f if ln.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in line.split(":", 1)[1].split() if f in ("avx2", "avx512f", *VNNI_FLAGS))


def has_vnni(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    return any(f in VNNI_FLAGS for f in cpu_flags(cpuinfo))


def needs_vnni(settings: dict) -> bool:
    """Whether INT8 settings (an INT8 record's, or `quantize.QuantSettings` as a dict) mean full 8-bit weights with
    uint8 activations (`export --for-cpu vnni`): exact only on a CPU with VNNI. Derived from the types, so a
    record without the `needs_vnni` key is judged too."""
    return bool(settings.get("needs_vnni")) or (settings.get("activation_type") == "uint8"
                                                 and settings.get("weight_type") == "int8"
                                                 and settings.get("reduce_range") is False)


def onnx_precision(value: str | None = None) -> str:
    """auto, fp32 or int8: `value`, else $BINCOUNTER_ONNX_PRECISION, else auto."""
    value = (value or os.environ.get("BINCOUNTER_ONNX_PRECISION") or "auto").strip().lower()
    if value not in PRECISIONS:
        raise UserError(f"BINCOUNTER_ONNX_PRECISION={value!r}: expected {', '.join(PRECISIONS)}")
    return value


def served_onnx(model_dir: str | Path, precision: str | None = None) -> tuple[dict, str, str]:
    """Which ONNX file this model directory is served from, checked like model.onnx (`_check_file`):
    (config, file name, one line saying why). INT8 when config.json's record marks it servable (unless
    BINCOUNTER_ONNX_PRECISION=fp32); a servable INT8 file that fails the gate is refused, not replaced."""
    model_dir = Path(model_dir)
    precision = onnx_precision(precision)
    config = read_config(model_dir)
    meta = config.get(INT8_RECORD)
    if precision == "fp32":
        return check_onnx(model_dir), ONNX, "fp32: BINCOUNTER_ONNX_PRECISION=fp32"
    if not (meta and meta.get("servable") is True):
        state = "no INT8 model" if not meta else f"INT8 {meta.get('why') or 'not servable'}"
        if precision == "int8":
            raise UserError(f"BINCOUNTER_ONNX_PRECISION=int8 but {model_dir}: {state} (`bincounter export "
                            "--quantize int8 --test DIR` marks it servable when it holds the accuracy)")
        return check_onnx(model_dir), ONNX, f"fp32: {state}"
    if needs_vnni(meta.get("settings") or {}) and not has_vnni():
        state = ("INT8 was quantized for CPUs with VNNI (`export --for-cpu vnni`: 8-bit weights, which this CPU's "
                 "u8s8 kernels can saturate) and this CPU has none")
        if precision == "int8":
            raise UserError(f"BINCOUNTER_ONNX_PRECISION=int8 but {model_dir}: {state} (quantize it again without "
                            "--for-cpu vnni, or serve it on a CPU with VNNI: ml.c6i, ml.m6i, ml.c7i)")
        return check_onnx(model_dir), ONNX, f"fp32: {state}"
    fix = ("quantize it again where bincounter runs (`bincounter export --model-dir DIR --quantize int8 ...`), or "
           "set BINCOUNTER_ONNX_PRECISION=fp32")
    _check_file(model_dir, config, ONNX_INT8, meta, fix, "quantized")
    vnni = "; needs a CPU with VNNI: this one has it" if needs_vnni(meta.get("settings") or {}) else ""
    return config, ONNX_INT8, f"INT8: config.json marks it {meta.get('why') or 'servable'}{vnni}"


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

    def __init__(self, model_dir: str | Path, threads: int | None = None, max_forward_batch: int | None = None,
                 precision: str | None = None):
        import onnxruntime as ort

        self.max_forward_batch = artifact.forward_batch_limit(max_forward_batch)
        #: the file served (model.onnx or model.int8.onnx) and why (BINCOUNTER_ONNX_PRECISION, config.json)
        self.config, self.model_file, self.why = served_onnx(model_dir, precision)
        self.model_version = self.config["model_version"] + (INT8_SUFFIX if self.model_file == ONNX_INT8 else "")
        self.pre = preprocess_of(self.config)
        self.counts = tuple(self.config["counts"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or session_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # warnings about unused initialisers etc. are not the user's business
        self.session = ort.InferenceSession(str(Path(model_dir) / self.model_file), opts,
                                            providers=["CPUExecutionProvider"])
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
        return format_predictions(probs, self.counts, self.model_version)

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
