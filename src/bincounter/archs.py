"""Model names: is `--arch` (or `--hp arch=`) one the backend can build, and if not, which names are close.

timm's list of names costs an import of timm (torch + torchvision: seconds), so it is cached per timm version
in `$XDG_CACHE_HOME/bincounter/` (default `~/.cache/bincounter/`): after the first time, a misspelt arch and a
`sm train --dry-run` are answered without importing torch. torchvision's list is not cached (its import is
the check).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import json
import os
from pathlib import Path

from .errors import UserError

#: what this counter is built and measured with (docs/QUALITY.md); named in every unknown-arch error
FAMILY = "efficientnet* (e.g. efficientnet_b0, tf_efficientnet_lite0; all: timm.list_models('efficientnet*'))"


def _cache_file(version: str) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "bincounter" / f"timm-{version}-models.json"


def timm_models() -> list[str]:
    """`timm.list_models()`, from the cache for the installed timm version when it is there."""
    try:
        version = importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        version = None
    cache = _cache_file(version) if version else None
    if cache is not None:
        try:
            return json.loads(cache.read_text())
        except (OSError, ValueError):
            pass
    import timm

    names = sorted(timm.list_models())
    if cache is not None:
        try:  # atomically: a concurrent run reads the whole list or none
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(names))
            tmp.replace(cache)
        except OSError:  # a read-only home: no cache, the next run imports timm again
            pass
    return names


def _distance(a: str, b: str) -> int:
    """Levenshtein edit distance."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def close_names(name: str, known: list[str], n: int = 3) -> list[str]:
    """The `n` known names closest to `name`: difflib's candidates, ranked by edit distance (difflib alone
    ranks ties in reverse alphabetical order: efficientnet_bo -> b8, b7, b6)."""
    lower = {k.lower(): k for k in known}
    candidates = difflib.get_close_matches(name.lower(), list(lower), n=20, cutoff=0.6)
    ranked = sorted(candidates, key=lambda k: (_distance(name.lower(), k), -difflib.SequenceMatcher(
        None, name.lower(), k).ratio(), k))
    return [lower[k] for k in ranked[:n]]


def check_arch(arch: str, backend: str = "timm", label: str | None = None) -> None:
    """Refuse a model name the backend cannot build, in one line with the close names and this counter's
    family. `label`: how the user gave it (default `--arch ARCH`)."""
    if backend == "torchvision":
        import torchvision

        known = torchvision.models.list_models()
        ok = arch in known
    else:
        known = timm_models()
        ok = arch.split(".", 1)[0] in known  # like timm.is_model: a pretrained tag (name.tag) is allowed
    if not ok:
        close = close_names(arch, known)
        hint = f" (closest: {', '.join(close)})" if close else ""
        raise UserError(f"{label or '--arch ' + arch}: not a {backend} model name{hint}; this counter is built on "
                        f"{FAMILY}")
