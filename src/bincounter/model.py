"""Model factory, and the PyTorch side of the artifact (layout and torch-free reading: `artifact.py`):
`save_artifact` / `load_artifact` for model.safetensors, `export_onnx` for model.onnx (about 400 lines: the
network and the files that hold it in one module, so the head, the weights layout and the export cannot drift).

Backends: timm (default; any `timm.list_models()` name) or torchvision (`torchvision.models` names).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import logging
from pathlib import Path

import torch
from torch import nn

from . import COUNTS, __version__
from .artifact import (
    FORMAT,
    INT8_RECORD,
    ONNX,
    ONNX_INPUT,
    ONNX_INT8,
    ONNX_OPSET,
    ONNX_OPSETS,
    ONNX_OUTPUT,
    WEIGHTS,
    preprocess_of,
    read_config,
    write_config,
    write_hashed,
)
from .errors import UserError
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .weights import check_weights_file, describe, hub_offline_if_unreachable

log = logging.getLogger(__name__)
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def resolve_weights_file(path: str | Path, arch: str | None = None) -> Path:
    """A weights file, or a directory (e.g. the SageMaker `pretrained` channel) holding exactly one, or one
    named `<arch>.<suffix>` (what `bincounter weights fetch` writes). Other files (the provenance JSON) are
    ignored."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in _WEIGHT_SUFFIXES
                       and not f.name.startswith("."))
        named = [f for f in files if arch and f.stem == arch]
        if len(files) == 1 or len(named) == 1:
            return (named or files)[0]
        raise UserError(f"pretrained weights directory {p} holds {len(files)} weight files "
                        f"({', '.join(_WEIGHT_SUFFIXES)}); expected exactly one"
                        + (f" or one named {arch}.safetensors" if arch else ""))
    raise UserError(f"pretrained weights {p} not found")


#: what a file given as weights is instead, by its first bytes (a weights file is checked by its loader)
_NOT_WEIGHTS = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
                (b"\x1f\x8b", "gzip-compressed (a model.tar.gz? unpack it and pass the weights file)"),
                (b"{", "JSON text"), (b"[", "JSON text"))


def _not_weights(path: Path) -> str | None:
    """Why `path` cannot be weights, or None when it may be: safetensors (an 8-byte header size, then the JSON
    header), torch.save's zip archive or a legacy pickle."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "an empty file"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80" or head[8:9] == b"{":
        return None
    for magic, what in _NOT_WEIGHTS:
        if head.startswith(magic):
            return what
    return "neither safetensors nor a PyTorch file"


def _load_state_dict(path: Path) -> dict:
    try:
        why = _not_weights(path)
    except OSError as e:
        raise UserError(f"pretrained weights {path}: {e.strerror}") from None
    if why:
        raise UserError(f"pretrained weights {path}: {why}, not a weights file (expected a .safetensors file or a "
                        f"PyTorch state dict .pth/.pt/.bin; `bincounter weights fetch` writes one)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a weights file, pickled objects
        if "weights only load failed" in str(e).lower():  # torch's long explanation of weights_only=True
            raise UserError(f"{path}: holds pickled Python objects, not only tensors (a whole pickled model?); "
                            "refusing to unpickle it: save and pass its state_dict() instead") from None
        raise UserError(f"{path}: cannot read weights ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:160]})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise UserError(f"{path}: not a state dict ({type(sd).__name__})")
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _head_prefix(model: nn.Module) -> str:
    head = classifier(model)
    return next(name for name, m in model.named_modules() if m is head) + "."


def load_backbone(model: nn.Module, path: str | Path, arch: str, backend: str) -> int:
    """Load every backbone tensor (all but the head) from a local weights file, or stop with one line.
    Returns how many loaded. The head keeps its fresh init whatever the file holds."""
    f = resolve_weights_file(path, arch)
    prov = check_weights_file(f, arch)
    sd = _load_state_dict(f)
    head = _head_prefix(model)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
    need = [k for k in own if not k.endswith("num_batches_tracked")]
    fits = {k: sd[k] for k in own if k in sd and tuple(sd[k].shape) == tuple(own[k].shape)}
    matched = sum(1 for k in need if k in fits)
    extra = [k for k in sd if not k.startswith(head) and k not in own]  # e.g. efficientnet_b1 into _b0
    if matched < len(need) or extra:
        missing = [k for k in need if k not in sd]
        other = [k for k in need if k in sd and k not in fits]
        why = "; ".join(([f"{len(missing)} missing, e.g. {missing[0]}"] if missing else []) +
                        ([f"{len(other)} of another shape, e.g. {other[0]} {list(sd[other[0]].shape)} vs "
                          f"{list(own[other[0]].shape)}"] if other else []) +
                        ([f"{len(extra)} in the file that the model lacks, e.g. {extra[0]}"] if extra else []))
        raise UserError(f"pretrained weights {f} fit {matched} of the {len(need)} backbone tensors of {backend} "
                        f"{arch} ({why}): weights for another architecture or backend? "
                        f"(`bincounter weights fetch --arch {arch}` writes matching ones)")
    model.load_state_dict(fits, strict=False)
    log.info("loaded %d/%d backbone tensors of pretrained weights from %s; new head %s%s", matched, len(need), f,
             head.rstrip("."), f"; {describe(prov)}" if prov else "")
    return matched


def _neutral_head(model: nn.Module) -> None:
    """Zero the new classifier's last layer: every class starts at p = 1/num_classes (loss ln K), so the first
    steps send no large gradients into pretrained features. (timm's EfficientNet init draws it uniform in
    +-1/sqrt(num_classes), +-0.45 for 5 classes: a first loss of ~11 on ImageNet features.) The weight's
    gradient is not zero (features x (p - y)), so the head learns from the first step."""
    layers = [m for m in classifier(model).modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise UserError(f"cannot find the classifier layer of {type(model).__name__}")
    nn.init.zeros_(layers[-1].weight)
    if layers[-1].bias is not None:
        nn.init.zeros_(layers[-1].bias)


HEADS = ("linear", "ordinal")


class OrdinalHead(nn.Module):
    """An ordinal head for counts (CORN's conditional formulation): K-1 logits l_k = logit P(y > k | y >= k).
    It returns class log-probabilities, log p_y = sum_{j<y} log s_j + log(1 - s_y) with s = sigmoid(l), so that
    cross-entropy on its output is the CORN loss (its tasks summed, averaged per sample rather than per task),
    the probabilities respect the order of the counts by construction, and everything downstream (softmax,
    argmax, evaluation, serving, export) is unchanged. It starts at the uniform distribution (zero weights,
    biases logit((K-1-k)/(K-k)))."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.in_features, self.out_features = in_features, num_classes
        self.fc = nn.Linear(in_features, num_classes - 1)
        nn.init.zeros_(self.fc.weight)
        k = torch.arange(num_classes - 1, dtype=torch.float32)
        s = (num_classes - 1 - k) / (num_classes - k)
        with torch.no_grad():
            self.fc.bias.copy_(torch.log(s / (1 - s)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(x)
        zero = logits.new_zeros(logits.shape[0], 1)
        before = torch.cat([zero, torch.cumsum(nn.functional.logsigmoid(logits), 1)], 1)
        return before + torch.cat([nn.functional.logsigmoid(-logits), zero], 1)


def _use_ordinal_head(model: nn.Module) -> None:
    head = classifier(model)
    prefix = _head_prefix(model).rstrip(".")
    last = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear)][-1]
    name = ".".join(filter(None, [prefix, last[0]]))
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, OrdinalHead(last[1].in_features, last[1].out_features))


def create_model(arch: str = "efficientnet_b0", backend: str = "timm", num_classes: int = len(COUNTS),
                 pretrained: bool = False, pretrained_path: str | Path | None = None,
                 drop_rate: float | None = None, head: str = "linear") -> nn.Module:
    """A fresh classifier with a `num_classes` head that starts neutral (zero-init; `head="ordinal"`: an
    `OrdinalHead` that starts uniform). Pretrained weights come from `pretrained_path` when given (every
    backbone tensor must load; the head is left out), from the backend's own download when `pretrained`, else
    random init."""
    if head not in HEADS:
        raise UserError(f"unknown head {head!r} ({' or '.join(HEADS)})")
    if backend == "timm":
        import timm

        if not timm.is_model(arch):
            raise UserError(f"unknown timm architecture {arch!r} (see timm.list_models('efficientnet*'))")
        kw = {} if drop_rate is None else {"drop_rate": drop_rate}
        download = pretrained and pretrained_path is None
        with hub_offline_if_unreachable() if download else contextlib.nullcontext() as why:
            try:
                model = timm.create_model(arch, pretrained=download, num_classes=num_classes, **kw)
            except Exception as e:  # network, hub, missing weights: one actionable line
                raise UserError(f"could not fetch pretrained weights for {arch} ({why or type(e).__name__ + ': '}"
                                f"{'' if why else str(e).splitlines()[0].split('. ')[0][:160]}); pass "
                                "--pretrained-path FILE (or a 'pretrained' channel; `bincounter weights fetch` "
                                "writes one) or --no-pretrained to start from random init") from None
    elif backend == "torchvision":
        import torchvision

        if arch not in torchvision.models.list_models():
            raise UserError(f"unknown torchvision architecture {arch!r}")
        try:
            model = torchvision.models.get_model(arch, weights="DEFAULT" if pretrained and not pretrained_path
                                                 else None)
        except Exception as e:
            raise UserError(f"could not fetch pretrained weights for {arch} ({type(e).__name__}); pass "
                            "--pretrained-path FILE or --no-pretrained") from None
        _replace_torchvision_head(model, num_classes)
    else:
        raise UserError(f"unknown backend {backend!r} (timm or torchvision)")
    if pretrained_path is not None:
        load_backbone(model, pretrained_path, arch, backend)
    _neutral_head(model)
    if head == "ordinal":
        _use_ordinal_head(model)
    return model


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


def weights_bytes(model: nn.Module) -> bytes:
    """model.safetensors' bytes for `model` (on the CPU, contiguous; no pickle). Deterministic: the same weights
    give the same bytes, hence the same sha256 and model_version."""
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()},
                metadata={"format": "pt"})


def save_artifact(model_dir: str | Path, model: nn.Module, arch: str, backend: str, pre: Preprocess,
                  extra: dict | None = None) -> dict:
    """Write model.safetensors + config.json (each atomically), config.json naming the sha256 of the weight
    bytes written. Removes a model.onnx made from earlier weights."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    digest = write_hashed(model_dir / WEIGHTS, weights_bytes(model))
    (model_dir / ONNX).unlink(missing_ok=True)  # made from other weights: export_onnx writes the new one
    (model_dir / ONNX_INT8).unlink(missing_ok=True)  # and `export --quantize int8` the INT8 one
    config = {
        "format": FORMAT, "arch": arch, "backend": backend, "num_classes": len(COUNTS),
        "counts": list(COUNTS), "preprocess": pre.to_dict(),
        "model_version": digest[:12], "weights_sha256": digest,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "bincounter_version": __version__, **(extra or {}),
    }
    write_config(model_dir, config)
    return config


def _read_weights(model_dir: Path) -> bytes:
    try:
        return (model_dir / WEIGHTS).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{model_dir}: no {WEIGHTS}") from None
    except OSError as e:
        raise UserError(f"{model_dir}/{WEIGHTS}: cannot load weights ({e.strerror})") from None


def _model_from(model_dir: Path, config: dict, data: bytes) -> nn.Module:
    """The network config.json describes, holding the weights in `data` (model.safetensors' bytes)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    model = create_model(config["arch"], config["backend"], config["num_classes"], pretrained=False,
                         head=config.get("head", "linear"))
    try:
        model.load_state_dict(load(data))
    except (SafetensorError, RuntimeError) as e:
        raise UserError(f"{model_dir}/{WEIGHTS}: cannot load weights ({str(e).splitlines()[0][:200]})") from None
    return model


def load_artifact(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict, Preprocess]:
    """Load what `save_artifact` wrote; every problem is a one-line UserError."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    pre = preprocess_of(config)
    model = _model_from(model_dir, config, _read_weights(model_dir))
    model.eval().to(device)
    return model, config, pre


class _WithSoftmax(nn.Module):
    """What model.onnx computes: the network and the softmax the PyTorch runtime applies after it (fp32)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x).float(), dim=1)


def export_onnx(model_dir: str | Path, model: nn.Module | None = None, opset: int = ONNX_OPSET) -> dict:
    """Write model.onnx beside model.safetensors (from `model`, else from the saved weights): input `image`
    float32 (N, 3, S, S) preprocessed as config.json says, output `probabilities` (N, classes), N dynamic.
    Records in config.json the sha256 of the ONNX bytes written and of the weights they were exported from (the
    CPU image refuses model.onnx beside other weights), and the opset; returns the updated config. Needs the
    `onnx` package (the TorchScript exporter builds its graph with it)."""
    import copy

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    if not ONNX_OPSETS[0] <= opset <= ONNX_OPSETS[1]:
        raise UserError(f"--opset {opset}: supported {ONNX_OPSETS[0]}..{ONNX_OPSETS[1]} (the exporter and ONNX "
                        f"Runtime 1.32 both handle these; default {ONNX_OPSET})")
    if model is None:
        weights = _read_weights(model_dir)
        net = _model_from(model_dir, config, weights)
    else:
        # a copy: nn.Module.to() moves a module in place, and the trainer's model must stay on its GPU, in its dtype
        net = copy.deepcopy(model).to("cpu").float()
        weights = weights_bytes(net)  # what is exported, as model.safetensors would hold it
    data = _onnx_bytes(model_dir, net, int(config["preprocess"]["image_size"]), opset)
    try:
        digest = write_hashed(model_dir / ONNX, data)
        config["onnx"] = {"file": ONNX, "sha256": digest, "opset": opset, "input": ONNX_INPUT,
                          "output": ONNX_OUTPUT, "weights_sha256": hashlib.sha256(weights).hexdigest()}
        if config.get(INT8_RECORD, {}).get("weights_sha256") not in (None, config["onnx"]["weights_sha256"]):
            del config[INT8_RECORD]  # quantized from other weights: `export --quantize int8` makes the new one
            (model_dir / ONNX_INT8).unlink(missing_ok=True)
        write_config(model_dir, config)
    except OSError as e:
        raise UserError(f"cannot write {model_dir / ONNX}: {e.strerror or e}") from None
    log.info("wrote %s (opset %d, %.1f MB)", model_dir / ONNX, opset, len(data) / 1e6)
    return config


def _onnx_bytes(model_dir: Path, model: nn.Module, size: int, opset: int) -> bytes:
    """model.onnx's bytes: `model` (on the CPU, fp32) and its softmax, exported with a dynamic batch."""
    import io
    import warnings

    wrapped = _WithSoftmax(model).eval()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # "legacy TorchScript-based exporter": chosen on purpose (see artifact.ONNX_OPSET)
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (torch.zeros(2, 3, size, size),), buf, dynamo=False, opset_version=opset,
                              input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                              dynamic_axes={ONNX_INPUT: {0: "n"}, ONNX_OUTPUT: {0: "n"}})
    except Exception as e:  # noqa: BLE001 - the exporter's errors have no common type
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "onnx is not installed" in reason.lower():
            reason = "the `onnx` package is not installed (pip install onnx)"
        raise UserError(f"cannot export {model_dir} to ONNX: {reason}") from None
    return buf.getvalue()
