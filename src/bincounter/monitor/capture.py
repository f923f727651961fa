"""SageMaker's data capture, read back: the JSONL files an endpoint with DataCaptureConfig writes to S3, for a time
window, decoded into images and answers.

Layout (SageMaker's): DEST/ENDPOINT/VARIANT/yyyy/mm/dd/hh/<mm-ss-mmm-uuid>.jsonl, the hour being when the file
was written (UTC); one line per captured request:

    {"captureData": {"endpointInput":  {"observedContentType": "image/jpeg", "mode": "INPUT",
                                        "data": "<base64>", "encoding": "BASE64"},
                     "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                                        "data": "{\\"count\\": 3, ...}", "encoding": "JSON"}},
     "eventMetadata": {"eventId": "<uuid>", "inferenceTime": "2026-12-07T08:15:02Z"}, "eventVersion": "0"}

`encoding` is BASE64 (the body's bytes) unless the content type is one of the capture config's JSON (JSON: the
body as text) or CSV types. Inputs: an image body (image/jpeg, image/png, application/x-image), or a JSON batch
({"instances": [<base64> | {"b64": <base64>}, ...]} or a list); outputs: one answer or {"predictions": [...]},
paired with the inputs by position. Requests are kept when their inferenceTime is in [since, until); the hour
folders listed are those from `since` to `until` plus one (a file is written up to minutes after its requests).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ..aws import aws_call
from ..errors import UserError

log = logging.getLogger("bincounter")
IMAGE_TYPES = {"image/jpeg": ("JPEG",), "image/png": ("PNG",), "application/x-image": ("JPEG", "PNG")}


@dataclass
class Window:
    """What a capture window held: (image bytes, PIL formats, answer or None) per image, and what was skipped.
    With a `sink`, each image goes to it as it is read and is not kept (`images` stays empty): the drift check
    measures it there and drops the bytes, so a long window never sits in memory."""

    images: list[tuple[bytes, tuple[str, ...], dict | None]] = field(default_factory=list)
    sink: Callable[[bytes, tuple[str, ...], dict | None], None] | None = None
    taken: int = 0  # images read (kept in `images` or handed to `sink`)
    records: int = 0
    files: int = 0
    errors: int = 0  # requests the endpoint answered with an error body
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> how many requests/images
    model_versions: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n

    def add(self, data: bytes, formats: tuple[str, ...], answer: dict | None) -> None:
        self.taken += 1
        if self.sink is not None:
            self.sink(data, formats, answer)
        else:
            self.images.append((data, formats, answer))


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (a trailing Z, or none: UTC) -> an aware UTC datetime."""
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"{text!r} is not a time (ISO 8601, e.g. 2026-12-07T08:00:00Z)") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _payload(part: dict) -> bytes:
    data, encoding = part.get("data", ""), str(part.get("encoding", "BASE64")).upper()
    if encoding == "BASE64":
        return base64.b64decode(data, validate=True)
    return data.encode() if isinstance(data, str) else json.dumps(data).encode()


def _media(part: dict) -> str:
    return str(part.get("observedContentType", "")).split(";")[0].strip().lower()


def decode_input(part: dict) -> list[tuple[bytes, tuple[str, ...]]]:
    """endpointInput -> [(image bytes, allowed formats)]. Raises ValueError for what cannot be read."""
    body, media = _payload(part), _media(part)
    if media in IMAGE_TYPES:
        return [(body, IMAGE_TYPES[media])]
    if media == "application/json":
        doc = json.loads(body)
        items = doc.get("instances") if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise ValueError("JSON input without instances")
        return [(base64.b64decode(x["b64"] if isinstance(x, dict) else x, validate=True), ("JPEG", "PNG"))
                for x in items]
    raise ValueError(f"content type {media or '?'} is no image")


def decode_output(part: dict) -> list[dict] | None:
    """endpointOutput -> one answer per image, or None for an error body."""
    doc = json.loads(_payload(part))
    if isinstance(doc, dict) and "error" in doc:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("predictions"), list):
        return doc["predictions"]
    return [doc]


def add_record(window: Window, line: str, since: datetime, until: datetime) -> None:
    """One JSONL line into `window` (when its inferenceTime is inside [since, until))."""
    try:
        rec = json.loads(line)
        when = parse_time(rec["eventMetadata"]["inferenceTime"])
        capture = rec["captureData"]
    except (ValueError, KeyError, TypeError, UserError):
        window.skip("unreadable capture line")
        return
    if not since <= when < until:
        return
    window.records += 1
    try:
        images = decode_input(capture["endpointInput"]) if "endpointInput" in capture else []
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        window.skip(f"input not an image request ({str(e)[:60]})")
        return
    answers: list | None = []
    if "endpointOutput" in capture:
        try:
            answers = decode_output(capture["endpointOutput"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            window.skip("unreadable output")
            answers = []
    if answers is None:
        window.errors += 1
        return
    if answers and len(answers) != len(images):
        window.skip("answers do not match the images")
        answers = []
    for i, (data, formats) in enumerate(images):
        answer = answers[i] if answers else None
        if isinstance(answer, dict) and answer.get("model_version"):
            v = str(answer["model_version"])
            window.model_versions[v] = window.model_versions.get(v, 0) + 1
        window.add(data, formats, answer if isinstance(answer, dict) else None)


def hour_prefixes(base: str, since: datetime, until: datetime, lag_hours: int = 1) -> list[str]:
    """base + yyyy/mm/dd/hh/ for every hour from since's to until's (+ lag_hours: files written after)."""
    t = since.replace(minute=0, second=0, microsecond=0)
    end = until + timedelta(hours=lag_hours)
    out = []
    while t < end:
        out.append(f"{base}{t:%Y/%m/%d/%H}/")
        t += timedelta(hours=1)
    return out


def split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or not uri[5:].split("/")[0]:
        raise UserError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    return bucket, (key.rstrip("/") + "/") if key else ""


def _keys(s3, bucket: str, prefix: str, delimiter: str | None = None):
    kw = {"Bucket": bucket, "Prefix": prefix, **({"Delimiter": delimiter} if delimiter else {})}
    for page in aws_call(f"listing s3://{bucket}/{prefix}", lambda: list(s3.get_paginator("list_objects_v2")
                                                                          .paginate(**kw))):
        if delimiter:
            yield from (p["Prefix"] for p in page.get("CommonPrefixes", []))
        else:
            yield from (o["Key"] for o in page.get("Contents", []))


def variants(s3, destination: str, endpoint: str) -> list[str]:
    """The variant folders the endpoint's capture holds (AllTraffic for a single-variant endpoint)."""
    bucket, prefix = split_s3(destination)
    return [p.rstrip("/").rsplit("/", 1)[-1] for p in _keys(s3, bucket, f"{prefix}{endpoint}/", "/")]


def read_window(s3, destination: str, endpoint: str, since: datetime, until: datetime,
                variant: str | None = None, max_images: int | None = None, window: Window | None = None) -> Window:
    """Every captured request of `endpoint` (one variant, or all) with inferenceTime in [since, until), read a
    line at a time into `window` (default: a new one that keeps the images; give one with a sink to stream)."""
    if until <= since:
        raise UserError(f"the window is empty: --until {until:%Y-%m-%dT%H:%M:%SZ} is not after --since "
                        f"{since:%Y-%m-%dT%H:%M:%SZ}")
    bucket, prefix = split_s3(destination)
    found = variants(s3, destination, endpoint)
    if variant and found and variant not in found:
        raise UserError(f"--variant {variant}: no capture of it under {destination.rstrip('/')}/{endpoint}/ "
                        f"(variants captured: {', '.join(found)})")
    names = [variant] if variant else found
    if not found:
        log.warning("no capture under %s%s/ (is data capture on? `sm deploy --capture-s3`)", destination, endpoint)
    window = Window() if window is None else window
    for name in names:
        for hour in hour_prefixes(f"{prefix}{endpoint}/{name}/", since, until):
            for key in _keys(s3, bucket, hour):
                if not key.endswith(".jsonl"):
                    continue
                window.files += 1
                body = aws_call(f"reading s3://{bucket}/{key}", s3.get_object, Bucket=bucket, Key=key)["Body"]
                for raw in body.iter_lines():
                    line = raw.decode("utf-8", "replace")
                    if line.strip():
                        add_record(window, line, since, until)
                    if max_images and window.taken >= max_images:
                        log.warning("stopped at --max-images %d captured images (in %s; later requests of the "
                                    "window not read)", max_images, key)
                        del window.images[max_images:]
                        return window
    return window
