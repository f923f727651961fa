"""The /invocations protocol, independent of any server (unit-testable), and `answer_batch`, which answers
the requests MMS hands a worker at once (dynamic batching) with one forward pass.

Requests
  image/jpeg | image/png | application/x-image   one image, body = the encoded file: a JPEG, a PNG, either
  application/json    {"instances": [<base64>, ...]} or [<base64>, ...]; an item may also be {"b64": <base64>},
                      each a JPEG or a PNG
  Only those formats are decoded (a TIFF sent as image/jpeg is a 400, never opened as a TIFF).
  Accept: absent, */*, application/* or application/json; anything that excludes JSON is a 406.
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
import traceback

log = logging.getLogger("bincounter.serving")

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
JSON_TYPE = "application/json"
#: the PIL formats each content type may hold; JSON batch items: JPEG or PNG
FORMATS = {"image/jpeg": ("JPEG",), "image/png": ("PNG",), "application/x-image": ("JPEG", "PNG"),
           JSON_TYPE: ("JPEG", "PNG")}
#: media ranges of an Accept header that JSON answers satisfy
_JSON_RANGES = ("*/*", "application/*", JSON_TYPE)
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


def check_accept(accept: str | None) -> None:
    """RequestError(406) when the Accept header excludes application/json (every answer is JSON): no header,
    */*, application/* and application/json (q > 0) pass, anything else does not."""
    if accept is None or not accept.strip():
        return
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for p in params:
            name, _, value = p.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media.lower() in _JSON_RANGES and q > 0:
            return
    raise RequestError(406, f"cannot answer with Accept: {accept.strip()[:200]!r}; this endpoint answers "
                            f"{JSON_TYPE} only")


def formats_for(content_type: str | None) -> tuple[str, ...]:
    """The PIL formats a request of this content type may hold (its images are decoded as nothing else)."""
    return FORMATS.get(media_type(content_type), ("JPEG", "PNG"))


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def precheck(body: bytes, content_type: str | None) -> None:
    """Cheap checks the front does before a request reaches a model worker."""
    ctype = media_type(content_type)
    if ctype not in IMAGE_TYPES and ctype != JSON_TYPE:
        what = f"unsupported content type {content_type!r}" if content_type else "no Content-Type header"
        raise RequestError(415, f"{what}; use one of "
                                f"{', '.join(IMAGE_TYPES + (JSON_TYPE,))}")
    if not body:
        raise RequestError(400, "empty request body")
    if ctype == JSON_TYPE:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(400, "malformed JSON: body is not UTF-8") from None


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
    except RecursionError:  # [[[[...: json's recursion guard, not a crash
        raise RequestError(400, "malformed JSON: nested too deeply") from None
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


def image_pixels(data: bytes, formats: tuple[str, ...] | None = None) -> int | None:
    """Width x height read from the image header (nothing is decoded) of an image in one of `formats` (None:
    any); None when PIL cannot identify it as one (the decoder reports that). An image past PIL's
    decompression-bomb bound counts as over every limit."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=list(formats) if formats is not None else None) as img:
            w, h = img.size
        return w * h
    except Image.DecompressionBombError:
        return 2**62
    except Exception:  # noqa: BLE001 - unreadable: preprocessing gives the 400 with its reason
        return None


def check_pixels(images: list[bytes], is_batch: bool, formats: tuple[str, ...] | None = None) -> None:
    """413 for an image over preprocess.MAX_PIXELS or a request over MAX_REQUEST_PIXELS, before decoding."""
    from ..preprocess import MAX_PIXELS

    total = 0
    for i, b in enumerate(images):
        px = image_pixels(b, formats) or 0
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


def answer_batch(model, requests: list[tuple]) -> list[tuple[int, bytes]]:
    """Answer several /invocations requests with ONE forward pass over all their images.

    `model` is a `Predictor` or an `OnnxPredictor` (preprocess / forward / format: the runtime is the only
    difference; forward caps its own pass at BINCOUNTER_MAX_FORWARD_BATCH images). Each request is (body,
    content type) or (body, content type, Accept); each answer is (HTTP status, JSON body), in order.

    Every request stands alone: a bad one (malformed, an image it may not hold or that does not decode, too
    many pixels, an Accept other than JSON) gets its own 4xx; an unexpected error while preparing one is logged
    with its traceback and answers that one 500. If the shared forward pass fails (a CUDA OOM, an input the
    model cannot run), the requests are run again one by one, so only a request that fails on its own gets the
    500. The pixel bounds are checked on every image of a request before any of them is decoded."""
    answers: list[tuple[int, bytes] | None] = [None] * len(requests)
    prepared = []  # (request index, is_batch, [arrays])
    for r, req in enumerate(requests):
        try:
            prepared.append((r, *prepare(model, *req)))
        except RequestError as e:
            answers[r] = (e.status, e.body())
        except Exception:  # noqa: BLE001 - a bug, not the client's fault: this request only, trace in the log
            log.error("request %d of %d failed before inference: %s", r + 1, len(requests), traceback.format_exc())
            answers[r] = (500, error_body(500, "internal error while reading the request (see the endpoint log)"))
    shared_failure = None
    if len(prepared) > 1:
        try:
            _infer(model, prepared, answers)
            prepared = []
        except Exception as e:  # noqa: BLE001 - whose request is it? one forward pass per request tells
            shared_failure = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    if shared_failure:
        log.warning("forward pass over %d requests failed (%s); answering them one by one", len(prepared),
                    shared_failure)
    for p in prepared:
        try:
            _infer(model, [p], answers)
        except Exception:  # noqa: BLE001 - this request's own failure: its 500, the trace in the log
            log.error("inference failed for request %d of %d: %s", p[0] + 1, len(requests), traceback.format_exc())
            answers[p[0]] = (500, error_body(500, "internal error during inference (see the endpoint log)"))
    if len(requests) > 1 and not shared_failure:
        log.debug("answered %d requests in one forward pass", len(requests))
    return answers  # type: ignore[return-value]


def prepare(model, body: bytes | str | None, content_type: str | None, accept: str | None = None) -> tuple:
    """One request -> (is_batch, [preprocessed images]), or RequestError with its 4xx."""
    from ..errors import DataError

    check_accept(accept)
    images, is_batch = parse_request(body, content_type)
    formats = formats_for(content_type)
    check_pixels(images, is_batch, formats)
    arrays = []
    for i, b in enumerate(images):
        try:
            arrays.append(model.preprocess(b, formats))
        except DataError as e:
            status = 413 if "megapixels" in str(e) else 400
            message = clean_message(str(e))
            raise RequestError(status, f"instance {i}: {message}" if is_batch else message) from None
    return is_batch, arrays


def _infer(model, prepared: list[tuple], answers: list) -> None:
    import numpy as np

    predictions = model.format(model.forward(np.stack([a for _, _, arrays in prepared for a in arrays])))
    start = 0
    for r, is_batch, arrays in prepared:
        answers[r] = (200, format_response(predictions[start:start + len(arrays)], is_batch))
        start += len(arrays)
