"""The drift watch (bincounter.monitor, `sm monitor`, `process monitor`) on capture files in SageMaker's real JSONL
format (base64 JPEG inputs, JSON answers), served by moto's S3 in server mode. Synthetic bins make a baseline and
three windows: one from the same distribution (no drift), one darker, one with a shifted count mix."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from datetime import UTC, datetime, timedelta

import boto3
import numpy as np
import pytest
from PIL import ImageEnhance

from bincounter import COUNTS
from bincounter.artifact import format_predictions
from bincounter.data.synth import synth_bin
from bincounter.monitor import baseline as mbaseline
from bincounter.monitor import capture, check, drift, signals

from .conftest import assert_one_line_error, run_cli

ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
VERSION = "ab12cd34ef56"
SINCE, UNTIL = "2026-12-07T08:00:00Z", "2026-12-07T10:00:00Z"
T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
ROLE = "arn:aws:iam::123456789012:role/bincounter-sm"
SCHED_ROLE = "arn:aws:iam::123456789012:role/bincounter-scheduler"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/bincounter:abc123"


def _jpeg(img, darker: float | None = None) -> bytes:
    if darker:
        img = ImageEnhance.Brightness(img).enhance(darker)
    b = io.BytesIO()
    img.save(b, "JPEG", quality=85)
    return b.getvalue()


def _answer(rng, count: int) -> dict:
    """What the endpoint answers (artifact.format_predictions, the one place answers are built): mostly the true
    count, with a confidence between 0.45 and 0.95."""
    said = count if rng.random() < 0.85 else int(np.clip(count + rng.choice([-1, 1]), 1, 5))
    conf = rng.uniform(0.45, 0.95)
    row = [conf if c == said else (1 - conf) / 4 for c in COUNTS]
    return format_predictions([row], COUNTS, VERSION)[0]


def _sample(seed: int, n: int, darker: float | None = None, mix=None) -> list[tuple[bytes, dict]]:
    """n (jpeg, answer) pairs: synthetic bins, counts uniform (or drawn from `mix`)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        count = int(rng.choice(COUNTS, p=mix)) if mix else COUNTS[i % len(COUNTS)]
        img, _ = synth_bin(rng, count, 96)
        out.append((_jpeg(img, darker), _answer(rng, count)))
    return out


@pytest.fixture(scope="module")
def baseline_doc():
    rows = [{**signals.image_signals(jpg), **signals.answer_signals(ans)} for jpg, ans in _sample(1, 300)]
    return mbaseline.build_baseline(rows, VERSION, {"channel": "synthetic val", "images": len(rows), "skipped": 0})


@pytest.fixture(scope="module")
def windows():
    return {"same": _sample(2, 150), "darker": _sample(3, 150, darker=0.55),
            "mix": _sample(4, 150, mix=[0.05, 0.05, 0.1, 0.2, 0.6]), "before": _sample(5, 20, darker=0.3)}


def capture_record(image: bytes | list[bytes], answer: dict | list[dict], when: datetime,
                   out_encoding: str = "JSON") -> str:
    """One line as SageMaker's data capture writes it: an image/jpeg body (BASE64), or a JSON batch (JSON); the
    answer as JSON text (application/json is a JSON content type of the SDK's default capture config) or BASE64."""
    if isinstance(image, list):
        inp = {"observedContentType": "application/json", "mode": "INPUT", "encoding": "JSON",
               "data": json.dumps({"instances": [base64.b64encode(b).decode() for b in image]})}
        body = json.dumps({"predictions": answer})
    else:
        inp = {"observedContentType": "image/jpeg", "mode": "INPUT", "encoding": "BASE64",
               "data": base64.b64encode(image).decode()}
        body = json.dumps(answer)
    out = {"observedContentType": "application/json", "mode": "OUTPUT", "encoding": out_encoding,
           "data": body if out_encoding == "JSON" else base64.b64encode(body.encode()).decode()}
    return json.dumps({"captureData": {"endpointInput": inp, "endpointOutput": out},
                       "eventMetadata": {"eventId": str(uuid.uuid4()),
                                         "inferenceTime": when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"},
                       "eventVersion": "0"})


def _s3(endpoint):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def put_capture(s3, bucket: str, prefix: str, endpoint: str, pairs, before=()) -> None:
    """The pairs spread over 08:00-10:00 in SageMaker's key layout (DEST/ENDPOINT/AllTraffic/yyyy/mm/dd/hh/...);
    the last one captured at 09:59:59 but written in the 10 o'clock folder; `before` at 07:30 (outside);
    every 10th request a JSON batch of two, every 7th answer BASE64-encoded."""
    files: dict[str, list[str]] = {}

    def add(line: str, written: datetime) -> None:
        # one file per 10 minutes, named as SageMaker names them (minute-second-millisecond-uuid)
        key = (f"{prefix}/{endpoint}/AllTraffic/{written:%Y/%m/%d/%H}/{written.minute // 10 * 10:02d}-00-000-"
               f"{uuid.uuid5(uuid.NAMESPACE_URL, endpoint)}.jsonl")
        files.setdefault(key, []).append(line)

    step = timedelta(seconds=7190 / max(len(pairs), 1))
    i = 0
    while i < len(pairs):
        when = T0 + i * step
        if i % 10 == 9 and i + 1 < len(pairs):
            add(capture_record([pairs[i][0], pairs[i + 1][0]], [pairs[i][1], pairs[i + 1][1]], when), when)
            i += 2
            continue
        last = i == len(pairs) - 1
        when = T0 + timedelta(seconds=7199) if last else when
        add(capture_record(*pairs[i], when, "BASE64" if i % 7 == 6 else "JSON"),
            when + timedelta(minutes=1) if last else when)
        i += 1
    for j, (jpg, ans) in enumerate(before):
        add(capture_record(jpg, ans, T0 - timedelta(minutes=30) + timedelta(seconds=j)), T0 - timedelta(minutes=30))
    add(capture_record(*pairs[0], T0 + timedelta(hours=2, minutes=5)), T0 + timedelta(hours=2, minutes=5))  # after
    for key, lines in files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=("\n".join(lines) + "\n").encode())


@pytest.fixture()
def bucket(moto_endpoint, aws_env):
    name = f"capture-{uuid.uuid4().hex[:10]}"
    _s3(moto_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture()
def baseline_file(baseline_doc, tmp_path):
    p = tmp_path / "drift_baseline.json"
    p.write_text(json.dumps(baseline_doc))
    return p


def _monitor(moto_endpoint, endpoint, baseline, out, *extra):
    proc = run_cli("sm", "monitor", endpoint, "--endpoint-url", moto_endpoint, "--baseline", baseline,
                   "--since", SINCE, "--until", UNTIL, "--out", out, *extra, env=ENV)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc, (json.loads((out / "drift.json").read_text()) if (out / "drift.json").is_file() else None)


# ------------------------------------------------------------------------------------------ the three windows
def test_a_window_like_the_baseline_is_no_drift(moto_endpoint, bucket, windows, baseline_file, tmp_path):
    """Same distribution: exit 0, every signal under its threshold; the requests before 08:00 (much darker) and
    after 10:00 are left out, the one at 09:59:59 written into the 10 o'clock folder is in; the capture
    destination comes from DescribeEndpoint."""
    s3 = _s3(moto_endpoint)
    put_capture(s3, bucket, "capture", "ep-same", windows["same"], before=windows["before"])
    sm = boto3.client("sagemaker", endpoint_url=moto_endpoint, region_name="us-east-1")
    sm.create_model(ModelName="m-same", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
    sm.create_endpoint_config(EndpointConfigName="c-same", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "m-same", "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.large"}], DataCaptureConfig={
        "EnableCapture": True, "InitialSamplingPercentage": 100, "DestinationS3Uri": f"s3://{bucket}/capture",
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]})
    sm.create_endpoint(EndpointName="ep-same", EndpointConfigName="c-same")

    proc, verdict = _monitor(moto_endpoint, "ep-same", baseline_file, tmp_path / "out", "--report-s3",
                             f"s3://{bucket}/reports/")
    assert proc.returncode == 0, (proc.stdout, proc.stderr, verdict and verdict["signals"])
    # the same tree a scheduled run writes (test_process_monitor_...): PREFIX/ENDPOINT/UNTIL/
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="reports/")["Contents"]}
    assert keys == {f"reports/ep-same/{UNTIL}/drift.json", f"reports/ep-same/{UNTIL}/drift.html"}
    assert verdict["status"] == "ok" and verdict["drifted"] == []
    assert verdict["n_window"] == 150  # not the 20 before 08:00 nor the one after 10:00
    assert verdict["window"]["model_versions"] == {VERSION: 150}
    assert json.loads(proc.stdout.splitlines()[-1])["status"] == "ok"
    page = (tmp_path / "out" / "drift.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "OK" in page
    assert all(f"<h2>{name}: " in page and f"<h2>{name}: DRIFT" not in page for name in signals.SIGNALS)


def test_darker_images_are_flagged(moto_endpoint, bucket, windows, baseline_file, tmp_path):
    put_capture(_s3(moto_endpoint), bucket, "capture", "ep-dark", windows["darker"])
    proc, verdict = _monitor(moto_endpoint, "ep-dark", baseline_file, tmp_path / "out", "--capture-s3",
                             f"s3://{bucket}/capture")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "brightness" in verdict["drifted"] and "predicted_count" not in verdict["drifted"]
    row = next(r for r in verdict["signals"] if r["signal"] == "brightness")
    assert row["value"] >= 0.25 and row["window_mean"] < row["baseline_mean"]
    assert "drift on ep-dark: brightness PSI" in proc.stderr
    assert "DRIFT" in (tmp_path / "out" / "drift.html").read_text()
    proc, _ = _monitor(moto_endpoint, "ep-dark", baseline_file, tmp_path / "out2", "--capture-s3",
                       f"s3://{bucket}/capture", "--variant", "Nope")  # a typo is named, not "0 captured images"
    assert_one_line_error(proc, "--variant Nope: no capture of it", "variants captured: AllTraffic")


def test_a_shifted_count_mix_is_flagged(moto_endpoint, bucket, windows, baseline_file, tmp_path):
    put_capture(_s3(moto_endpoint), bucket, "capture", "ep-mix", windows["mix"])
    proc, verdict = _monitor(moto_endpoint, "ep-mix", baseline_file, tmp_path / "out", "--capture-s3",
                             f"s3://{bucket}/capture/")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "predicted_count" in verdict["drifted"]
    row = next(r for r in verdict["signals"] if r["signal"] == "predicted_count")
    assert row["statistic"] == "chi2_p" and row["value"] < 0.01


def test_too_few_images_is_no_verdict(moto_endpoint, bucket, windows, baseline_file, tmp_path):
    put_capture(_s3(moto_endpoint), bucket, "capture", "ep-few", windows["darker"][:30])
    proc, verdict = _monitor(moto_endpoint, "ep-few", baseline_file, tmp_path / "out", "--capture-s3",
                             f"s3://{bucket}/capture")
    assert proc.returncode == 3 and verdict["status"] == "insufficient_data" and verdict["drifted"] == []
    proc, verdict = _monitor(moto_endpoint, "ep-few", baseline_file, tmp_path / "out2", "--capture-s3",
                             f"s3://{bucket}/capture", "--min-samples", "20")
    assert proc.returncode == 1 and "brightness" in verdict["drifted"]


# ------------------------------------------------------------------------------------------ process monitor
def test_process_monitor_reads_a_model_tarball_and_fails_the_job_on_drift(moto_endpoint, bucket, windows,
                                                                          baseline_doc, tmp_path):
    """What a scheduled Processing job runs: the baseline from the model.tar.gz in its input folder, the report
    uploaded to S3, exit 1 with the drift line in the failure file (the job's FailureReason)."""
    s3 = _s3(moto_endpoint)
    put_capture(s3, bucket, "capture", "ep-proc", windows["darker"])
    inp = tmp_path / "baseline"
    inp.mkdir()
    with tarfile.open(inp / "model.tar.gz", "w:gz") as tar:
        data = json.dumps(baseline_doc).encode()
        info = tarfile.TarInfo(mbaseline.BASELINE)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    failure = tmp_path / "message"
    proc = run_cli("process", "monitor", "--endpoint", "ep-proc", "--capture-s3", f"s3://{bucket}/capture",
                   "--baseline", inp, "--since", "2h", "--until", UNTIL, "--out", tmp_path / "drift",
                   "--report-s3", f"s3://{bucket}/reports", "--endpoint-url", moto_endpoint,
                   "--region", "us-east-1", env={**ENV, "BINCOUNTER_FAILURE_FILE": str(failure)})
    assert proc.returncode == 1, proc.stderr
    assert failure.read_text().startswith("drift on ep-proc: brightness PSI")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="reports/")["Contents"]}
    assert keys == {f"reports/ep-proc/{UNTIL}/drift.json", f"reports/ep-proc/{UNTIL}/drift.html"}
    uploaded = json.loads(s3.get_object(Bucket=bucket, Key=f"reports/ep-proc/{UNTIL}/drift.json")["Body"].read())
    assert uploaded["status"] == "drift" and uploaded["window"]["since"] == SINCE


def test_process_monitor_a_quiet_window_is_no_failure(moto_endpoint, bucket, windows, baseline_file, tmp_path):
    """A quiet night (fewer captured images than --min-samples, even darker ones) must not fail the scheduled job:
    exit 0, no failure file (no FailureReason to page on), status insufficient_data in drift.json. Only drift
    fails it."""
    put_capture(_s3(moto_endpoint), bucket, "capture", "ep-quiet", windows["darker"][:30])
    failure = tmp_path / "message"
    proc = run_cli("process", "monitor", "--endpoint", "ep-quiet", "--capture-s3", f"s3://{bucket}/capture",
                   "--baseline", baseline_file, "--since", "2h", "--until", UNTIL, "--out", tmp_path / "drift",
                   "--endpoint-url", moto_endpoint, "--region", "us-east-1",
                   env={**ENV, "BINCOUNTER_FAILURE_FILE": str(failure)})
    assert proc.returncode == 0, proc.stderr
    assert not failure.exists()
    verdict = json.loads((tmp_path / "drift" / "drift.json").read_text())
    assert verdict["status"] == "insufficient_data" and verdict["exit_code"] == 0 and verdict["n_window"] == 30
    assert "no verdict on ep-quiet: 30 captured images" in proc.stderr


def _noise_jpegs(n: int, seed: int = 7) -> list[bytes]:
    """Incompressible JPEGs (~40 KB each), so the bytes of a window weigh far more than its signals."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        b = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(b, "JPEG", quality=90)
        out.append(b.getvalue())
    return out


@pytest.fixture()
def moto_process():
    """moto in server mode in a process of its own (the session's moto runs in a thread of this process, and
    tracemalloc would count its allocations as ours)."""
    import time
    import urllib.request

    from .conftest import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # until it answers (or exits)
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, "moto server exited"
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_check_streams_the_window(moto_process, aws_env, baseline_doc, tmp_path, monkeypatch):
    """check.run measures each captured image as it is read and drops its bytes: the Python memory peak while it
    reads and measures 160 images (~6 MB of JPEG, ~8 MB as base64 lines) in 40 files stays far under the
    window's size (it held every image before: the peak started at the whole window). --max-images stops the read
    at that many images."""
    import tracemalloc

    s3, bucket = _s3(moto_process), "capture-big"
    s3.create_bucket(Bucket=bucket)
    jpegs = _noise_jpegs(160)
    answer = _answer(np.random.default_rng(0), 3)
    for f in range(40):
        lines = [capture_record(jpegs[f * 4 + i], answer, T0 + timedelta(minutes=f, seconds=i)) for i in range(4)]
        s3.put_object(Bucket=bucket, Key=f"capture/ep-big/AllTraffic/2026/12/07/08/{f:02d}-00-000-x.jsonl",
                      Body=("\n".join(lines) + "\n").encode())
    total = sum(len(j) for j in jpegs)
    since, until = check.window_bounds(SINCE, UNTIL)
    capped = check.run(s3, baseline_doc, f"s3://{bucket}/capture", "ep-big", since, until, tmp_path / "cap",
                       min_samples=10, max_images=25)  # also: imports, caches, the client's set-up out of the measure
    assert capped["n_window"] == 25
    peaks = []
    measure = check.signals.image_signals

    def measured(data, formats=None):  # the memory peak from the first image measured to this one
        if not peaks:
            tracemalloc.reset_peak()  # the peak starts at what is held now (the whole window, if it is held)
        peaks.append(tracemalloc.get_traced_memory()[1])
        return measure(data, formats)

    monkeypatch.setattr(check.signals, "image_signals", measured)
    tracemalloc.start()
    try:
        verdict = check.run(s3, baseline_doc, f"s3://{bucket}/capture", "ep-big", since, until, tmp_path / "out",
                            min_samples=10)
    finally:
        tracemalloc.stop()
    assert verdict["n_window"] == 160 and verdict["window"]["records"] == 160
    assert len(peaks) == 160 and max(peaks) < total / 3, (max(peaks), total)


def test_baseline_from_s3(moto_endpoint, bucket, baseline_doc):
    s3 = _s3(moto_endpoint)
    s3.put_object(Bucket=bucket, Key="model/drift_baseline.json", Body=json.dumps(baseline_doc).encode())
    assert mbaseline.read_baseline(f"s3://{bucket}/model/", lambda: s3)["model_version"] == VERSION


# ------------------------------------------------------------------------------------------ the schedule
def _schedule_args(*extra):
    return ["sm", "monitor", "ep-1", "--schedule", "rate(1 day)", "--since", "24h", "--baseline",
            "s3://bkt/models/job-1/output/model.tar.gz", "--capture-s3", "s3://bkt/capture", "--report-s3",
            "s3://bkt/drift", "--image", IMAGE, "--role", ROLE, "--scheduler-role", SCHED_ROLE, *extra]


def test_schedule_dry_run_prints_a_validated_create_schedule():
    """EventBridge Scheduler's universal target calls CreateProcessingJob with our image's `process monitor` on
    the 24 h before each scheduled time; print_request validated CreateSchedule, schedule_request the job."""
    proc = run_cli(*_schedule_args("--threshold", "brightness=0.3", "--max-images", "5000"), "--dry-run",
                   "--endpoint-url",
                   "http://127.0.0.1:9", env=ENV)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["api"] == "CreateSchedule"
    assert "estimated cost per run: up to $" in proc.stderr and "1 ml.m5.large x 1 h" in proc.stderr
    req = doc["request"]
    assert req["ScheduleExpression"] == "rate(1 day)" and req["FlexibleTimeWindow"] == {"Mode": "OFF"}
    target = req["Target"]
    assert target["Arn"] == "arn:aws:scheduler:::aws-sdk:sagemaker:createProcessingJob"
    assert target["RoleArn"] == SCHED_ROLE
    job = json.loads(target["Input"])
    assert job["ProcessingJobName"] == "drift-ep-1-<aws.scheduler.execution-id>"
    args = job["AppSpecification"]["ContainerArguments"]
    assert job["AppSpecification"]["ContainerEntrypoint"][-2:] == ["process", "monitor"]
    assert args[args.index("--until") + 1] == "<aws.scheduler.scheduled-time>"
    assert args[args.index("--report-s3") + 1] == "s3://bkt/drift"  # the job appends ENDPOINT/UNTIL/ itself
    assert args[args.index("--since") + 1] == "24h"
    assert args[args.index("--threshold") + 1] == "brightness=0.3"
    assert args[args.index("--max-images") + 1] == "5000"  # the job reads no more than the check would
    assert job["ProcessingInputs"][0]["S3Input"]["S3Uri"] == "s3://bkt/models/job-1/output/model.tar.gz"
    assert job["RoleArn"] == ROLE


def _readme_section(title: str) -> str:
    from .conftest import REPO

    text = (REPO / "README.md").read_text()
    start = text.index(f"### {title}")
    return " ".join(text[start:text.index("\n### ", start + 1)].split())


def test_the_scheduler_role_s_permissions_are_documented(capsys):
    """The job the schedule creates carries Tags, so the role EventBridge Scheduler assumes needs
    sagemaker:AddTags besides CreateProcessingJob and PassRole: the README's role list and --help say so."""
    from bincounter.cli import main
    from bincounter.monitor.schedule import ScheduleSpec, processing_job

    spec = ScheduleSpec(endpoint="ep", expression="rate(1 day)", image=IMAGE, role=ROLE, scheduler_role=SCHED_ROLE,
                        baseline_s3="s3://b/m.tar.gz", capture_s3="s3://b/c", report_s3="s3://b/r")
    assert processing_job(spec)["Tags"]
    section = _readme_section("Watching for drift")
    role_line = next(s for s in section.split("- ") if s.startswith("`--scheduler-role` needs"))
    for action in ("sagemaker:CreateProcessingJob", "sagemaker:AddTags", "iam:PassRole"):
        assert action in role_line, role_line
    with pytest.raises(SystemExit):
        main(["sm", "monitor", "--help"])
    assert "sagemaker:AddTags" in " ".join(capsys.readouterr().out.split())


def test_the_schedule_is_created(moto_endpoint, aws_env):
    proc = run_cli(*_schedule_args(), "--endpoint-url", moto_endpoint, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["created"] == "schedule"
    sched = boto3.client("scheduler", endpoint_url=moto_endpoint, region_name="us-east-1").get_schedule(
        Name="bincounter-drift-ep-1")
    assert sched["Target"]["Arn"].endswith(":createProcessingJob")
    assert json.loads(sched["Target"]["Input"])["AppSpecification"]["ImageUri"] == IMAGE


def test_each_scheduled_run_s_job_carries_the_platform_settings(moto_endpoint, aws_env):
    """Issue 27: what EventBridge Scheduler sends when the schedule fires, read back from moto: the Input moto's
    scheduler holds, its context attributes filled as the scheduler fills them, sent as CreateProcessingJob to
    moto's SageMaker; DescribeProcessingJob and ListTags give back the VPC and every tag. moto's
    CreateProcessingJob keeps no ProcessingResources (it takes no ClusterConfig), so the volume's KMS key is read
    back from the Input the scheduler holds, not from the job."""
    from bincounter.monitor.schedule import SAMPLE

    key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    args = _schedule_args("--tag", "team=vision", "--subnets", "subnet-0123abcd", "--security-groups",
                          "sg-89abcdef", "--kms-key", key)
    args[args.index("ep-1")] = "ep-plat"
    proc = run_cli(*args, "--endpoint-url", moto_endpoint, env=ENV)
    assert proc.returncode == 0, proc.stderr
    sched = boto3.client("scheduler", endpoint_url=moto_endpoint, region_name="us-east-1").get_schedule(
        Name="bincounter-drift-ep-plat")
    fired = sched["Target"]["Input"]
    for attribute, value in SAMPLE.items():
        fired = fired.replace(attribute, value)
    job = json.loads(fired)
    assert job["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] == key
    sm = boto3.client("sagemaker", endpoint_url=moto_endpoint, region_name="us-east-1")
    sm.create_processing_job(**job)
    got = sm.describe_processing_job(ProcessingJobName=job["ProcessingJobName"])
    assert got["NetworkConfig"] == {"VpcConfig": {"SecurityGroupIds": ["sg-89abcdef"], "Subnets": ["subnet-0123abcd"]}}
    assert got["AppSpecification"]["ImageUri"] == IMAGE and got["RoleArn"] == ROLE
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=got["ProcessingJobArn"])["Tags"]}
    assert {k: tags.get(k) for k in ("team", "project", "bincounter:drift-watch")} == {
        "team": "vision", "project": "bincounter", "bincounter:drift-watch": "ep-plat"}
    assert "bincounter:version" in tags


def test_a_bad_processing_job_inside_the_schedule_is_caught():
    """The job inside the Input is checked by botocore too (a runtime under SageMaker's minimum of 1 s)."""
    from bincounter.monitor.schedule import ScheduleSpec, schedule_request
    from bincounter.sm.validate import InvalidRequest

    spec = ScheduleSpec(endpoint="ep", expression="rate(1 day)", image=IMAGE, role=ROLE, scheduler_role=SCHED_ROLE,
                        baseline_s3="s3://b/m.tar.gz", capture_s3="s3://b/c", report_s3="s3://b/r",
                        max_runtime_s=0)
    with pytest.raises(InvalidRequest, match="CreateProcessingJob"):
        schedule_request(spec)


@pytest.mark.parametrize("args,needle", [
    (["--threshold", "glow=1"], "unknown signal 'glow'"),
    (["--threshold", "brightness=x"], "is not a number"),
    (["--since", "yesterday"], "'yesterday' is not a time"),
    (["--until", "2026-12-07T07:00:00Z"], "the window is empty"),
    (["--baseline", "/nonexistent/x.json"], "no such file"),
    (["--max-images", "0"], "--max-images 0: must be at least 1"),
])
def test_mistakes_are_one_line(args, needle, baseline_file):
    base = ["sm", "monitor", "ep", "--capture-s3", "s3://b/c", "--baseline", str(baseline_file), "--since", SINCE,
            "--until", UNTIL, "--endpoint-url", "http://127.0.0.1:9"]
    assert_one_line_error(run_cli(*base, *args, env=ENV), needle)


def test_the_scheduled_job_takes_the_role_and_platform_settings_from_the_project_config(tmp_path):
    """Like every sm command (the new-user trial found --schedule reading neither): role, tags, VPC and KMS key from
    bincounter.toml reach each run's Processing job; a flag wins; a bad id is one line."""
    key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    (tmp_path / "bincounter.toml").write_text(
        f'[sm]\nrole = "{ROLE}"\nkms_key = "{key}"\nsubnets = ["subnet-0123abcd"]\n'
        'security_groups = ["sg-0123abcd"]\n[sm.tags]\nteam = "vision"\n')
    args = _schedule_args()
    del args[args.index("--role"):args.index("--role") + 2]
    proc = run_cli(*args, "--dry-run", env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job = json.loads(json.loads(proc.stdout)["request"]["Target"]["Input"])
    assert job["RoleArn"] == ROLE and {"Key": "team", "Value": "vision"} in job["Tags"]
    assert job["NetworkConfig"]["VpcConfig"]["Subnets"] == ["subnet-0123abcd"]
    assert job["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] == key
    assert "setting: role = " in proc.stderr and "(from bincounter.toml)" in proc.stderr
    assert_one_line_error(run_cli(*args, "--subnets", "subnet-zz", "--dry-run", env=ENV, cwd=tmp_path),
                          "--subnets 'subnet-zz'")


def test_schedule_mistakes_are_one_line():
    assert_one_line_error(run_cli(*_schedule_args()[:-2], "--dry-run", env=ENV), "--schedule needs --scheduler-role")
    args = _schedule_args()
    args[args.index("24h")] = SINCE
    assert_one_line_error(run_cli(*args, "--dry-run", env=ENV), "--since as a duration")
    for bad, needle in (("daily", "--schedule 'daily': EventBridge Scheduler takes rate("),
                        ("cron(bad)", "--schedule 'cron(bad)'"), ("rate(0 days)", "--schedule 'rate(0 days)'")):
        args = _schedule_args()
        args[args.index("rate(1 day)")] = bad
        assert_one_line_error(run_cli(*args, "--dry-run", env=ENV), needle)
    args = _schedule_args()
    args[args.index("24h")] = "0h"  # every run would judge an empty window
    assert_one_line_error(run_cli(*args, "--dry-run", env=ENV), "--since as a duration")
    args = _schedule_args()
    args[args.index("s3://bkt/models/job-1/output/model.tar.gz")] = "s3://bkt"
    assert_one_line_error(run_cli(*args, "--dry-run", env=ENV), "--baseline s3://bkt: a bucket root")


def test_an_endpoint_without_capture_is_one_line(moto_endpoint, aws_env, baseline_file):
    proc = run_cli("sm", "monitor", "no-such-ep", "--baseline", baseline_file, "--since", "1h", "--endpoint-url",
                   moto_endpoint, env=ENV)
    assert_one_line_error(proc, "describing endpoint no-such-ep")


def test_monitor_never_imports_torch(tmp_path):
    """The schedule's dry run and the check itself (numpy, PIL, matplotlib, boto3) without torch."""
    code = ("import contextlib, io, sys\nfrom bincounter.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()):\n    main({_schedule_args('--dry-run')!r})\n"
            "from bincounter.monitor import check, report, capture, baseline\n"
            "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **ENV})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------------------------------ the pieces
def test_chi2_sf_matches_scipy():
    from scipy.stats import chi2

    for df in (1, 2, 3, 4, 5, 8, 11):
        for x in (0.1, 1.0, 3.3, 9.0, 25.0, 80.0):
            assert drift.chi2_sf(x, df) == pytest.approx(chi2.sf(x, df), rel=1e-9, abs=1e-15)


def test_psi_and_bins():
    assert drift.psi([0.5, 0.5], [0.5, 0.5]) == 0
    s = drift.summarize_numeric([96.0] * 50)  # a constant signal (one image size): below / equal / above
    assert drift.fractions(s["edges"], [96.0]).tolist() == [0, 1, 0]
    assert drift.fractions(s["edges"], [120.0]).tolist() == [0, 0, 1]
    assert drift.compare_signal("width", s, [120.0] * 200, 0.25)["drift"]
    assert not drift.compare_signal("width", s, [96.0] * 200, 0.25)["drift"]


def test_a_small_baseline_is_judged_above_its_noise_floor():
    """The new-user trial's case: a 5-image baseline against 150 images of the same distribution reported drift on
    every signal (PSI from the baseline's empty deciles). Below MIN_BASELINE a signal is not judged (said so); a
    moderate baseline is judged at 2.5x its noise floor; a large one at the threshold; a real shift still shows."""
    rng = np.random.default_rng(0)
    tiny = drift.compare_signal("brightness", drift.summarize_numeric(rng.normal(100, 10, 5)),
                                list(rng.normal(100, 10, 150)), 0.25)
    assert not tiny["drift"] and tiny["warning"] and "not judged" in tiny["note"]
    small = drift.summarize_numeric(rng.normal(100, 10, 60))
    for seed in range(20):  # no drift: never flagged at 2.5x the floor (at 0.25 several of these were)
        same = drift.compare_signal("brightness", small, list(np.random.default_rng(seed).normal(100, 10, 150)),
                                    0.25)
        assert not same["drift"] and same["judged_at"] > 0.25 and "sampling noise" in same["note"], same
    assert drift.compare_signal("brightness", small, list(rng.normal(130, 10, 150)), 0.25)["drift"]
    big = drift.summarize_numeric(rng.normal(100, 10, 5000))
    row = drift.compare_signal("brightness", big, list(rng.normal(100, 10, 5000)), 0.25)
    assert row["judged_at"] == 0.25 and "note" not in row and not row["drift"]


def test_capture_lines_decode(windows):
    """A JSON batch, a BASE64 answer, an error answer, a CSV request and a broken line, each counted."""
    w = capture.Window()
    since, until = T0, T0 + timedelta(hours=1)
    (a, x), (b, y) = windows["same"][:2]
    capture.add_record(w, capture_record([a, b], [x, y], T0), since, until)
    capture.add_record(w, capture_record(a, x, T0, "BASE64"), since, until)
    err = json.loads(capture_record(a, x, T0))
    err["captureData"]["endpointOutput"]["data"] = json.dumps({"error": "cannot decode image", "status": 400})
    capture.add_record(w, json.dumps(err), since, until)
    csv = json.loads(capture_record(a, x, T0))
    csv["captureData"]["endpointInput"] = {"observedContentType": "text/csv", "mode": "INPUT", "data": "1,2",
                                           "encoding": "CSV"}
    capture.add_record(w, json.dumps(csv), since, until)
    capture.add_record(w, "{not json", since, until)
    assert [img for img, _, _ in w.images] == [a, b, a]
    assert [ans["count"] for _, _, ans in w.images] == [x["count"], y["count"], x["count"]]
    assert w.errors == 1 and w.records == 4
    assert sum(w.skipped.values()) == 2


def test_window_bounds():
    since, until = check.window_bounds("24h", "2026-12-07T06:00:00Z")
    assert (since.isoformat(), until.isoformat()) == ("2026-12-06T06:00:00+00:00", "2026-12-07T06:00:00+00:00")
    assert capture.hour_prefixes("p/", since, since + timedelta(hours=1))[-1] == "p/2026/12/06/07/"


def test_training_writes_the_baseline_next_to_the_model(trained_model, channels):
    """The trainer's hook: drift_baseline.json beside config.json, naming the same model, from every val image."""
    doc = mbaseline.read_baseline(str(trained_model))
    config = json.loads((trained_model / "config.json").read_text())
    n_val = sum(1 for p in (channels / "val").rglob("*.jpg"))
    assert doc["model_version"] == config["model_version"]
    assert doc["source"]["images"] == n_val and doc["signals"]["predicted_count"]["n"] == n_val
    assert doc["signals"]["brightness"]["n"] == n_val


def test_report_prefix_one_layout_and_schedules_made_before_it():
    from datetime import datetime

    until = datetime(2026, 12, 7, 10, tzinfo=UTC)
    for prefix in ("s3://b/r", "s3://b/r/", "s3://b"):
        assert check.report_prefix(prefix, "ep", until) == f"{prefix.rstrip('/')}/ep/2026-12-07T10:00:00Z/"
    # a schedule created before: it passes PREFIX/ENDPOINT/<scheduled time> itself; not doubled
    assert check.report_prefix("s3://b/r/ep/2026-12-07T10:00:00Z", "ep", until) == "s3://b/r/ep/2026-12-07T10:00:00Z/"
