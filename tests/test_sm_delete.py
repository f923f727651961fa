"""`sm delete --endpoint` also removes what `sm update` added and bills monthly: its CloudWatch alarms and the log
metric filter (moto in server mode: SageMaker, CloudWatch, CloudWatch Logs)."""

from __future__ import annotations

import json

from bincounter.sm import alarms

from .conftest import run_cli
from .test_sm_update import ENV, IMAGE, ROLE, _client, _docs


def test_delete_removes_the_update_alarms_and_metric_filter(moto_endpoint):
    sm, cw, logs = (_client(moto_endpoint, s) for s in ("sagemaker", "cloudwatch", "logs"))
    sm.create_model(ModelName="bc-del", ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": IMAGE, "ModelDataUrl": "s3://bkt/m.tar.gz"})
    sm.create_endpoint_config(EndpointConfigName="bc-del", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "bc-del", "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.xlarge"}])
    sm.create_endpoint(EndpointName="bc-del", EndpointConfigName="bc-del")
    metric_filter, requests = alarms.requests("bc-del", "AllTraffic", alarms.Thresholds())
    logs.create_log_group(logGroupName=metric_filter["logGroupName"])
    logs.put_metric_filter(**metric_filter)
    for r in requests:
        cw.put_metric_alarm(**r)
    cw.put_metric_alarm(**{**requests[0], "AlarmName": "someone-elses"})  # not ours: kept

    proc = run_cli("sm", "delete", "--endpoint", "bc-del", "--endpoint-url", moto_endpoint, env=ENV)
    assert proc.returncode == 0, proc.stderr
    deleted = json.loads(proc.stdout)["deleted"]
    assert sorted(d for d in deleted if d.startswith(("alarm", "metric filter"))) == sorted(
        [*(f"alarm {n}" for n in alarms.names("bc-del")), f"metric filter {alarms.filter_name('bc-del')}"])
    left = {a["AlarmName"] for a in cw.describe_alarms()["MetricAlarms"]}  # the moto server is the session's
    assert "someone-elses" in left and not left & set(alarms.names("bc-del"))
    assert logs.describe_metric_filters(logGroupName=metric_filter["logGroupName"])["metricFilters"] == []

    again = run_cli("sm", "delete", "--endpoint", "bc-del", "--endpoint-url", moto_endpoint, env=ENV)
    assert again.returncode == 0, again.stderr  # nothing of sm update's left: nothing listed, no error
    assert not [d for d in json.loads(again.stdout)["deleted"] if d.startswith(("alarm", "metric filter"))]


def test_a_delete_dry_run_shows_the_alarm_clean_up():
    proc = run_cli("sm", "delete", "--endpoint", "bc-x", "--region", "us-east-1", "--dry-run", env=ENV)
    assert proc.returncode == 0, proc.stderr
    docs = {d["api"]: d["request"] for d in _docs(proc.stdout)}
    assert docs["DeleteAlarms"] == {"AlarmNames": alarms.names("bc-x")}
    assert docs["DeleteMetricFilter"]["filterName"] == alarms.filter_name("bc-x")
