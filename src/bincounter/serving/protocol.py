"""The /invocations protocol, independent of any server (unit-testable), and `answer_batch`, which answers
the requests MMS hands a worker at once (dynamic batching) with one forward pass.

Requests
  image/jpeg | image/png | application/x-image   one image, body = the encoded file
  application/json    {"instances": [<base64>, ...]} or [<base64>, ...]; an item may also be {"b64": <base64>}
Responses (application/json)
  one image:   {"count": 3, "probabilities": {"1": .., "5": ..}, "model_version": "ab12cd34ef56"}
  JSON batch:  {"predictions": [<as above>, ...]}
  errors:      {"error": "<one line>", "status": 4xx|5xx}; in a JSON batch the message names the instance
               ("instance 2: cannot decode image: ...")
Limits: at most MAX_BATCH images per request; an image over preprocess.MAX_PIXELS, or a request whose images
hold more than MAX_REQUEST_PIXELS together, is refused with 413 from the image headers, before any decoding.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import re

log = logging.getLogger("bincounter.serving")

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
JSON_TYPE = "application/json"
MAX_BATCH = 64
#: decoded pixels per request, all its images together: one 6 MB JSON batch of highly compressible 40 MP PNGs
#: would otherwise cost minutes of CPU. 100 MP is ~3 s of decoding on one core.
MAX_REQUEST_PIXELS = 100_000_000


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> bytes:
        return error_body(self.status, self.message)


def error_body(status: int, message: str) -> bytes:
    return json.dumps({"error": message, "status": status}).encode()


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def precheck(body: bytes, content_type: str | None) -> None:
    """Cheap checks the front does before a request reaches a model worker."""
    ctype = media_type(content_type)
    if ctype not in IMAGE_TYPES and ctype != JSON_TYPE:
        raise RequestError(415, f"unsupported content type {content_type!r}; use one of "
                                f"{', '.join(IMAGE_TYPES + (JSON_TYPE,))}")
    if not body:
        raise RequestError(400, "empty request body")
    if ctype == JSON_TYPE:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(400, "malformed JSON: body is not UTF-8") from None


def check_accept(accept: str | None) -> None:
    """406 unless the client accepts JSON (no Accept header, */*, application/*, application/json)."""
    if not accept or not accept.strip():
        return
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        refused = "q=0" in params.replace(" ", "").split(";")
        if media.strip().lower() in ("*/*", "application/*", JSON_TYPE) and not refused:
            return
    raise RequestError(406, f"cannot answer in {accept!r}: answers are application/json")


def parse_request(body: bytes | str | None, content_type: str | None) -> tuple[list[bytes], bool]:
    """-> (encoded images, is_batch). Raises RequestError(4xx) for anything malformed."""
    if isinstance(body, str):
        body = body.encode()
    precheck(body or b"", content_type)
    ctype = media_type(content_type)
    if ctype in IMAGE_TYPES:
        return [bytes(body)], False
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"malformed JSON: {e}") from None
    items = doc.get("instances") if isinstance(doc, dict) else doc
    if not isinstance(items, list) or not items:
        raise RequestError(400, 'JSON body must be {"instances": [<base64 image>, ...]} (non-empty)')
    if len(items) > MAX_BATCH:
        raise RequestError(413, f"batch of {len(items)} images is over the limit of {MAX_BATCH}")
    images = []
    for i, item in enumerate(items):
        b64 = item.get("b64") if isinstance(item, dict) else item
        if not isinstance(b64, str):
            raise RequestError(400, f"instance {i}: expected a base64 string or {{\"b64\": ...}}")
        try:
            images.append(base64.b64decode(b64, validate=True))
        except (binascii.Error, ValueError):
            raise RequestError(400, f"instance {i}: invalid base64") from None
    return images, True


def image_pixels(data: bytes) -> int | None:
    """Width x height read from the image header (nothing is decoded); None when PIL cannot identify it (the
    decoder reports that). An image past PIL's decompression-bomb bound counts as over every limit."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
        return w * h
    except Image.DecompressionBombError:
        return 2**62
    except Exception:  # noqa: BLE001 - unreadable: preprocessing gives the 400 with its reason
        return None


def check_pixels(images: list[bytes], is_batch: bool) -> None:
    """413 for an image over preprocess.MAX_PIXELS or a request over MAX_REQUEST_PIXELS, before decoding."""
    from ..preprocess import MAX_PIXELS

    total = 0
    for i, b in enumerate(images):
        px = image_pixels(b) or 0
        where = f"instance {i}: " if is_batch else ""
        if px > MAX_PIXELS:
            size = f"{px / 1e6:.0f} megapixels" if px < 2**62 else "too many pixels to open"
            raise RequestError(413, f"{where}image is {size}, over the {MAX_PIXELS / 1e6:.0f} MP limit")
        total += px
        if total > MAX_REQUEST_PIXELS:
            raise RequestError(413, f"the images of this request hold more than {MAX_REQUEST_PIXELS / 1e6:.0f} "
                                    f"megapixels together (limit per request; send fewer or smaller images)")


_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def clean_message(message: str) -> str:
    """A decoder's message without Python object reprs (PIL names the `<_io.BytesIO object at 0x...>`)."""
    return _OBJECT_REPR.sub("", message).strip()


def format_response(predictions: list[dict], is_batch: bool) -> bytes:
    return json.dumps({"predictions": predictions} if is_batch else predictions[0]).encode()


def answer_batch(model, requests: list[tuple[bytes | str | None, str | None]]) -> list[tuple[int, bytes]]:
    """Answer several /invocations requests with ONE forward pass over all their images.

    `model` is a `Predictor` or an `OnnxPredictor` (preprocess / forward / format: the runtime is the only
    difference). Each request is (body, content type); each
    answer is (HTTP status, JSON body), in order. A bad request (malformed, undecodable image, too many
    pixels) gets its own 4xx and does not affect the others; the pixel bounds are checked on every image of a
    request before any of them is decoded."""
    from ..errors import DataError

    answers: list[tuple[int, bytes] | None] = [None] * len(requests)
    tensors, owners = [], []  # owners[i]: (request index, is_batch, number of images)
    for r, (body, ctype) in enumerate(requests):
        try:
            images, is_batch = parse_request(body, ctype)
            check_pixels(images, is_batch)
            mine = []
            for i, b in enumerate(images):
                try:
                    mine.append(model.preprocess(b))
                except DataError as e:
                    status = 413 if "megapixels" in str(e) else 400
                    message = clean_message(str(e))
                    raise RequestError(status, f"instance {i}: {message}" if is_batch else message) from None
        except RequestError as e:
            answers[r] = (e.status, e.body())
            continue
        tensors += mine
        owners.append((r, is_batch, len(mine)))
    if tensors:
        import numpy as np

        predictions = model.format(model.forward(np.stack(tensors)))
        start = 0
        for r, is_batch, n in owners:
            answers[r] = (200, format_response(predictions[start:start + n], is_batch))
            start += n
    if len(requests) > 1:
        log.debug("answered %d requests (%d images) in one forward pass", len(requests), len(tensors))
    return answers  # type: ignore[return-value]
