"""The one definition of what the drift watch measures, for the baseline (val split) and for captured traffic
alike. Per image, from the bytes the endpoint received: its width and height (the header), brightness, contrast
(mean and standard deviation of the grey levels) and sharpness (variance of the Laplacian), the last three on the
image decoded by `preprocess.decode` and resized to STATS_SIZE square, so they do not depend on the photo's
resolution. Per answer: the predicted count and the confidence (its probability)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import DataError
from ..preprocess import decode

STATS_SIZE = 128
#: numeric signals, in the order reports list them
NUMERIC = ("brightness", "contrast", "sharpness", "width", "height", "confidence")
#: the categorical signal (compared with a chi-square test)
COUNT = "predicted_count"
SIGNALS = (*NUMERIC, COUNT)
DESCRIPTIONS = {
    "brightness": "mean grey level (0-255) of the image the model sees",
    "contrast": "standard deviation of the grey levels",
    "sharpness": "variance of the Laplacian of the grey image at 128 px (blur lowers it)",
    "width": "width of the image received (pixels)",
    "height": "height of the image received (pixels)",
    "confidence": "probability of the predicted count",
    "predicted_count": "the count the endpoint answered",
}


def image_signals(data: bytes, formats: tuple[str, ...] | None = None) -> dict[str, float]:
    """Size, brightness, contrast, sharpness of one encoded image. Raises DataError when it cannot be decoded."""
    img = decode(data, STATS_SIZE, formats)
    width, height = _original_size(data, img)
    grey = np.asarray(img.convert("L").resize((STATS_SIZE, STATS_SIZE), Image.BILINEAR), dtype=np.float64)
    lap = (4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:])
    return {"brightness": float(grey.mean()), "contrast": float(grey.std()), "sharpness": float(lap.var()),
            "width": float(width), "height": float(height)}


def _original_size(data: bytes, decoded: Image.Image) -> tuple[int, int]:
    """The size in the header (JPEG draft decoding may have shrunk the decoded image)."""
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except (OSError, ValueError) as e:  # decoded once already: should not happen
        raise DataError(f"cannot read image header: {e}") from None


def answer_signals(answer: dict) -> dict[str, float | int] | None:
    """Predicted count and confidence of one endpoint answer ({"count", "probabilities", ...}); None when the
    answer is not one (an error body)."""
    try:
        count = int(answer["count"])
        probs = answer.get("probabilities") or {}
        confidence = float(probs.get(str(count), max(probs.values()))) if probs else None
    except (KeyError, TypeError, ValueError):
        return None
    out: dict[str, float | int] = {COUNT: count}
    if confidence is not None:
        out["confidence"] = confidence
    return out


def collect(rows: list[dict]) -> dict[str, list]:
    """Per-image signal dicts -> {signal: [values]} (a signal an image lacks is left out for that image)."""
    return {s: [r[s] for r in rows if r.get(s) is not None] for s in SIGNALS}
