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
    return root / "bincounter" / f"timm-{version}-names.json"


def timm_models() -> list[str]:
    """`timm.list_models()` plus timm's deprecated names (which it still builds, with a warning), from the cache
    for the installed timm version when it is there."""
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
    from timm.models import get_deprecated_models

    names = sorted(set(timm.list_models()) | set(get_deprecated_models()))
    if cache is not None:
        try:  # atomically: a concurrent run reads the whole list or none
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(names))
            tmp.replace(cache)
        except OSError:  # a read-only home: no cache, the next run imports timm again
            pass
    return names


_CONFUSABLE = str.maketrans({"o": "0", "l": "1", "i": "1", "-": "_"})


def _fold(word: str) -> str:
    """What a mistyped name looks like: case, o/0, l/1/i and -/_ folded together."""
    return word.lower().translate(_CONFUSABLE)


def close_matches(word: str, choices, n: int = 3, cutoff: float = 0.75) -> list[str]:
    """The `n` choices closest to `word` (difflib's ratio on the folded names, so efficientnet_bo -> efficientnet_b0
    before efficientnet_b8); equally close ones by the nearest substituted characters (efficientnet_b9 ->
    efficientnet_b8 first), then in the order of `choices`, not difflib's reverse alphabetical order."""
    key = _fold(word)
    m = difflib.SequenceMatcher()
    m.set_seq2(key)
    scored = []
    for i, c in enumerate(choices):
        f = _fold(c)
        m.set_seq1(f)
        if m.real_quick_ratio() >= cutoff and m.quick_ratio() >= cutoff and (r := m.ratio()) >= cutoff:
            near = sum(abs(ord(a) - ord(b)) for a, b in zip(f, key, strict=True)) if len(f) == len(key) else 1 << 20
            scored.append((-r, near, i, c))
    return [c for *_, c in sorted(scored)[:n]]


def check_arch(arch: str, backend: str = "timm", label: str | None = None) -> None:
    """Refuse a model name the backend cannot build, in one line with the close names and this counter's
    family. `label`: how the user gave it (default `--arch ARCH`; `--hp arch=...` for a SageMaker job)."""
    if backend == "torchvision":
        import torchvision

        known = torchvision.models.list_models()
        ok = arch in known
    else:
        known = timm_models()
        ok = arch.split(".", 1)[0] in known  # like timm.is_model: a pretrained tag (name.tag) is allowed
    if not ok:
        close = close_matches(arch, known, n=3, cutoff=0.6)
        hint = (f" (did you mean {close[0]}?)" if close and _fold(close[0]) == _fold(arch) else
                f" (closest: {', '.join(close)})" if close else "")
        raise UserError(f"{label or '--arch ' + arch}: not a {backend} model name{hint}; this counter is built on "
                        f"{FAMILY}")
