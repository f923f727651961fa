"""The /invocations protocol, independent of any server (unit-testable), and `answer_batch`, which answers
the requests MMS hands a worker at once (dynamic batching) with one forward pass.

Requests
  image/jpeg | image/png | application/x-image   one image, body = the encoded file
  application/json    {"instances": [<base64>, ...]} or [<base64>, ...]; an item may also be {"b64": <base64>}
Responses (application/json)
  one image:   {"count": 3, "probabilities": {"1": .., "5": ..}, "model_version": "ab12cd34ef56"}
  JSON batch:  {"predictions": [<as above>, ...]}
  errors:      {"error": "<one line>", "status": 4xx|5xx}
"""

from __future__ import annotations

import base64
import binascii
import json
import logging

log = logging.getLogger("bincounter.serving")

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
JSON_TYPE = "application/json"
MAX_BATCH = 64


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


def format_response(predictions: list[dict], is_batch: bool) -> bytes:
    return json.dumps({"predictions": predictions} if is_batch else predictions[0]).encode()


def answer_batch(model, requests: list[tuple[bytes | str | None, str | None]]) -> list[tuple[int, bytes]]:
    """Answer several /invocations requests with ONE forward pass over all their images.

    `model` is a `Predictor` (preprocess / forward / format). Each request is (body, content type); each
    answer is (HTTP status, JSON body), in order. A bad request (malformed, undecodable image, too many
    pixels) gets its own 4xx and does not affect the others."""
    from ..errors import DataError

    answers: list[tuple[int, bytes] | None] = [None] * len(requests)
    tensors, owners = [], []  # owners[i]: (request index, is_batch, number of images)
    for r, (body, ctype) in enumerate(requests):
        try:
            images, is_batch = parse_request(body, ctype)
            mine = []
            for i, b in enumerate(images):
                try:
                    mine.append(model.preprocess(b))
                except DataError as e:
                    status = 413 if "megapixels" in str(e) else 400
                    raise RequestError(status, f"instance {i}: {e}" if is_batch else str(e)) from None
        except RequestError as e:
            answers[r] = (e.status, e.body())
            continue
        tensors += mine
        owners.append((r, is_batch, len(mine)))
    if tensors:
        import torch

        predictions = model.format(model.forward(torch.stack(tensors)))
        start = 0
        for r, is_batch, n in owners:
            answers[r] = (200, format_response(predictions[start:start + n], is_batch))
            start += n
    if len(requests) > 1:
        log.debug("answered %d requests (%d images) in one forward pass", len(requests), len(tensors))
    return answers  # type: ignore[return-value]
