"""The one definition of preprocessing, shared by training, evaluation and serving.

decode (PIL, JPEG draft mode; transparency composited over BACKGROUND) -> RGB -> resize to a square
`image_size` (bilinear; the whole bin stays in view, since cropping could cut items off and change the count)
-> float tensor -> normalise with the model's mean/std. Training adds random flips and mild colour jitter on
top (`augment`). The server calls `decode` + `to_array` exactly like the evaluation loader does: train/serve
parity. This module needs numpy and PIL only (the CPU serving image has no PyTorch); `to_tensor` wraps `to_array`.

Formats: serving decodes only what the request's content type names (`decode(..., formats=("JPEG",))` for
image/jpeg, PNG for image/png, either for application/x-image and JSON batches), so an upload never reaches the
TIFF, DDS, ICO... decoders. Training data may be any format PIL opens (ABID is JPEG; `data split` checks every
file once): it is the operator's own data, not the internet's. Either way `decode` raises only DataError for a
file it cannot read, whatever the decoder raised (TypeError from a fuzzed TIFF, struct.error from a corrupt EXIF
orientation entry, NotImplementedError from a DDS...): serving answers that request 400, training and
`data split` count and skip the file.

Transparency (RGBA, LA, a palette or colour key with transparent entries) is composited over one fixed
BACKGROUND, mid-grey (128, 128, 128), before RGB, here and so for training and serving alike. Mid-grey because
after normalisation it is close to zero input (the ImageNet mean is ~(124, 116, 104)): transparent pixels carry
almost no signal, where white or black would look like a bright or dark surface to the network.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from .errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Refuse anything larger than this before decoding it (decompression bombs, 100-megapixel uploads).
MAX_PIXELS = 40_000_000
#: what transparent pixels are composited over (see the module docstring)
BACKGROUND = (128, 128, 128)


@dataclass(frozen=True)
class Preprocess:
    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "resize": "bilinear-squash", "decode": "PIL-draft"}

    def load(self, source: str | bytes, formats: tuple[str, ...] | None = None) -> Image.Image:
        """Decode a file path or encoded bytes to an RGB image already resized to the model's input. `formats`:
        the PIL formats allowed (None: any)."""
        img = decode(source, self.image_size, formats)
        if img.size != (self.image_size, self.image_size):
            img = img.resize((self.image_size, self.image_size), Image.BILINEAR)
        return img

    def to_array(self, img: Image.Image) -> np.ndarray:
        """float32 (3, H, W), normalised with the model's mean/std: what both runtimes are fed."""
        arr = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        return np.ascontiguousarray((arr - mean) / std)

    def to_tensor(self, img: Image.Image):
        import torch

        return torch.from_numpy(self.to_array(img))

    def __call__(self, source: str | bytes, formats: tuple[str, ...] | None = None) -> np.ndarray:
        """Decode + resize + normalise: float32 (3, H, W)."""
        return self.to_array(self.load(source, formats))


def decode(source: str | bytes, target: int, formats: tuple[str, ...] | None = None) -> Image.Image:
    """Decode an image fully (truncation is detected here, not later) and return it in RGB. `formats`: the PIL
    format names allowed ("JPEG", "PNG"); None allows any. Raises DataError (one line) for anything it cannot
    read, whatever the decoder raised; only MemoryError (the machine's state, not the file's) passes through.

    JPEG draft mode lets libjpeg scale by 1/2, 1/4 or 1/8 while decoding, never below `target`, which makes
    decoding several times faster for large photos; it is deterministic, so training and serving agree.
    """
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        try:
            img = Image.open(fp, formats=list(formats) if formats is not None else None)
        except Image.UnidentifiedImageError:
            if formats is None:
                raise
            raise DataError(f"cannot decode image: not a {' or '.join(formats)} file") from None
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise DataError(f"image is {w}x{h} = {w * h / 1e6:.0f} megapixels, over the "
                            f"{MAX_PIXELS / 1e6:.0f} MP limit")
        if img.format == "JPEG":
            img.draft("RGB", (target, target))
        img = ImageOps.exif_transpose(img) if "exif" in img.info else img
        img = _to_rgb(img)
        img.load()
        return img
    except (DataError, MemoryError):
        raise
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise DataError(f"cannot decode image: {e}") from None
    except struct.error as e:
        raise DataError(f"cannot decode image: corrupt header or metadata ({e})") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is the file's (TypeError, NotImplementedError...)
        raise DataError(f"cannot decode image: {type(e).__name__}: {e}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with transparency composited over BACKGROUND and images of more than 8 bits per channel scaled
    down first: PIL's own convert("RGB") clips a 16-bit PNG ("I;16") or a 32-bit one ("I", "F") at 255, which
    makes almost every pixel white, and drops alpha, which reads a transparent pixel as its hidden colour."""
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode in ("P", "L", "RGB") and
                                                          "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        if img.mode.startswith("I;16"):
            arr8 = (arr.astype(np.float32) / 257.0)  # 0..65535 -> 0..255
        else:  # 32-bit int or float: no fixed range, so stretch what is there
            arr = arr.astype(np.float64)
            finite = np.isfinite(arr)
            lo, hi = (arr[finite].min(), arr[finite].max()) if finite.any() else (0.0, 1.0)
            if img.mode == "I" and lo >= 0 and hi <= 65535:
                lo, hi = 0.0, (255.0 if hi <= 255 else 65535.0)
            arr8 = (np.nan_to_num(arr, nan=lo) - lo) * (255.0 / max(hi - lo, 1e-12))
        img = Image.fromarray(np.clip(np.rint(arr8), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Training-only augmentation that never changes the item count: the 8 flips/quarter-turns of the
    square input, and mild brightness/contrast."""
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_TOP_BOTTOM)
    if rng.random() < 0.5:
        img = img.transpose(Image.ROTATE_90)
    arr = np.asarray(img, dtype=np.float32)
    gain = rng.uniform(0.8, 1.2)
    bias = rng.uniform(-20, 20)
    arr = np.clip(arr * gain + bias, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)
