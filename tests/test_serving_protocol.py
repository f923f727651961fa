"""What a worker answers (serving/protocol.answer_batch) for images it must refuse: the instance named in a
batch's error, and the pixel bounds (per image and per request) checked on headers before anything is decoded."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
import torch
from PIL import Image

from bincounter.preprocess import MAX_PIXELS, Preprocess
from bincounter.serving.protocol import MAX_REQUEST_PIXELS, answer_batch, clean_message


class FakeModel:
    """The Predictor interface answer_batch uses, with the real preprocessing and a counting decoder."""

    def __init__(self):
        self.pre = Preprocess(32)
        self.decoded = 0

    def preprocess(self, data: bytes, formats=None) -> torch.Tensor:
        self.decoded += 1
        return self.pre(data, formats)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.full((len(batch), 5), 0.2)

    def format(self, probs: torch.Tensor) -> list[dict]:
        return [{"count": 1} for _ in range(len(probs))]


def jpeg(size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 60)).save(buf, format="JPEG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (its pixel data is a tiny valid stream: never reached)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def batch(*images: bytes) -> tuple[bytes, str]:
    return json.dumps({"instances": [base64.b64encode(b).decode() for b in images]}).encode(), "application/json"


def test_a_corrupt_image_in_a_batch_is_named_by_its_index_without_object_reprs():
    """Issue 12, item 10: the message carried `<_io.BytesIO object at 0x...>`."""
    [(status, body)] = answer_batch(FakeModel(), [batch(jpeg(), b"\x89PNG garbage", jpeg())])
    doc = json.loads(body)
    assert status == 400 and doc["status"] == 400
    assert doc["error"].startswith("instance 1: cannot decode image") and " at 0x" not in doc["error"], doc
    [(status, body)] = answer_batch(FakeModel(), [(b"not an image", "image/jpeg")])
    assert status == 400 and "object at" not in json.loads(body)["error"]
    assert clean_message("cannot identify image file <_io.BytesIO object at 0x7f3a2c1e5f30>") == \
        "cannot identify image file"


@pytest.mark.parametrize("width, height", [(8_000, 6_000),     # 48 MP: over bincounter's 40 MP
                                           (20_000, 10_000)])  # 200 MP: past PIL's decompression-bomb error
def test_an_image_over_the_pixel_limit_is_413_before_decoding(width, height):
    """Issue 12, minor: images over 179 MP (PIL's bomb error) got 400, not the documented 413."""
    assert width * height > MAX_PIXELS
    model = FakeModel()
    [(status, body)] = answer_batch(model, [(png_header(width, height), "image/png")])
    assert status == 413 and json.loads(body)["status"] == 413, body
    assert model.decoded == 0


def test_decoded_pixels_are_bounded_per_request_not_only_per_image():
    """Issue 12, minor: one JSON batch of 35 compressible 40 MP PNGs cost ~90 s of CPU. Each image here is
    under the per-image limit; together they are over the per-request one, and nothing is decoded."""
    each = png_header(5_000, 6_000)  # 30 MP
    n = MAX_REQUEST_PIXELS // 30_000_000 + 1
    model = FakeModel()
    [(status, body)] = answer_batch(model, [batch(*[each] * n)])
    assert status == 413 and "per request" in json.loads(body)["error"], body
    assert model.decoded == 0
    # the same request with fewer images passes the bound (and fails later, at decoding, with a 400)
    [(status, _)] = answer_batch(model, [batch(*[each] * (n - 1))])
    assert status == 400


def test_a_good_batch_is_still_answered():
    model = FakeModel()
    [(status, body)] = answer_batch(model, [batch(jpeg(), jpeg((300, 200)))])
    assert status == 200 and len(json.loads(body)["predictions"]) == 2 and model.decoded == 2
