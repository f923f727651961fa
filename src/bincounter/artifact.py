"""The model artifact's layout and what can be read from it without PyTorch (the CPU serving image has none).

Artifact (what `model.tar.gz` holds, what the servers load)::

    model.safetensors   the weights (no pickle)                          -> the PyTorch runtime (GPU image)
    model.onnx          the same network + softmax, dynamic batch        -> the ONNX Runtime (CPU image)
    model.int8.onnx     optional: model.onnx quantized (`export --quantize int8`) -> the CPU image, when
                        config.json's onnx_int8 record marks it servable
    config.json         arch, backend, counts (class index -> item count), preprocessing, version, both sha256s

`model.py` writes and loads the PyTorch side, each file through `write_hashed` (its sha256 taken from the bytes
written). For both runtimes: `check_weights` (the weights are the ones config.json names), `forward_in_chunks`
(one forward pass capped at BINCOUNTER_MAX_FORWARD_BATCH images) and `format_predictions` (the one place an
answer is built).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    from .preprocess import Preprocess

WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
#: the INT8 model (`bincounter export --quantize int8`, bincounter/quantize.py) and its record in config.json
ONNX_INT8 = "model.int8.onnx"
INT8_RECORD = "onnx_int8"
CONFIG = "config.json"
FORMAT = "bincounter-model/1"
#: ONNX opset of the export. 17 is the newest the TorchScript exporter (`dynamo=False`) handles for every op
#: EfficientNet uses, and ONNX Runtime has run it since 1.14 (2023): old enough for any runtime a CPU fleet
#: has, new enough for LayerNormalization should a transformer backbone come. The dynamo exporter (the default
#: from torch 2.9) needs onnxscript and gave no gain for these convolutions.
ONNX_OPSET = 17
#: what `bincounter export --opset` accepts: 13 (the oldest with the ops these backbones export to) to 20 (the
#: newest the TorchScript exporter writes); ONNX Runtime 1.32 runs all of them
ONNX_OPSETS = (13, 20)
#: images per forward pass, at most (BINCOUNTER_MAX_FORWARD_BATCH): an MMS batch of 8 requests x 64 images is
#: 512 images, run as 8 passes of 64 instead of one that may not fit in GPU memory
MAX_FORWARD_BATCH = 64
ONNX_INPUT = "image"
ONNX_OUTPUT = "probabilities"


#: What a training run writes beside the model (in --model-dir and/or --output-dir). Each JSON among them names
#: the `model_version` it describes; a run removes the earlier run's from its folders just before it writes its first
#: result (train.py: a run stopped before that leaves them whole), and `bincounter report` refuses one that names
#: another model (`result_mismatch`).
RESULT_FILES = ("metrics.json", "rules.json", "test_metrics.json", "test_confusion_matrix.png", "training_curves.png",
                "drift_baseline.json", "eval_metrics.json", "eval_confusion_matrix.png", "report.html", "profile")


#: The `model_version` of a result written while a run is under way, before it has saved the model it describes
#: (a rule's rules.json in epoch 1): it never matches a model, so a run that stops there is not read as the folder's.
UNFINISHED = "unfinished-run"


def result_mismatch(doc: dict, name: str, model_version: str | None) -> str | None:
    """One line saying why result file `name` does not describe the model `model_version` (None: it does, or there
    is no model to compare with)."""
    theirs = doc.get("model_version") if isinstance(doc, dict) else None
    if model_version is None or theirs == model_version:
        return None
    if theirs is None:
        return (f"{name} names no model_version: it cannot be checked against this folder's model {model_version} "
                "(written by an older bincounter, or by hand)")
    if theirs == UNFINISHED:
        return (f"{name} was written by a run that stopped before it saved a model (its rules are in the file "
                f"itself): not shown with this folder's model {model_version}")
    return (f"{name} describes model {theirs}, not this folder's model {model_version} (config.json): left by "
            "another run, not shown; retrain or re-evaluate")


def read_config(model_dir: str | Path) -> dict:
    """config.json of a model directory, checked to be ours; any problem is a one-line UserError."""
    model_dir = Path(model_dir)
    try:
        config = json.loads((model_dir / CONFIG).read_text())
    except FileNotFoundError:
        raise UserError(f"{model_dir}: no {CONFIG} (not a bincounter model directory)") from None
    except IsADirectoryError:
        raise UserError(f"{model_dir}/{CONFIG}: is a directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{model_dir}/{CONFIG}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        fmt = config.get("format") if isinstance(config, dict) else None
        raise UserError(f"{model_dir}/{CONFIG}: format {fmt!r}, expected {FORMAT!r} (not a bincounter model)")
    return config


def write_hashed(path: str | Path, data: bytes) -> str:
    """The artifact writer: `data` to `path` atomically (a tmp file beside it, then rename; no tmp file left
    behind on failure) -> the sha256 of `data`. The digest that config.json records is of the bytes written, from
    the same call, not of whatever a later read of the file finds."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def write_config(model_dir: str | Path, config: dict) -> None:
    """config.json, atomically (tmp file then rename)."""
    write_hashed(Path(model_dir) / CONFIG, json.dumps(config, indent=2).encode())


def preprocess_of(config: dict) -> Preprocess:
    from .preprocess import Preprocess  # numpy + PIL: not at import (the CLI's parser reads this module)

    p = config["preprocess"]
    return Preprocess(int(p["image_size"]), tuple(p["mean"]), tuple(p["std"]))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_weights(model_dir: str | Path, config: dict | None = None) -> dict:
    """config.json of a model directory whose model.safetensors is the file config.json's weights_sha256 names
    (not a swapped file, nor new weights whose config.json was never written): the model_version served is
    then the model's. Any problem is a one-line UserError. -> config."""
    model_dir = Path(model_dir)
    config = read_config(model_dir) if config is None else config
    want = config.get("weights_sha256")
    if not want:
        raise UserError(f"{model_dir}/{CONFIG} records no weights_sha256: save the model again with bincounter")
    try:
        digest = sha256_file(model_dir / WEIGHTS)
    except FileNotFoundError:
        raise UserError(f"{model_dir}: no {WEIGHTS}") from None
    except OSError as e:
        raise UserError(f"{model_dir}/{WEIGHTS}: cannot read it ({e.strerror})") from None
    if digest != want:
        raise UserError(f"{model_dir}/{WEIGHTS}: sha256 {digest[:12]} is not the weights_sha256 {want[:12]} "
                        f"{CONFIG} records for model {config.get('model_version')} (a swapped file, or new weights "
                        f"without their {CONFIG}): copy the whole model directory again")
    return config


def forward_batch_limit(value: int | str | None = None) -> int:
    """Images per forward pass: `value`, else $BINCOUNTER_MAX_FORWARD_BATCH, else MAX_FORWARD_BATCH."""
    if value is None:
        value = os.environ.get("BINCOUNTER_MAX_FORWARD_BATCH") or MAX_FORWARD_BATCH
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"BINCOUNTER_MAX_FORWARD_BATCH={value!r}: expected a positive number of images")
    return n


def forward_in_chunks(forward, batch, size: int):
    """`forward` over `batch` in chunks of at most `size` rows, the outputs concatenated (numpy arrays)."""
    import numpy as np

    if len(batch) <= size:
        return forward(batch)
    return np.concatenate([forward(batch[i:i + size]) for i in range(0, len(batch), size)])


def format_predictions(rows, counts, model_version: str) -> list[dict]:
    """Probabilities (one row per image, class order = `counts`) -> the answers the endpoint and `predict`
    give. `rows`: anything with `.tolist()` (a torch tensor, a numpy array) or a list of lists."""
    out = []
    for row in (rows.tolist() if hasattr(rows, "tolist") else rows):
        best = max(range(len(row)), key=row.__getitem__)
        # the probability-weighted count: the answer that minimises squared error (round it for a count)
        expected = sum(p * c for p, c in zip(row, counts, strict=True))
        out.append({"count": counts[best], "expected_count": round(expected, 4),
                    "probabilities": {str(c): round(p, 6) for c, p in zip(counts, row, strict=True)},
                    "model_version": model_version})
    return out
