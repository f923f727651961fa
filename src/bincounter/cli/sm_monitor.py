"""`bincounter sm monitor ENDPOINT`: the drift check of an endpoint's captured data against the model's baseline
(bincounter.monitor), or with --schedule its EventBridge Scheduler schedule; and `bincounter process monitor`, the
same check as a SageMaker Processing job (what the schedule runs in the image)."""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

from ..errors import UserError, write_failure_file
from .sm_common import add_common, add_platform_options, platform_settings, role, target, text

log = logging.getLogger("bincounter")
# EventBridge Scheduler's three forms (its API takes any string; a typo would fail only at CreateSchedule)
SCHEDULE_RE = re.compile(r"rate\(\s*[1-9]\d*\s+(minute|minutes|hour|hours|day|days)\s*\)"
                         r"|cron\(\s*\S+(\s+\S+){5}\s*\)|at\(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\)")


def _add_check_options(p) -> None:
    p.add_argument("--baseline", required=True,
                   help="drift_baseline.json (training writes it next to the model), a model directory, a "
                        "model.tar.gz, or an s3:// URI of one of those")
    p.add_argument("--since", required=True,
                   help="start of the window: a UTC time (2026-12-07T00:00:00Z) or a duration before --until "
                        "(90m, 24h, 7d)")
    p.add_argument("--until", help="end of the window (UTC time; default: now)")
    p.add_argument("--variant", help="one production variant's capture (default: every variant's)")
    p.add_argument("--threshold", action="append", metavar="SIGNAL=VALUE",
                   help="override a threshold: PSI for brightness, contrast, sharpness, width, height, confidence "
                        "(default 0.25); the chi-square p-value for predicted_count (default 0.01). Repeatable")
    p.add_argument("--min-samples", type=int, default=100,
                   help="fewer captured images than this: no verdict (exit 3; in process monitor exit 0, no failure)")
    p.add_argument("--max-images", type=int, help="read at most this many captured images")
    p.add_argument("--report-s3", help="also upload drift.json + drift.html to PREFIX/ENDPOINT/UNTIL/ (UNTIL: the "
                                       "window's end, 2026-12-07T12:00:00Z; a scheduled run writes the same tree)")


def add_monitor(sub, formatter) -> None:
    m = sub.add_parser(
        "monitor", help="drift check of an endpoint's captured data against the model's baseline; exit 1 on drift",
        formatter_class=formatter,
        description=text(
            "Reads the endpoint's data capture (sm deploy --capture-s3) for a time window from S3, measures every "
            "captured image (size, brightness, contrast, sharpness) and answer (predicted count, confidence), and "
            "compares them with the baseline training wrote from the val split: PSI per numeric signal, a "
            "chi-square test on the predicted-count mix. Writes drift.json and drift.html into --out and prints "
            "the verdict as one JSON line. Exit code: 0 no drift, 1 drift, 3 too few captured images, 2 an error.",
            "--schedule EXPR creates an EventBridge Scheduler schedule instead, which runs the same check as a "
            "Processing job with the image (IMAGE process monitor) on the window before each scheduled time "
            "(--since as a duration); --dry-run prints its CreateSchedule request, checked by botocore."))
    add_common(m, costed=False)
    m.add_argument("endpoint")
    _add_check_options(m)
    m.add_argument("--capture-s3", help="the capture destination (default: the endpoint's, from DescribeEndpoint)")
    m.add_argument("--out", help="folder for drift.json and drift.html (default: drift-ENDPOINT)")
    s = m.add_argument_group("schedule (EventBridge Scheduler -> a SageMaker Processing job per run)")
    s.add_argument("--schedule", metavar="EXPR", help="rate(1 day), cron(0 6 * * ? *), ...")
    s.add_argument("--image", help="the bincounter image URI (ECR)")
    s.add_argument("--role", help="the Processing job's execution role ARN (reads capture + baseline, writes "
                                  "the report)")
    s.add_argument("--scheduler-role", help="the role EventBridge Scheduler assumes: sagemaker:CreateProcessingJob, "
                                            "sagemaker:AddTags (the job is tagged) and iam:PassRole on --role")
    s.add_argument("--instance-type", default="ml.m5.large", help="the Processing job's instance")
    s.add_argument("--schedule-name", help="default: bincounter-drift-ENDPOINT")
    add_platform_options(s, "process")
    m.set_defaults(func=cmd_monitor)


def add_process(psub, formatter) -> None:
    p = psub.add_parser("monitor", help="drift check of captured endpoint data (what a drift schedule runs)",
                        formatter_class=formatter,
                        description="The drift check of `bincounter sm monitor` as a Processing job step: exit 1 "
                        "on drift (the job fails with the drift line as its reason); fewer than --min-samples "
                        "captured images is no failure (exit 0, status insufficient_data in drift.json): only "
                        "drift fails the job.")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--capture-s3", required=True, help="the endpoint's capture destination (s3://)")
    p.add_argument("--region")
    p.add_argument("--endpoint-url", help=argparse.SUPPRESS)
    p.add_argument("--out", default="/opt/ml/processing/drift")
    _add_check_options(p)
    p.set_defaults(func=cmd_process_monitor)


def _thresholds(args) -> dict:
    from ..monitor.check import parse_thresholds

    if args.min_samples < 1:
        raise UserError("--min-samples must be at least 1")
    if args.max_images is not None and args.max_images < 1:
        raise UserError(f"--max-images {args.max_images}: must be at least 1")
    return parse_thresholds(args.threshold or [])


def _check(args, s3, capture: str, endpoint: str, out: str, in_job: bool = False) -> int:
    """The check; `in_job` (process monitor): only drift is a failure (a quiet window succeeds, status
    insufficient_data in drift.json), so the job's Failed state is the drift alarm."""
    from ..monitor import baseline, check

    thresholds = _thresholds(args)
    if args.report_s3:  # checked before the window is read, not at the upload after it
        from ..sm.checks import check_s3_uri

        check_s3_uri("--report-s3", args.report_s3)
    since, until = check.window_bounds(args.since, args.until)
    base = baseline.read_baseline(args.baseline, lambda: s3)
    verdict = check.run(s3, base, capture, endpoint, since, until, out, args.variant, thresholds,
                        args.min_samples, args.max_images, check.JOB_EXIT if in_job else check.EXIT)
    if args.report_s3:
        from ..monitor import report

        uris = check.upload(s3, [Path(out) / report.VERDICT, Path(out) / report.PAGE],
                            check.report_prefix(args.report_s3, endpoint, until))
        log.info("report uploaded: %s", ", ".join(uris))
    line = check.summary_line(verdict)
    print(json.dumps({k: verdict[k] for k in ("endpoint", "status", "drifted", "warnings", "n_window", "exit_code")}
                     | {"out": str(out)}))
    (log.warning if verdict["status"] != "ok" else log.info)("%s", line)
    if verdict["status"] == "drift":
        write_failure_file(line)  # inside a Processing job: its FailureReason
    return verdict["exit_code"]


def cmd_process_monitor(args) -> int:
    from .. import aws

    s3 = aws.client("s3", args.region, None, args.endpoint_url)
    return _check(args, s3, args.capture_s3, args.endpoint, args.out, in_job=True)


def cmd_monitor(args) -> int:
    t = target(args)
    if args.schedule:
        return _schedule(args, t)
    if args.dry_run:
        raise UserError("--dry-run applies to --schedule (the check itself only reads)")
    capture = args.capture_s3 or _capture_destination(t, args.endpoint)
    return _check(args, t.client("s3"), capture, args.endpoint, args.out or f"drift-{args.endpoint}")


def _capture_destination(t, endpoint: str) -> str:
    from ..aws import aws_call

    desc = aws_call(f"describing endpoint {endpoint}", t.client("sagemaker").describe_endpoint, EndpointName=endpoint)
    dest = (desc.get("DataCaptureConfig") or {}).get("DestinationS3Uri")
    if not dest:
        raise UserError(f"endpoint {endpoint} has no data capture (deploy it with --capture-s3, or pass --capture-s3 "
                        "where its capture lies)")
    return dest


def _schedule(args, t) -> int:
    from ..monitor.schedule import ScheduleSpec, schedule_request
    from ..sm import checks, printing

    missing = [f for f, v in (("--image", args.image), ("--scheduler-role", args.scheduler_role),
                              ("--report-s3", args.report_s3)) if not v]
    if missing:
        raise UserError(f"--schedule needs {', '.join(missing)}")
    job_role = role(args)  # --role, else the project config's
    if not args.baseline.startswith("s3://"):
        raise UserError("--schedule needs --baseline as an s3:// URI (the job reads it from S3)")
    if args.until or not args.since[:-1].isdigit() or args.since[-1:] not in "mhd" or int(args.since[:-1]) == 0:
        raise UserError("--schedule judges the window before each run: --since as a duration (24h), no --until")
    if not SCHEDULE_RE.fullmatch(args.schedule.strip()):
        raise UserError(f"--schedule {args.schedule!r}: EventBridge Scheduler takes rate(N minutes|hours|days), "
                        "cron(MIN HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK YEAR) or at(yyyy-mm-ddThh:mm:ss), "
                        "e.g. 'cron(0 6 * * ? *)'")
    from ..monitor.capture import split_s3

    if not split_s3(args.baseline)[1].strip("/"):
        raise UserError(f"--baseline {args.baseline}: a bucket root; give the baseline file, model.tar.gz or model "
                        "folder (the job would download everything under it)")
    for flag, uri in (("--report-s3", args.report_s3), ("--capture-s3", args.capture_s3)):
        checks.check_s3_uri(flag, uri)
    checks.check_instance_type(args.instance_type)
    _thresholds(args)
    region = t.resolved_region()
    capture = args.capture_s3 or ("s3://CAPTURE-DESTINATION" if t.dry_run else _capture_destination(t, args.endpoint))
    if t.dry_run and not args.capture_s3:
        log.warning("dry run: pass --capture-s3 for the real destination (a real run reads it from DescribeEndpoint)")
    extra = [a for th in args.threshold or [] for a in ("--threshold", th)] + ["--min-samples", str(args.min_samples)]
    if args.variant:
        extra += ["--variant", args.variant]
    if args.max_images:
        extra += ["--max-images", str(args.max_images)]
    settings = platform_settings(args)
    settings.check_training(region, None)  # a Processing volume, like a training one, takes no key alias
    if t.dry_run:
        for note in settings.dry_run_notes():
            log.info("%s", note)
    spec = ScheduleSpec(endpoint=args.endpoint, expression=args.schedule, image=args.image,
                        role=t.role_arn(job_role, region), scheduler_role=t.role_arn(args.scheduler_role, region),
                        baseline_s3=args.baseline, capture_s3=capture, report_s3=args.report_s3, since=args.since,
                        region=region, instance_type=args.instance_type, name=args.schedule_name,
                        extra_args=tuple(extra), platform=settings)
    req = schedule_request(spec)
    from ..sm import cost

    printing.cost(cost.job_line(instance_type=spec.instance_type, instance_count=1, max_runtime_s=spec.max_runtime_s,
                                region=region).replace("estimated cost:", "estimated cost per run:", 1))
    if t.dry_run:
        printing.print_request("CreateSchedule", req, "scheduler")
        return 0
    from ..aws import aws_call

    arn = aws_call("creating the schedule", t.client("scheduler").create_schedule, **req)["ScheduleArn"]
    printing.created("schedule", req["Name"], arn,
                     f"https://console.aws.amazon.com/scheduler/home?region={region}#schedules/default/{req['Name']}",
                     f"aws scheduler delete-schedule --name {req['Name']} --region {region}",
                     f"each run's drift.json/html under {args.report_s3.rstrip('/')}/{args.endpoint}/")
    return 0
