"""Model factory and the model artifact layout (one place for both).

Artifact (what `model.tar.gz` holds, what the server loads)::

    model.safetensors   the weights (no pickle)
    config.json         arch, backend, counts (class index -> item count), preprocessing, version

Backends: timm (default; any `timm.list_models()` name) or torchvision (`torchvision.models` names).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
from pathlib import Path

import torch
from torch import nn

from . import COUNTS, __version__
from .errors import UserError
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

log = logging.getLogger(__name__)
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "bincounter-model/1"
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def resolve_weights_file(path: str | Path) -> Path:
    """A weights file, or a directory (e.g. the SageMaker `pretrained` channel) holding exactly one."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in _WEIGHT_SUFFIXES)
        if len(files) == 1:
            return files[0]
        raise UserError(f"pretrained weights directory {p} holds {len(files)} weight files "
                        f"({', '.join(_WEIGHT_SUFFIXES)}); expected exactly one")
    raise UserError(f"pretrained weights {p} not found")


def _load_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return sd


def create_model(arch: str = "efficientnet_b0", backend: str = "timm", num_classes: int = len(COUNTS),
                 pretrained: bool = False, pretrained_path: str | Path | None = None,
                 drop_rate: float | None = None) -> nn.Module:
    """A fresh classifier with a `num_classes` head. Pretrained weights come from `pretrained_path` when
    given (the head is left out of the load), from the backend's own download when `pretrained`, else
    random init."""
    if backend == "timm":
        import timm

        if not timm.is_model(arch):
            raise UserError(f"unknown timm architecture {arch!r} (see timm.list_models('efficientnet*'))")
        kw = {} if drop_rate is None else {"drop_rate": drop_rate}
        if pretrained_path is not None:
            f = resolve_weights_file(pretrained_path)
            model = timm.create_model(arch, pretrained=True, num_classes=num_classes,
                                      pretrained_cfg_overlay={"file": str(f)}, **kw)
            log.info("loaded pretrained weights from %s", f)
            return model
        try:
            return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, **kw)
        except Exception as e:  # network, hub, missing weights: one actionable line
            raise UserError(f"could not fetch pretrained weights for {arch} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0].split('. ')[0][:160]}); pass --pretrained-path FILE (or a "
                            "'pretrained' channel) or --no-pretrained to start from random init") from None
    if backend == "torchvision":
        import torchvision

        if arch not in torchvision.models.list_models():
            raise UserError(f"unknown torchvision architecture {arch!r}")
        try:
            model = torchvision.models.get_model(arch, weights="DEFAULT" if pretrained and not pretrained_path
                                                 else None)
        except Exception as e:
            raise UserError(f"could not fetch pretrained weights for {arch} ({type(e).__name__}); pass "
                            "--pretrained-path FILE or --no-pretrained") from None
        if pretrained_path is not None:
            f = resolve_weights_file(pretrained_path)
            sd = _load_state_dict(f)
            own = model.state_dict()
            kept = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
            model.load_state_dict(kept, strict=False)
            log.info("loaded %d/%d tensors of pretrained weights from %s", len(kept), len(own), f)
        _replace_torchvision_head(model, num_classes)
        return model
    raise UserError(f"unknown backend {backend!r} (timm or torchvision)")


def _replace_torchvision_head(model: nn.Module, num_classes: int) -> None:
    for attr in ("classifier", "fc", "head", "heads"):
        head = getattr(model, attr, None)
        if head is None:
            continue
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Linear(head.in_features, num_classes))
            return
        if isinstance(head, nn.Sequential):
            for i in range(len(head) - 1, -1, -1):
                if isinstance(head[i], nn.Linear):
                    head[i] = nn.Linear(head[i].in_features, num_classes)
                    return
    raise UserError(f"cannot find the classifier head of {type(model).__name__}")


def classifier(model: nn.Module) -> nn.Module:
    """The head (what trains during --freeze-backbone-epochs)."""
    if hasattr(model, "get_classifier"):
        return model.get_classifier()
    for attr in ("classifier", "fc", "head", "heads"):
        if hasattr(model, attr):
            return getattr(model, attr)
    raise UserError(f"cannot find the classifier head of {type(model).__name__}")


def model_mean_std(model: nn.Module) -> tuple[tuple, tuple]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def save_artifact(model_dir: str | Path, model: nn.Module, arch: str, backend: str, pre: Preprocess,
                  extra: dict | None = None) -> dict:
    """Write model.safetensors + config.json (atomically: tmp file then rename)."""
    from safetensors.torch import save_file

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = model_dir / (WEIGHTS + ".tmp")
    save_file(sd, str(tmp), metadata={"format": "pt"})
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    tmp.replace(model_dir / WEIGHTS)
    config = {
        "format": FORMAT, "arch": arch, "backend": backend, "num_classes": len(COUNTS),
        "counts": list(COUNTS), "preprocess": pre.to_dict(),
        "model_version": digest[:12], "weights_sha256": digest,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "bincounter_version": __version__, **(extra or {}),
    }
    tmpc = model_dir / (CONFIG + ".tmp")
    tmpc.write_text(json.dumps(config, indent=2))
    tmpc.replace(model_dir / CONFIG)
    return config


def read_config(model_dir: str | Path) -> dict:
    """config.json of a model directory, checked to be ours; any problem is a one-line UserError."""
    model_dir = Path(model_dir)
    try:
        config = json.loads((model_dir / CONFIG).read_text())
    except FileNotFoundError:
        raise UserError(f"{model_dir}: no {CONFIG} (not a bincounter model directory)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{model_dir}/{CONFIG}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        fmt = config.get("format") if isinstance(config, dict) else None
        raise UserError(f"{model_dir}/{CONFIG}: format {fmt!r}, expected {FORMAT!r} (not a bincounter model)")
    return config


def load_artifact(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict, Preprocess]:
    """Load what `save_artifact` wrote; every problem is a one-line UserError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    p = config["preprocess"]
    pre = Preprocess(int(p["image_size"]), tuple(p["mean"]), tuple(p["std"]))
    model = create_model(config["arch"], config["backend"], config["num_classes"], pretrained=False)
    try:
        sd = load_file(str(model_dir / WEIGHTS))
        model.load_state_dict(sd)
    except FileNotFoundError:
        raise UserError(f"{model_dir}: no {WEIGHTS}") from None
    except (SafetensorError, RuntimeError, OSError) as e:
        raise UserError(f"{model_dir}/{WEIGHTS}: cannot load weights ({str(e).splitlines()[0][:200]})") from None
    model.eval().to(device)
    return model, config, pre
