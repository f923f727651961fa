"""Hostile images, built for real with PIL: files a decoder raises on with something other than OSError/ValueError
(issue 21, item 5), formats we refuse, and transparent PNGs (item 6)."""

from __future__ import annotations

import io
import struct

from PIL import Image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def jpeg(size=(40, 30), color=(90, 120, 60)) -> bytes:
    return encode(Image.new("RGB", size, color), "JPEG")


def png(size=(40, 30), color=(90, 120, 60)) -> bytes:
    return encode(Image.new("RGB", size, color), "PNG")


def tiff(size=(40, 30), color=(90, 120, 60)) -> bytes:
    return encode(Image.new("RGB", size, color), "TIFF")


def bmp(size=(40, 30), color=(90, 120, 60)) -> bytes:
    return encode(Image.new("RGB", size, color), "BMP")


def exif_poison_jpeg(size=(40, 30), color=(90, 120, 60)) -> bytes:
    """A valid JPEG whose EXIF says "rotate" (Orientation 6) next to an InteropIFD entry of the wrong type:
    `ImageOps.exif_transpose` rotates, then fails to write the EXIF back with `struct.error`."""
    entries = [struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0),  # Orientation, SHORT, 1 value: 6
               struct.pack("<HHII", 0xA005, 7, 2, 6)]      # InteropIFD, UNDEFINED x 2 (should be a LONG offset)
    tiff_block = b"II*\x00" + struct.pack("<IH", 8, len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    return encode(Image.new("RGB", size, color), "JPEG", exif=b"Exif\x00\x00" + tiff_block)


def dds_unimplemented() -> bytes:
    """A 4x4 DDS with a pixel format PIL does not implement: `Image.open` raises NotImplementedError."""
    hdr = bytearray(128)
    hdr[0:4] = b"DDS "
    struct.pack_into("<IIIIIII", hdr, 4, 124, 0x1007, 4, 4, 0, 0, 0)  # size, flags, height, width, ...
    struct.pack_into("<II4s", hdr, 76, 32, 0x4, b"XYZW")  # pixel format: size, DDPF_FOURCC, an unknown FourCC
    return bytes(hdr) + bytes(64)


def transparent(mode: str, size=(40, 30)) -> bytes:
    """A PNG of pure red that is fully transparent, in `mode`: RGBA, LA, P (palette with a transparent
    index) or RGB (a tRNS colour key)."""
    if mode == "RGBA":
        return encode(Image.new("RGBA", size, (255, 0, 0, 0)), "PNG")
    if mode == "LA":
        return encode(Image.new("LA", size, (255, 0)), "PNG")
    if mode == "P":
        img = Image.new("P", size, 0)
        img.putpalette([255, 0, 0] + [0, 0, 0] * 255)
        return encode(img, "PNG", transparency=0)
    if mode == "RGB":
        return encode(Image.new("RGB", size, (255, 0, 0)), "PNG", transparency=(255, 0, 0))
    raise ValueError(mode)
