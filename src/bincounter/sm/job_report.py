"""`bincounter sm report JOB`: gather a training job's reports from S3 into one folder and render the same HTML
report as `bincounter report` (bincounter.report).

Where SageMaker puts what the trainer and the profiler wrote:
  <output>/<job>/output/output.tar.gz   /opt/ml/output/data: rules.json, metrics.json, test_metrics.json,
                                        test_confusion_matrix.png, training_curves.png, profile/system_report.json
  <output>/<job>/output/model.tar.gz    /opt/ml/model: config.json, metrics.json (read only when output.tar.gz
                                        lacks them: it also holds the weights)
  <profiler>/<job>/rule-output/         the ProfilerReport rule: .../profiler-output/profiler-report.html and
                                        .../profiler-output/profiler-reports/<Rule>.json
<profiler> is the job's ProfilerConfig.S3OutputPath (sm train sets it to --output), else its output path. A
tuning job name means its best training job.
"""

from __future__ import annotations

import json
import logging
import posixpath
import tarfile
from pathlib import Path

from .. import aws
from ..errors import UserError
from ..report import PROFILER_DIR, render
from .target import AwsTarget

log = logging.getLogger("bincounter")

# the files a report reads, by their path inside the tarballs
WANTED = ("rules.json", "metrics.json", "test_metrics.json", "test_confusion_matrix.png", "training_curves.png",
          "profile/system_report.json", "config.json")


def _split(uri: str) -> tuple[str, str]:
    from ..data.s3 import parse_s3_uri

    return parse_s3_uri(uri)


def training_job(sm, name: str, region: str) -> dict:
    """DescribeTrainingJob of NAME, or of the best training job of the tuning job NAME."""
    from . import follow

    try:
        return follow.find(sm, name, "training", region)[1]
    except UserError as e:
        if "of that name" not in str(e):  # follow.find: no such training job
            raise
    try:
        _, tuning = follow.find(sm, name, "tuning", region)
    except UserError:
        raise UserError(f"{name}: no training job or tuning job of that name in {region} (list them: aws sagemaker "
                        f"list-training-jobs --region {region})") from None
    best = (tuning.get("BestTrainingJob") or {}).get("TrainingJobName")
    if not best:
        raise UserError(f"tuning job {name} has no best training job yet (status "
                        f"{tuning.get('HyperParameterTuningJobStatus')}); pass a trial's name")
    log.info("tuning job %s: reporting its best training job, %s", name, best)
    return follow.find(sm, best, "training", region)[1]


def _extract(s3, uri: str, dest: Path, want: set[str]) -> list[str]:
    """Stream the tarball at `uri` and write the members named in `want` (no other path is ever written)."""
    bucket, key = _split(uri)
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    except Exception as e:  # noqa: BLE001 - botocore ClientError: a missing object is reported, not raised
        code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            return []
        with aws.user_errors(f"GetObject {uri}"):
            raise
    got = []
    try:
        with tarfile.open(fileobj=body, mode="r|gz") as tar:
            for m in tar:
                name = posixpath.normpath(m.name[2:] if m.name.startswith("./") else m.name)
                if not m.isfile() or name not in want:
                    continue
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(m).read())
                got.append(name)
                want = want - {name}
                if not want:
                    break
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"{uri}: not a readable .tar.gz ({e})") from None
    finally:
        body.close()
    return got


def _profiler_files(s3, prefix_uri: str, dest: Path) -> list[str]:
    """The ProfilerReport rule's report page and rule summaries under `prefix_uri`, kept with their path below it."""
    bucket, prefix = _split(prefix_uri)
    prefix = prefix.rstrip("/") + "/"
    got = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):]
            keep = rel.endswith("profiler-report.html") or ("/profiler-reports/" in f"/{rel}" and rel.endswith(".json"))
            if not keep or ".." in rel.split("/"):
                continue
            target = dest / PROFILER_DIR / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(aws.aws_call(f"GetObject s3://{bucket}/{obj['Key']}", s3.get_object, Bucket=bucket,
                                            Key=obj["Key"])["Body"].read())
            got.append(f"{PROFILER_DIR}/{rel}")
    return got


def gather(sm, s3, name: str, region: str, dest: Path) -> dict:
    """Download what a report reads into `dest`; returns {"job", "status", "found": [...], "missing": [...]}."""
    desc = training_job(sm, name, region)
    job = desc["TrainingJobName"]
    output = desc.get("OutputDataConfig", {}).get("S3OutputPath", "").rstrip("/")
    dest.mkdir(parents=True, exist_ok=True)
    found: list[str] = []
    if output:
        with aws.user_errors("S3"):
            found += _extract(s3, f"{output}/{job}/output/output.tar.gz", dest, set(WANTED))
    model = desc.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if model and {"metrics.json", "config.json"} - set(found):
        with aws.user_errors("S3"):
            found += _extract(s3, model, dest, {"metrics.json", "config.json"} - set(found))
    profiler = (desc.get("ProfilerConfig") or {}).get("S3OutputPath", "").rstrip("/") or output
    rule_prefixes = [r["S3OutputPath"] for r in desc.get("ProfilerRuleConfigurations", []) if r.get("S3OutputPath")]
    if profiler:
        rule_prefixes.append(f"{profiler}/{job}/rule-output/")
    for prefix in dict.fromkeys(rule_prefixes):
        with aws.user_errors("S3"):
            found += _profiler_files(s3, prefix, dest)
    statuses = {r.get("RuleConfigurationName"): r.get("RuleEvaluationStatus")
                for r in desc.get("ProfilerRuleEvaluationStatuses", [])}
    missing = [w for w in WANTED if w not in found and w != "config.json"]
    if not any(f.startswith(PROFILER_DIR) for f in found):
        missing.append(f"{PROFILER_DIR} (ProfilerReport rule output under {rule_prefixes[-1] if rule_prefixes else '-'}"
                       f"{'; rule status ' + str(statuses) if statuses else ''})")
    return {"job": job, "status": desc.get("TrainingJobStatus"), "found": found, "missing": missing}


def report(target: AwsTarget, job: str, dest: Path | None = None) -> int:
    """Gather JOB's reports into `dest` (default reports/JOB), render report.html there and print one JSON line
    naming it."""
    sm, s3, region = target.client(), target.client("s3"), target.resolved_region()
    dest = dest or Path("reports") / job
    got = gather(sm, s3, job, region, dest)
    if got["status"] not in ("Completed", "Failed", "Stopped"):
        log.warning("training job %s is %s: its output.tar.gz and the profiler report come when it ends",
                    got["job"], got["status"])
    for m in got["missing"]:
        log.warning("not found: %s", m)
    path = render([dest], dest / "report.html", title=f"SageMaker training job {got['job']}",
                  source=f"training job {got['job']} ({got['status']}), {region}")
    print(json.dumps({"report": str(path), "job": got["job"], "status": got["status"], "found": got["found"]}))
    return 0
