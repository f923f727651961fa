"""`sm collect JOB --csv FILE` (and `sm batch --collect FILE`): gather a batch transform job's
results into one CSV.

SageMaker writes one `<output>/<key below the input prefix>.out` per input object; with bincounter's server each
holds the JSON answer for one image ({"count", "probabilities": {"1": ..}, "model_version", ...}). The CSV has one
row per `.out` file, sorted by image: image (its s3:// URI), count, expected_count, p1..p5, model_version, and
error (an `.out` that is not a prediction, e.g. an error body, keeps its first 200 characters there).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from .. import COUNTS, aws
from ..errors import UserError

log = logging.getLogger("bincounter")
COLUMNS = ["image", "count", "expected_count", *[f"p{c}" for c in COUNTS], "model_version", "error"]


def _row(image: str, body: bytes) -> dict:
    row = {"image": image}
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or "count" not in doc:
        row["error"] = body.decode("utf-8", "replace").strip()[:200]
        return row
    row["count"] = doc["count"]
    row["expected_count"] = doc.get("expected_count")
    for k, p in (doc.get("probabilities") or {}).items():
        if f"p{k}" in COLUMNS:
            row[f"p{k}"] = p
    row["model_version"] = doc.get("model_version")
    return row


def collect(sm, s3, job: str, region: str, out_csv: str | Path) -> dict:
    from ..data.s3 import parse_s3_uri
    from . import follow

    d = follow.find(sm, job, "transform", region)[1]
    status = d.get("TransformJobStatus")
    if status != "Completed":
        log.warning("transform job %s is %s: collecting the results written so far", job, status)
    in_uri = d["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
    out_bucket, out_prefix = parse_s3_uri(d["TransformOutput"]["S3OutputPath"])
    out_prefix = f"{out_prefix}/" if out_prefix else ""
    rows = []
    with aws.user_errors("S3"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=out_bucket, Prefix=out_prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if not key.endswith(".out"):
                    continue
                rel = key[len(out_prefix):-len(".out")]
                body = s3.get_object(Bucket=out_bucket, Key=key)["Body"].read()
                rows.append(_row(f"{in_uri.rstrip('/')}/{rel}", body))
    if not rows:
        raise UserError(f"transform job {job} ({status}) has no .out files under "
                        f"s3://{out_bucket}/{out_prefix} yet")
    rows.sort(key=lambda r: r["image"])
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    errors = sum(1 for r in rows if r.get("error"))
    return {"csv": str(out_csv), "job": job, "status": status, "rows": len(rows), "errors": errors}
