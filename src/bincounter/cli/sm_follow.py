"""`bincounter sm status`, `sm logs`, `sm report`, `sm collect`: read what a job left (its state, its log, its
reports, a batch transform's results), by name, through `sm.follow`, `sm.job_report` and `sm.batch_collect`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..sm.follow import KINDS
from .sm_common import add_aws_options, target

log = logging.getLogger("bincounter")


def add_status(sub, formatter) -> None:
    s = sub.add_parser("status", help="where a job or endpoint stands (one JSON line)", formatter_class=formatter,
                       description="Status of a training job, tuning job (trials, best job and its "
                       "hyperparameters), transform job or endpoint, found by name.")
    add_aws_options(s)
    s.add_argument("name")
    s.add_argument("--kind", choices=KINDS, help="skip the search over kinds")
    s.set_defaults(func=cmd_status)


def add_logs(sub, formatter) -> None:
    lg = sub.add_parser("logs", help="a job's or endpoint's log (CloudWatch)", formatter_class=formatter,
                        description="The CloudWatch log of a training job, transform job or endpoint (every "
                        "instance, in time order); for a tuning job, its best (else latest) training job's.")
    add_aws_options(lg)
    lg.add_argument("name")
    lg.add_argument("--kind", choices=KINDS, help="skip the search over kinds")
    lg.add_argument("--tail", type=int, default=100, help="last N lines (0: all)")
    lg.add_argument("--follow", action="store_true", help="keep printing new lines until the job ends")
    lg.set_defaults(func=cmd_logs)


def add_report(sub, formatter) -> None:
    r = sub.add_parser("report", help="one HTML report of a training job (curves, rules, profiler, test metrics)",
                       formatter_class=formatter,
                       description="Download a training job's rules.json, metrics, confusion matrix (output.tar.gz, "
                       "else model.tar.gz) and SageMaker's ProfilerReport output, and render one self-contained HTML "
                       "report: training curves, training rules fired, system utilisation, test metrics. A tuning "
                       "job name means its best training job.")
    r.add_argument("job", metavar="JOB", help="training job name (or tuning job: its best training job)")
    r.add_argument("--out", help="folder for the downloaded files and report.html (default: reports/JOB)")
    add_aws_options(r)
    r.set_defaults(func=cmd_report)


def add_collect(sub, formatter) -> None:
    c = sub.add_parser("collect", help="a batch transform job's .out files as one CSV", formatter_class=formatter,
                       description="One CSV row per result of a batch transform job (image, count, expected_count, "
                       "p1..p5, model_version, error), sorted by image. `sm batch --collect FILE` does the same "
                       "once its job has completed.")
    c.add_argument("job", metavar="JOB", help="transform job name")
    c.add_argument("--csv", required=True, help="CSV file to write")
    add_aws_options(c)
    c.set_defaults(func=cmd_collect)


def cmd_status(args) -> int:
    from ..sm import follow

    t = target(args)
    print(json.dumps(follow.status(t.client(), args.name, args.kind, t.resolved_region()), default=str))
    return 0


def cmd_logs(args) -> int:
    from ..sm import follow

    t = target(args)
    sm, region = t.client(), t.resolved_region()
    return follow.print_logs(sm, t.client("logs"), args.name, args.kind, region, args.tail, args.follow)


def cmd_report(args) -> int:
    from ..sm import job_report

    return job_report.report(target(args), args.job, Path(args.out) if args.out else None)


def cmd_collect(args) -> int:
    from ..sm import batch_collect

    t = target(args)
    got = batch_collect.collect(t.client(), t.client("s3"), args.job, t.resolved_region(), args.csv)
    print(json.dumps(got))
    if got["errors"]:
        log.warning("%d of %d results are not predictions (see the error column)", got["errors"], got["rows"])
    return 0
