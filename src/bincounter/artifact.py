"""The model artifact's layout and what can be read from it without PyTorch (the CPU serving image has none).

Artifact (what `model.tar.gz` holds, what the servers load)::

    model.safetensors   the weights (no pickle)                          -> the PyTorch runtime (GPU image)
    model.onnx          the same network + softmax, dynamic batch        -> the ONNX Runtime (CPU image)
    config.json         arch, backend, counts (class index -> item count), preprocessing, version, both sha256s

`model.py` writes and loads the PyTorch side; `format_predictions` is the one place an answer is built, for
both runtimes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    from .preprocess import Preprocess

WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
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
ONNX_INPUT = "image"
ONNX_OUTPUT = "probabilities"


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


def write_config(model_dir: str | Path, config: dict) -> None:
    """config.json, atomically (tmp file then rename)."""
    tmp = Path(model_dir) / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(config, indent=2))
    tmp.replace(Path(model_dir) / CONFIG)


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
