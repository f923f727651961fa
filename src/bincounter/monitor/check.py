"""One drift check, what `bincounter sm monitor` and `IMAGE process monitor` both run: a baseline and an
endpoint's captured window -> the signals of every captured image -> drift.compare -> drift.json + drift.html ->
an exit code (EXIT)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from ..errors import DataError, UserError
from . import drift, report, signals
from .capture import Window, parse_time, read_window

log = logging.getLogger("bincounter")
EXIT = {"ok": 0, "drift": 1, "insufficient_data": 3}
#: inside a Processing job (`process monitor`) only drift fails the job: a quiet window is no alert
JOB_EXIT = {"ok": 0, "drift": 1, "insufficient_data": 0}


def window_bounds(since: str, until: str | None, now: datetime | None = None) -> tuple[datetime, datetime]:
    """--since (a time, or a duration before --until: 90m, 24h, 7d) and --until (a time; default now)."""
    end = parse_time(until) if until else (now or datetime.now(UTC))
    s = since.strip()
    if s[:-1].isdigit() and s[-1:] in ("m", "h", "d"):
        unit = {"m": "minutes", "h": "hours", "d": "days"}[s[-1]]
        return end - timedelta(**{unit: int(s[:-1])}), end
    return parse_time(s), end


class Measure:
    """A Window's sink: the signals of each captured image as it is read (its bytes then dropped); an image that
    cannot be decoded is counted as skipped in the window."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.window = Window(sink=self)

    def __call__(self, data: bytes, formats: tuple[str, ...], answer: dict | None) -> None:
        try:
            row = signals.image_signals(data, formats)
        except DataError:
            self.window.skip("image not decodable")
            return
        self.rows.append({**row, **((signals.answer_signals(answer) or {}) if answer else {})})


def measure(window: Window) -> dict[str, list]:
    """The signals of every image a window kept (a window read with a Measure sink: the rows it measured)."""
    if isinstance(window.sink, Measure):
        return signals.collect(window.sink.rows)
    m = Measure()
    for image in window.images:
        m(*image)
    for reason, n in m.window.skipped.items():
        window.skip(reason, n)
    return signals.collect(m.rows)


def parse_thresholds(items: list[str]) -> dict[str, float]:
    """["brightness=0.3", "predicted_count=0.001"] -> {signal: value}."""
    out = {}
    for item in items or []:
        name, _, value = item.partition("=")
        if name not in drift.DEFAULT_THRESHOLDS:
            raise UserError(f"--threshold {item}: unknown signal {name!r} (one of {', '.join(signals.SIGNALS)})")
        try:
            out[name] = float(value)
        except ValueError:
            raise UserError(f"--threshold {item}: {value!r} is not a number") from None
    return out


def judge(baseline: dict, window: Window, meta: dict, out_dir, thresholds: dict | None = None,
          min_samples: int = 100, exits: dict | None = None) -> dict:
    """Compare, write drift.json + drift.html into out_dir -> the verdict (with its "exit_code", from `exits`:
    EXIT, or JOB_EXIT inside a Processing job)."""
    values = measure(window)
    verdict = drift.compare(baseline, values, thresholds, min_samples)
    notes = []
    others = sorted(set(window.model_versions) - {baseline.get("model_version")})
    if others:
        notes.append(f"answers in the window come from model(s) {', '.join(others)}, the baseline from "
                     f"{baseline.get('model_version')}: the output signals compare different models")
    if verdict["status"] == "insufficient_data":
        notes.append(f"only {verdict['n_window']} captured images in the window (--min-samples "
                     f"{min_samples}): no verdict")
    src = baseline.get("source", {})
    verdict = {**meta, **verdict, "exit_code": (exits or EXIT)[verdict["status"]], "notes": notes,
               "baseline": {"model_version": baseline.get("model_version"), "images": src.get("images"),
                            "created": baseline.get("created")},
               "window": {**meta.get("window", {}), "records": window.records, "files": window.files,
                          "errors": window.errors, "skipped": window.skipped, "model_versions": window.model_versions}}
    j, h = report.write(verdict, out_dir)
    for n in notes:
        log.warning("%s", n)
    log.info("drift verdict: %s -> %s, %s", verdict["status"], j, h)
    return verdict


def run(s3, baseline: dict, destination: str, endpoint: str, since: datetime, until: datetime, out_dir,
        variant: str | None = None, thresholds: dict | None = None, min_samples: int = 100,
        max_images: int | None = None, exits: dict | None = None) -> dict:
    """Read the window from S3, measuring each image as it comes (never holding the window's bytes), and judge
    it."""
    window = read_window(s3, destination, endpoint, since, until, variant, max_images, Measure().window)
    meta = {"endpoint": endpoint, "window": {"since": f"{since:%Y-%m-%dT%H:%M:%SZ}",
                                             "until": f"{until:%Y-%m-%dT%H:%M:%SZ}", "capture": destination,
                                             "variant": variant}}
    return judge(baseline, window, meta, out_dir, thresholds, min_samples, exits)


def report_prefix(report_s3: str, endpoint: str, until: datetime) -> str:
    """Where a run's drift.json + drift.html go under --report-s3: PREFIX/ENDPOINT/UNTIL/ (UNTIL as
    2026-12-07T12:00:00Z), one layout for a run by hand and a scheduled one, so a prefix listing is the endpoint's
    history in time order."""
    tail = f"{endpoint}/{until:%Y-%m-%dT%H:%M:%SZ}"
    base = report_s3.rstrip("/")
    if base.endswith("/" + tail):  # a schedule made before this layout passes the full path itself
        return base + "/"
    return f"{base}/{tail}/"


def upload(s3, paths, uri: str) -> list[str]:
    """drift.json + drift.html under the s3:// prefix `uri` -> their URIs."""
    from ..aws import aws_call
    from .capture import split_s3

    bucket, prefix = split_s3(uri)
    out = []
    for p in paths:
        ctype = "text/html" if p.suffix == ".html" else "application/json"
        aws_call(f"uploading to {uri}", s3.put_object, Bucket=bucket, Key=prefix + p.name, Body=p.read_bytes(),
                 ContentType=ctype)
        out.append(f"s3://{bucket}/{prefix}{p.name}")
    return out


def summary_line(verdict: dict) -> str:
    """The one line a failed Processing job shows as its reason, and the CLI's last log line."""
    if verdict["status"] == "drift":
        parts = [f"{r['signal']} {'p' if r['statistic'] == 'chi2_p' else 'PSI'} {r['value']:.3g}"
                 for r in verdict["signals"] if r["drift"]]
        return f"drift on {verdict.get('endpoint')}: {', '.join(parts)} ({verdict['n_window']} images)"
    if verdict["status"] == "insufficient_data":
        return (f"no verdict on {verdict.get('endpoint')}: {verdict['n_window']} captured images, "
                f"--min-samples {verdict['min_samples']}")
    return f"no drift on {verdict.get('endpoint')} ({verdict['n_window']} images)"
