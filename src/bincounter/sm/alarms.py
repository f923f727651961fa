"""The CloudWatch alarms a blue/green update (`sm update`) rolls back on: the endpoint's 5xx rate
(`Invocation5XXErrors`, whose Average is the share of requests answered 5xx), its p99 `ModelLatency`, and the
container's own error count (a CloudWatch Logs metric filter on the endpoint's log group counting ERROR lines:
the serving front, the model server and the worker all log failures at that level). Or alarms the user names,
which must already exist.

Every alarm watches the endpoint's variant as a whole: during an update both fleets (old and new) serve under the
same variant name, so a canary's errors and latency are diluted by the old fleet's traffic. A canary taking 1 of N
instances' traffic must answer about N times the 5xx rate threshold before the rate alarm fires; the ERROR-line
count is not diluted (it counts lines, whichever fleet wrote them); p99 latency sees the canary when it takes more
than 1% of the requests. `sm update` also refuses to start while one of them is already in ALARM (`check_quiet`).

`requests` builds every request (pure: a dry run prints them, a real run sends them with `put`); the alarms carry
the tags they are given (`sm update`: the endpoint config's, `platform.carried_tags`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .. import aws
from ..errors import UserError
from .target import AwsTarget

log = logging.getLogger("bincounter")

NAMESPACE = "bincounter"  # the container-error metric's namespace (the metric is named after the endpoint)
ERROR_PATTERN = "ERROR"  # a log line at ERROR level, whichever process of the container wrote it


@dataclass(frozen=True)
class Thresholds:
    """When each alarm fires, over `period_s` windows: 5xx share (0..1), p99 model latency (ms), ERROR lines."""

    error_rate: float = 0.01
    p99_ms: float = 2000.0
    container_errors: int = 5
    period_s: int = 60

    def check(self) -> None:
        if not 0 < self.error_rate <= 1:
            raise UserError(f"--max-5xx-rate {self.error_rate}: a share of requests in (0, 1], e.g. 0.01 for 1%")
        if self.p99_ms <= 0:
            raise UserError(f"--max-p99-ms {self.p99_ms:g}: must be > 0")
        if self.container_errors < 1:
            raise UserError(f"--max-container-errors {self.container_errors}: must be >= 1")
        if self.period_s not in (10, 30) and (self.period_s < 60 or self.period_s % 60):
            raise UserError(f"--alarm-period {self.period_s}: CloudWatch takes 10, 30 or a multiple of 60 seconds")


def log_group(endpoint: str) -> str:
    """Where SageMaker writes an endpoint's container logs (every instance, old fleet and new)."""
    return f"/aws/sagemaker/Endpoints/{endpoint}"


def names(endpoint: str) -> list[str]:
    """The alarms `requests` creates, by name."""
    return [f"bincounter-{endpoint}-{what}" for what in ("5xx-rate", "p99-latency", "container-errors")]


def filter_name(endpoint: str) -> str:
    """The log metric filter `requests` creates (counts the container's ERROR lines)."""
    return f"bincounter-{endpoint}-errors"


def requests(endpoint: str, variant: str, t: Thresholds, tags: list[dict] = ()) -> tuple[dict, list[dict]]:
    """(PutMetricFilter request, three PutMetricAlarm requests, each carrying `tags`) for the endpoint's variant.
    Alarms have no actions: SageMaker watches them during an update. Missing data (no traffic) is not breaching."""
    rate, latency, errors = names(endpoint)
    dims = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}]
    metric = f"{endpoint}/ContainerErrors"
    common = {"Period": t.period_s, "EvaluationPeriods": 2, "ActionsEnabled": False,
              "TreatMissingData": "notBreaching", "ComparisonOperator": "GreaterThanOrEqualToThreshold",
              **({"Tags": list(tags)} if tags else {})}
    metric_filter = {"logGroupName": log_group(endpoint), "filterName": filter_name(endpoint),
                     "filterPattern": ERROR_PATTERN,
                     "metricTransformations": [{"metricName": metric, "metricNamespace": NAMESPACE,
                                                "metricValue": "1", "defaultValue": 0.0, "unit": "Count"}]}
    alarms = [
        {**common, "AlarmName": rate, "DatapointsToAlarm": 1, "Namespace": "AWS/SageMaker",
         "MetricName": "Invocation5XXErrors", "Dimensions": dims, "Statistic": "Average",
         "Threshold": t.error_rate,
         "AlarmDescription": f"{endpoint}: share of requests answered 5xx >= {t.error_rate:g} (sm update rolls back)"},
        {**common, "AlarmName": latency, "DatapointsToAlarm": 2, "Namespace": "AWS/SageMaker",
         "MetricName": "ModelLatency", "Dimensions": dims, "ExtendedStatistic": "p99", "Unit": "Microseconds",
         "Threshold": t.p99_ms * 1000.0,
         "AlarmDescription": f"{endpoint}: p99 model latency >= {t.p99_ms:g} ms (sm update rolls back)"},
        {**common, "AlarmName": errors, "DatapointsToAlarm": 1, "Namespace": NAMESPACE, "MetricName": metric,
         "Statistic": "Sum", "Threshold": float(t.container_errors),
         "AlarmDescription": f"{endpoint}: >= {t.container_errors} ERROR lines in the container log per "
                             f"{t.period_s} s (sm update rolls back)"},
    ]
    return metric_filter, alarms


def put(target: AwsTarget, metric_filter: dict, alarms: list[dict]) -> list[str]:
    """Create or update the metric filter and the alarms (both calls are idempotent); their names. The alarms' Tags
    also go on a log group created here, and on an alarm that existed already with TagResource (PutMetricAlarm
    ignores the Tags of an alarm it updates)."""
    tags = alarms[0].get("Tags") if alarms else None
    logs = target.client("logs")
    try:
        aws.aws_call("PutMetricFilter", logs.put_metric_filter, **metric_filter)
    except UserError as e:
        if "ResourceNotFound" not in str(e):
            raise
        # an endpoint that never logged yet: the group SageMaker will write to is created here
        log.info("log group %s does not exist yet: creating it for the container-error metric",
                 metric_filter["logGroupName"])
        _tagging("CreateLogGroup", logs.create_log_group, "logs:CreateLogGroup and logs:TagResource",
                 **log_group_request(metric_filter["logGroupName"], tags))
        aws.aws_call("PutMetricFilter", logs.put_metric_filter, **metric_filter)
    cw = target.client("cloudwatch")
    names = [a["AlarmName"] for a in alarms]
    existing = aws.aws_call("DescribeAlarms", cw.describe_alarms, AlarmNames=names)["MetricAlarms"] if tags else []
    for a in alarms:
        _tagging(f"PutMetricAlarm {a['AlarmName']}", cw.put_metric_alarm,
                 "cloudwatch:PutMetricAlarm and cloudwatch:TagResource" if tags else "", **a)
    for a in existing:
        _tagging(f"TagResource {a['AlarmName']}", cw.tag_resource, "cloudwatch:TagResource",
                 ResourceARN=a["AlarmArn"], Tags=tags)
    return names


def _tagging(what: str, fn, needs: str, **request):
    """`aws.aws_call` of a request that tags (sm update always sends the default tags): an AccessDenied names the
    permissions it takes (`needs`), tagging included, which a policy written before the alarms were tagged lacks."""
    try:
        return aws.aws_call(what, fn, **request)
    except UserError as e:
        if not needs or "AccessDenied" not in str(e):
            raise
        raise UserError(f"{e}; sm update tags what it creates (the default tags at least), so the caller needs "
                        f"{needs} (README: Updating an endpoint); nothing was changed on SageMaker yet") from None


def log_group_request(group: str, tags: list[dict] | None) -> dict:
    """CreateLogGroup of the group an endpoint that never logged lacks (`put`), with the alarms' tags."""
    return {"logGroupName": group, **({"tags": {t["Key"]: t["Value"] for t in tags}} if tags else {})}


def delete_requests(endpoint: str) -> list[tuple[str, str, dict]]:
    """(service, API, request) of what `sm delete` removes of `put`'s work for `endpoint` (a dry run prints them)."""
    return [("cloudwatch", "DeleteAlarms", {"AlarmNames": names(endpoint)}),
            ("logs", "DeleteMetricFilter", {"logGroupName": log_group(endpoint), "filterName": filter_name(endpoint)})]


def delete(target: AwsTarget, endpoint: str) -> list[str]:
    """Undo `put` for `endpoint` where its alarms and metric filter exist (they bill monthly); what went."""
    gone = []
    cw = target.client("cloudwatch")
    found = [a["AlarmName"] for a in aws.aws_call("DescribeAlarms", cw.describe_alarms,
                                                  AlarmNames=names(endpoint))["MetricAlarms"]]
    if found:
        aws.aws_call("DeleteAlarms", cw.delete_alarms, AlarmNames=found)
        gone += [f"alarm {a}" for a in found]
    logs = target.client("logs")
    try:
        filters = aws.aws_call("DescribeMetricFilters", logs.describe_metric_filters, logGroupName=log_group(endpoint),
                               filterNamePrefix=filter_name(endpoint))["metricFilters"]
    except UserError as e:  # no log group: nothing was ever logged or filtered
        if not aws.not_found(e):
            raise
        filters = []
    for f in filters:
        if f["filterName"] == filter_name(endpoint):
            aws.aws_call("DeleteMetricFilter", logs.delete_metric_filter, logGroupName=log_group(endpoint),
                         filterName=f["filterName"])
            gone.append(f"metric filter {f['filterName']}")
    return gone


def states(target: AwsTarget, alarm_names: list[str]) -> dict[str, str]:
    """DescribeAlarms on `alarm_names` -> {name: StateValue (OK, ALARM, INSUFFICIENT_DATA)} of those that exist."""
    cw = target.client("cloudwatch")
    got = aws.aws_call("DescribeAlarms", cw.describe_alarms, AlarmNames=alarm_names,
                       AlarmTypes=["MetricAlarm", "CompositeAlarm"])
    described = got.get("MetricAlarms", []) + got.get("CompositeAlarms", [])
    return {a["AlarmName"]: a.get("StateValue", "") for a in described}


def check_named(target: AwsTarget, alarm_names: list[str]) -> dict[str, str]:
    """Alarms the user names must exist (SageMaker would accept a missing one and never roll back on it); their
    states."""
    found = states(target, alarm_names)
    missing = [n for n in alarm_names if n not in found]
    if missing:
        raise UserError(f"--alarm {', '.join(missing)}: no such CloudWatch alarm in {target.resolved_region()} "
                        "(names are case-sensitive; aws cloudwatch describe-alarms)")
    return found


def check_quiet(found: dict[str, str], ignore: bool = False) -> None:
    """Refuse an update whose rollback alarm is already in ALARM: SageMaker would roll it back at once (unless
    `ignore`, --ignore-alarm-state)."""
    firing = sorted(n for n, state in found.items() if state == "ALARM")
    if firing and not ignore:
        raise UserError(f"rollback alarm {', '.join(firing)} is already in ALARM: SageMaker would roll the update "
                        "back at once. Fix what it reports, or wait for it to return to OK (after sm rollback: its "
                        "next evaluation period); --ignore-alarm-state updates anyway")
    if firing:
        log.warning("rollback alarm(s) %s already in ALARM: updating anyway (--ignore-alarm-state)",
                    ", ".join(firing))
