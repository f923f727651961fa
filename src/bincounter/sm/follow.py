"""Follow what the other `sm` commands started, whatever its kind (training job, tuning job, transform job,
endpoint), with boto3 (DescribeX, CloudWatch Logs): its `status`, its log (`print_logs`), and `wait` until it ends
(`--wait` of sm train/tune/batch).

The kind is found by asking for each in turn (`--kind` skips the search). Logs live where SageMaker writes them:
`/aws/sagemaker/TrainingJobs` and `/aws/sagemaker/TransformJobs` (one stream per instance, prefixed with the
job name) and `/aws/sagemaker/Endpoints/NAME`. A tuning job has no log of its own: its best (else latest)
training job's is shown.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import time

from .. import aws
from ..errors import UserError
from .target import AwsTarget

log = logging.getLogger("bincounter")
KINDS = ("training", "tuning", "transform", "endpoint")
_FINAL = {"Completed", "Failed", "Stopped", "InService", "OutOfService", "Deleting"}


def _describe(sm, kind: str, name: str) -> dict:
    call = {"training": (sm.describe_training_job, "TrainingJobName"),
            "tuning": (sm.describe_hyper_parameter_tuning_job, "HyperParameterTuningJobName"),
            "transform": (sm.describe_transform_job, "TransformJobName"),
            "endpoint": (sm.describe_endpoint, "EndpointName")}[kind]
    return aws.aws_call(f"{kind} {name}", call[0], **{call[1]: name})


def find(sm, name: str, kind: str | None, region: str) -> tuple[str, dict]:
    """(kind, description) of the first kind that has NAME."""
    for k in ([kind] if kind else KINDS):
        try:
            return k, _describe(sm, k, name)
        except UserError as e:
            if not aws.not_found(e):
                raise
    kinds = ({"endpoint": "endpoint"}.get(kind, f"{kind} job") if kind
             else "training job, tuning job, transform job or endpoint")
    raise UserError(f"{name}: no {kinds} of that name in {region} (names are case-sensitive; the commands "
                    "print them on stdout as {\"created\": ..., \"name\": ...})")


def _iso(t) -> str | None:
    return t.isoformat(timespec="seconds") if isinstance(t, _dt.datetime) else t


def summary(kind: str, d: dict) -> dict:
    """One JSON-able line: what it is, where it stands, why it failed, how long it has run."""
    status_key = {"training": "TrainingJobStatus", "tuning": "HyperParameterTuningJobStatus",
                  "transform": "TransformJobStatus", "endpoint": "EndpointStatus"}[kind]
    name_key = {"training": "TrainingJobName", "tuning": "HyperParameterTuningJobName",
                "transform": "TransformJobName", "endpoint": "EndpointName"}[kind]
    out = {"kind": kind, "name": d.get(name_key), "status": d.get(status_key)}
    if d.get("SecondaryStatus"):
        out["detail"] = d["SecondaryStatus"]
    if d.get("FailureReason"):
        out["failure_reason"] = d["FailureReason"]
    out["created"] = _iso(d.get("CreationTime"))
    end = d.get("TrainingEndTime") or d.get("TransformEndTime") or d.get("HyperParameterTuningEndTime")
    if isinstance(d.get("CreationTime"), _dt.datetime):
        stop = end if isinstance(end, _dt.datetime) else _dt.datetime.now(d["CreationTime"].tzinfo)
        out["elapsed_s"] = int((stop - d["CreationTime"]).total_seconds())
    if kind == "training":
        rc = d.get("ResourceConfig", {})
        out["instances"] = f"{rc.get('InstanceCount')} x {rc.get('InstanceType')}"
        out["billable_s"] = d.get("BillableTimeInSeconds")
        out["model"] = d.get("ModelArtifacts", {}).get("S3ModelArtifacts")
        metrics = {m["MetricName"]: m["Value"] for m in d.get("FinalMetricDataList", [])}
        if metrics:
            out["final_metrics"] = metrics
    elif kind == "tuning":
        out["trials"] = d.get("TrainingJobStatusCounters")
        best = d.get("BestTrainingJob") or {}
        if best:
            out["best"] = {"job": best.get("TrainingJobName"),
                           "objective": (best.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value"),
                           "hyperparameters": {k: v.strip('"') for k, v in
                                               best.get("TunedHyperParameters", {}).items()}}
    elif kind == "transform":
        out["output"] = d.get("TransformOutput", {}).get("S3OutputPath")
    elif kind == "endpoint":
        out.update(_endpoint(d))
    return {k: v for k, v in out.items() if v is not None}


def _endpoint(d: dict) -> dict:
    """What serves (config, variants) and an update in progress (sm update): the config it goes to, its variants'
    steps (Creating, ActivatingTraffic, Baking, ...), and how it shifts traffic and on which alarms it rolls back."""
    def variant(v: dict, steps: bool = False) -> dict:
        got = {"variant": v.get("VariantName"), "instances": v.get("CurrentInstanceCount"),
               "weight": v.get("CurrentWeight"),
               "steps": [s.get("Status") for s in v.get("VariantStatus", [])] if steps else None}
        return {k: x for k, x in got.items() if x is not None}

    out = {"config": d.get("EndpointConfigName"), "variants": [variant(v) for v in d.get("ProductionVariants", [])]}
    if pending := d.get("PendingDeploymentSummary"):
        out["update_in_progress"] = {
            "to_config": pending.get("EndpointConfigName"), "started": _iso(pending.get("StartTime")),
            "variants": [variant(v, steps=True) for v in pending.get("ProductionVariants", [])]}
    if last := d.get("LastDeploymentConfig"):
        routing = (last.get("BlueGreenUpdatePolicy") or {}).get("TrafficRoutingConfiguration") or {}
        rollback = last.get("AutoRollbackConfiguration") or {}
        out["last_deployment"] = {
            "traffic": routing.get("Type"), "bake_s": routing.get("WaitIntervalInSeconds"),
            "step": routing.get("CanarySize") or routing.get("LinearStepSize"),
            "rollback_alarms": [a["AlarmName"] for a in rollback.get("Alarms", [])]}
    return out


def status(sm, name: str, kind: str | None, region: str) -> dict:
    k, d = find(sm, name, kind, region)
    out = summary(k, d)
    if k == "endpoint" and d.get("EndpointConfigName"):  # which model each live variant serves
        try:
            cfg = aws.aws_call("DescribeEndpointConfig", sm.describe_endpoint_config,
                               EndpointConfigName=d["EndpointConfigName"])
        except UserError:
            return out  # the config may be gone (deleted by hand); the endpoint's own state is still shown
        models = {v["VariantName"]: v.get("ModelName") for v in cfg.get("ProductionVariants", [])}
        for v in out.get("variants", []):
            v["model"] = models.get(v["variant"])
    return out


def _log_target(sm, kind: str, d: dict, name: str) -> tuple[str, str | None, str]:
    """(log group, stream prefix, what it is)."""
    if kind == "training":
        return "/aws/sagemaker/TrainingJobs", f"{name}/", f"training job {name}"
    if kind == "transform":
        return "/aws/sagemaker/TransformJobs", f"{name}/", f"transform job {name}"
    if kind == "endpoint":
        return f"/aws/sagemaker/Endpoints/{name}", None, f"endpoint {name}"
    best = (d.get("BestTrainingJob") or {}).get("TrainingJobName")
    if not best:
        jobs = aws.aws_call("ListTrainingJobsForHyperParameterTuningJob",
                            sm.list_training_jobs_for_hyper_parameter_tuning_job, HyperParameterTuningJobName=name,
                            SortBy="CreationTime", SortOrder="Descending", MaxResults=1)["TrainingJobSummaries"]
        if not jobs:
            raise UserError(f"tuning job {name} has started no training job yet: nothing to show")
        best = jobs[0]["TrainingJobName"]
        log.info("tuning job %s has no best training job yet; showing its latest, %s", name, best)
    else:
        log.info("tuning job %s: showing its best training job, %s", name, best)
    return "/aws/sagemaker/TrainingJobs", f"{best}/", f"training job {best}"


def events(logs, group: str, prefix: str | None, start_ms: int | None = None):
    """Every event of the group (streams with the prefix), oldest first."""
    kw = {"logGroupName": group, **({"logStreamNamePrefix": prefix} if prefix else {}),
          **({"startTime": start_ms} if start_ms else {})}
    out = []
    while True:
        page = aws.aws_call(f"CloudWatch Logs {group}", logs.filter_log_events, **kw)
        # (the prefix is applied here too: moto's server ignores logStreamNamePrefix)
        out += [e for e in page.get("events", []) if not prefix or e.get("logStreamName", "").startswith(prefix)]
        if not page.get("nextToken") or not page.get("events"):
            break
        kw["nextToken"] = page["nextToken"]
    return sorted(out, key=lambda e: (e["timestamp"], e.get("logStreamName", ""), e.get("eventId", "")))


def print_logs(sm, logs, name: str, kind: str | None, region: str, tail: int, follow: bool,
               poll_s: float = 10.0) -> int:
    k, d = find(sm, name, kind, region)
    group, prefix, what = _log_target(sm, k, d, name)
    try:
        evs = events(logs, group, prefix)
    except UserError as e:
        if "ResourceNotFound" not in str(e):
            raise
        evs = []
    if not evs and not follow:
        log.warning("%s has no log events yet (%s, streams %s*); status: %s", what, group, prefix or "",
                    summary(k, d).get("status"))
        return 0
    shown = evs[-tail:] if tail else evs
    seen = {_key(e) for e in evs}
    for e in shown:
        _print_event(e, prefix)
    while follow:
        current = summary(k, _describe(sm, k, name))["status"]
        if current in _FINAL:
            log.info("%s: %s", what, current)
            break
        time.sleep(poll_s)
        last = max((e["timestamp"] for e in evs), default=None)
        try:
            new = [e for e in events(logs, group, prefix, last) if _key(e) not in seen]
        except UserError as err:
            if "ResourceNotFound" not in str(err):
                raise
            new = []
        for e in new:
            seen.add(_key(e))
            evs.append(e)
            _print_event(e, prefix)
    return 0


def _key(e: dict) -> tuple:
    return e.get("logStreamName"), e.get("eventId"), e["timestamp"]


def _print_event(e: dict, prefix: str | None) -> None:
    stream = e.get("logStreamName", "")
    host = stream[len(prefix):] if prefix and stream.startswith(prefix) else stream
    when = _dt.datetime.fromtimestamp(e["timestamp"] / 1000, _dt.UTC).strftime("%H:%M:%S")
    print(f"{when} [{host}] {e.get('message', '').rstrip()}", flush=True)


def wait(target: AwsTarget, name: str, kind: str, poll_s: float = 30.0) -> int:
    """`--wait` of sm train/tune/batch: a job's log until it ends (a tuning job: its progress lines, then its
    best job), like the SDK's wait=True. A job that does not complete is one error line."""
    sm, region = target.client(), target.resolved_region()
    if kind == "tuning":
        last = None
        while True:
            st = status(sm, name, kind, region)
            line = json.dumps({k: st.get(k) for k in ("status", "trials", "best") if st.get(k) is not None})
            if line != last:
                log.info("tuning job %s: %s", name, line)
                last = line
            if st["status"] in _FINAL:
                break
            time.sleep(poll_s)
    else:
        logs = target.client("logs")
        print_logs(sm, logs, name, kind, region, tail=0, follow=True, poll_s=min(poll_s, 10.0))
        st = status(sm, name, kind, region)
    if st["status"] not in ("Completed", "InService"):
        raise UserError(f"{kind} job {name} ended {st['status']}"
                        + (f": {st['failure_reason']}" if st.get("failure_reason") else "")
                        + f" (bincounter sm logs {name})")
    log.info("%s job %s: Completed", kind, name)
    return 0
