"""`sm update` (blue/green endpoint update with alarm rollback), `sm rollback`, and what `sm status` says about an
endpoint. Real parts: moto in server mode for SageMaker (models, endpoint configs, endpoints, tags), CloudWatch
(alarms, SetAlarmState), CloudWatch Logs (the metric filter) and Application Auto Scaling; botocore's validator for
every request a dry run prints.

Mocked, because moto (5.2) cannot do it: UpdateEndpoint. `_fake_update_endpoint` adds it to the moto server:
it checks what SageMaker checks (the endpoint InService, the config and variant names existing) and records the
update as SageMaker shows one in progress (EndpointStatus Updating, PendingDeploymentSummary, LastDeploymentConfig);
`_sagemaker_finishes` / `_sagemaker_rolls_back` stand for SageMaker's deployment engine ending it."""

from __future__ import annotations

import json

import boto3
import pytest

from bincounter import __version__
from bincounter.errors import UserError
from bincounter.sm import alarms, update, validate

from .conftest import assert_one_line_error, run_cli
from .test_sm_jobs import _run_offline, offline  # noqa: F401 - offline is a fixture

ROLE = "arn:aws:iam::123456789012:role/bincounter-sm"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/bincounter:abc123"
ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def _docs(stdout: str) -> list[dict]:
    return [json.loads(d) for d in stdout.replace("}\n{", "}\x00{").split("\x00")] if stdout.strip() else []


def _client(endpoint: str, service: str = "sagemaker"):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


# ------------------------------------------------------------------ UpdateEndpoint, which moto lacks
def _backend():
    from moto.sagemaker.models import sagemaker_backends

    return sagemaker_backends["123456789012"]["us-east-1"]


def _fake_update_endpoint() -> None:
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow
    from moto.sagemaker.exceptions import ValidationError
    from moto.sagemaker.responses import SageMakerResponse

    if hasattr(SageMakerResponse, "update_endpoint"):
        return

    def update_endpoint(self) -> ActionResult:
        be, name = self.sagemaker_backend, self._get_param("EndpointName")
        ep, cfg = be.endpoints.get(name), be.endpoint_configs.get(self._get_param("EndpointConfigName"))
        if ep is None:
            raise ValidationError(message=f"Could not find endpoint '{name}'.")
        if ep.endpoint_status != "InService":
            raise ValidationError(message=f"Cannot update in-progress endpoint '{ep.arn}'.")
        if cfg is None:
            raise ValidationError(message="Could not find endpoint configuration "
                                          f"'{self._get_param('EndpointConfigName')}'.")
        live = {v["VariantName"] for v in ep.production_variants}
        if {v["VariantName"] for v in cfg.production_variants} != live:
            raise ValidationError(message="a blue/green update keeps the variant names")
        ep.endpoint_status = "Updating"
        ep.pending_deployment_summary = {
            "EndpointConfigName": cfg.endpoint_config_name, "StartTime": utcnow(),
            "ProductionVariants": [{"VariantName": v["VariantName"], "CurrentInstanceCount": 0,
                                    "DesiredInstanceCount": v["InitialInstanceCount"],
                                    "VariantStatus": [{"Status": "Creating"}]} for v in cfg.production_variants]}
        ep.last_deployment_config = self._get_param("DeploymentConfig")
        ep.retained = self._get_param("RetainAllVariantProperties")
        return ActionResult({"EndpointArn": ep.arn})

    SageMakerResponse.update_endpoint = update_endpoint


def _sagemaker_finishes(name: str) -> None:
    ep = _backend().endpoints[name]
    cfg = _backend().endpoint_configs[ep.pending_deployment_summary["EndpointConfigName"]]
    ep.endpoint_config_name = cfg.endpoint_config_name
    ep.production_variants = ep._process_production_variants(cfg.production_variants)
    ep.endpoint_status, ep.pending_deployment_summary = "InService", None


def _sagemaker_rolls_back(name: str) -> None:
    ep = _backend().endpoints[name]
    ep.endpoint_status, ep.pending_deployment_summary = "InService", None


@pytest.fixture(scope="module")
def moto(moto_endpoint):
    _fake_update_endpoint()
    _client(moto_endpoint, "s3").create_bucket(Bucket="bkt")
    return moto_endpoint


def _live_endpoint(moto: str, name: str, count: int = 1) -> None:
    """An endpoint as sm deploy leaves it (model, config, endpoint named alike), with what an update must keep:
    an environment variable, data capture, a tag; and the log group SageMaker writes the container's log to."""
    sm = _client(moto)
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, Tags=[{"Key": "cost-centre", "Value": "wh-7"}],
                    PrimaryContainer={"Image": IMAGE, "ModelDataUrl": "s3://bkt/old/model.tar.gz",
                                      "Environment": {"BINCOUNTER_BATCH_SIZE": "8"}})
    sm.create_endpoint_config(EndpointConfigName=name, Tags=[{"Key": "team", "Value": "bins"}], ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": name, "InstanceType": "ml.m5.xlarge",
         "InitialInstanceCount": count, "InitialVariantWeight": 1.0}],
        DataCaptureConfig={"EnableCapture": True, "InitialSamplingPercentage": 20,
                           "DestinationS3Uri": "s3://bkt/capture", "CaptureOptions": [{"CaptureMode": "Input"}]})
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    _client(moto, "logs").create_log_group(logGroupName=alarms.log_group(name))


DEFAULT_TAGS = {"project": "bincounter", "bincounter:version": __version__}


def _tag_dict(answer: dict) -> dict:
    return {t["Key"]: t["Value"] for t in answer["Tags"]}


def _cli(moto: str, *args) -> tuple[int, list[dict], str]:
    proc = run_cli("sm", *args, "--endpoint-url", moto, env=ENV)
    return proc.returncode, (_docs(proc.stdout) if proc.returncode == 0 else []), proc.stderr


# ------------------------------------------------------------------ against moto
def test_update_copies_the_live_endpoint_and_rolls_back_on_alarms_then_by_hand(moto):
    name = "bc-upd"
    _live_endpoint(moto, name, count=2)
    sm, cw = _client(moto), _client(moto, "cloudwatch")
    rc, out, err = _cli(moto, "update", name, "--model-data", "s3://bkt/new/model.tar.gz", "--bake", "120")
    assert rc == 0, err
    got = out[0]
    new = got["config"]
    assert got["updating"] == name and got["previous_config"] == name and new.startswith(f"{name}-")
    assert f"bincounter sm rollback {name}" in err and "during the update both fleets bill" in err

    # the new model: the live container with the new model.tar.gz; role, image and environment kept
    model = sm.describe_model(ModelName=new)
    assert model["PrimaryContainer"]["ModelDataUrl"] == "s3://bkt/new/model.tar.gz"
    assert model["PrimaryContainer"]["Image"] == IMAGE and model["ExecutionRoleArn"] == ROLE
    assert model["PrimaryContainer"]["Environment"] == {"BINCOUNTER_BATCH_SIZE": "8"}
    assert _tag_dict(sm.list_tags(ResourceArn=model["ModelArn"])) == {"cost-centre": "wh-7", **DEFAULT_TAGS}
    # the new config: the live one pointing at it; capture and tags kept, the config it replaces named
    cfg = sm.describe_endpoint_config(EndpointConfigName=new)
    (variant,) = cfg["ProductionVariants"]
    assert (variant["ModelName"], variant["VariantName"], variant["InstanceType"], variant["InitialInstanceCount"]) \
        == (new, "AllTraffic", "ml.m5.xlarge", 2)
    assert cfg["DataCaptureConfig"]["DestinationS3Uri"] == "s3://bkt/capture"
    tags = _tag_dict(sm.list_tags(ResourceArn=cfg["EndpointConfigArn"]))
    assert tags == {"team": "bins", **DEFAULT_TAGS, update.PREVIOUS_TAG: name}

    # the update SageMaker was asked for: a canary of one instance (2 instances), 120 s baking, three alarms
    ep = sm.describe_endpoint(EndpointName=name)
    dc = ep["LastDeploymentConfig"]
    routing = dc["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert routing == {"Type": "CANARY", "WaitIntervalInSeconds": 120,
                       "CanarySize": {"Type": "INSTANCE_COUNT", "Value": 1}}
    names = alarms.names(name)
    assert [a["AlarmName"] for a in dc["AutoRollbackConfiguration"]["Alarms"]] == names
    # ... and the alarms exist in CloudWatch, on the endpoint's variant, the metric filter on its log group
    made = {a["AlarmName"]: a for a in cw.describe_alarms(AlarmNames=names)["MetricAlarms"]}
    assert set(made) == set(names)
    rate, p99, errors = (made[n] for n in names)
    assert (rate["MetricName"], rate["Statistic"], rate["Threshold"]) == ("Invocation5XXErrors", "Average", 0.01)
    assert {d["Name"]: d["Value"] for d in rate["Dimensions"]} == {"EndpointName": name, "VariantName": "AllTraffic"}
    assert (p99["MetricName"], p99["ExtendedStatistic"], p99["Threshold"]) == ("ModelLatency", "p99", 2e6)
    (mf,) = _client(moto, "logs").describe_metric_filters(logGroupName=alarms.log_group(name))["metricFilters"]
    assert mf["metricTransformations"][0]["metricName"] == errors["MetricName"] == f"{name}/ContainerErrors"
    assert mf["filterPattern"] == alarms.ERROR_PATTERN

    # sm status: the old config still serves; the update in progress, its traffic mode and alarms
    rc, (st,), err = _cli(moto, "status", name, "--kind", "endpoint")
    assert rc == 0, err
    assert st["status"] == "Updating" and st["config"] == name and st["variants"][0]["model"] == name
    assert st["update_in_progress"]["to_config"] == new
    assert st["update_in_progress"]["variants"][0]["steps"] == ["Creating"]
    assert st["last_deployment"]["traffic"] == "CANARY" and st["last_deployment"]["rollback_alarms"] == names

    # a second update while this one runs: one line, pointing at status and rollback
    proc = run_cli("sm", "update", name, "--model-data", "s3://bkt/x.tar.gz", "--endpoint-url", moto, env=ENV)
    assert_one_line_error(proc, "Updating", f"sm rollback {name}")

    # rollback during the update: an alarm goes to ALARM (SageMaker then rolls back)
    rc, (rb,), err = _cli(moto, "rollback", name)
    assert rc == 0, err
    assert rb["alarm"] == names[0]
    state = cw.describe_alarms(AlarmNames=[names[0]])["MetricAlarms"][0]
    assert state["StateValue"] == "ALARM" and "rolled back by hand" in state["StateReason"]
    _sagemaker_rolls_back(name)
    assert sm.describe_endpoint(EndpointName=name)["EndpointConfigName"] == name

    # update again, SageMaker completes it: status shows the new config and model live
    rc, out, err = _cli(moto, "update", name, "--model-data", "s3://bkt/new2/model.tar.gz", "--traffic",
                        "linear:50%")
    assert rc == 0, err
    new2 = out[0]["config"]
    _sagemaker_finishes(name)
    rc, (st,), err = _cli(moto, "status", name, "--kind", "endpoint")
    assert st["status"] == "InService" and st["config"] == new2 and st["variants"][0]["model"] == new2
    assert "update_in_progress" not in st

    # rollback after it: back to the config it replaced, blue/green all at once
    rc, (rb,), err = _cli(moto, "rollback", name)
    assert rc == 0, err
    assert (rb["from_config"], rb["to_config"]) == (new2, name)
    ep = sm.describe_endpoint(EndpointName=name)
    assert ep["PendingDeploymentSummary"]["EndpointConfigName"] == name
    assert ep["LastDeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["Type"] == \
        "ALL_AT_ONCE"
    _sagemaker_finishes(name)
    assert sm.describe_endpoint(EndpointName=name)["EndpointConfigName"] == name

    # the first config was not made by sm update: nothing to go back to unless named
    proc = run_cli("sm", "rollback", name, "--endpoint-url", moto, env=ENV)
    assert_one_line_error(proc, "--to CONFIG")


def test_the_alarms_and_what_the_update_makes_are_tagged_like_the_endpoint(moto):
    """Issue 27: sm update tags its new model and config, its rollback alarms and the log group it creates: the
    live endpoint's tags (its config's, for the alarms), the default tags where it has none of that key
    (bincounter:version: this version, which made them), then --tag. Read back from moto (ListTagsForResource for
    the alarms). CloudWatch ignores PutMetricAlarm's Tags when the alarm exists (moto does not:
    it applies them), so a second update's TagResource per alarm is read from the requests as they reached moto."""
    from .test_data_s3 import FaultProxy

    name = "bc-upd-tags"
    _live_endpoint(moto, name)
    sm, cw = _client(moto), _client(moto, "cloudwatch")
    cfg_arn = sm.describe_endpoint_config(EndpointConfigName=name)["EndpointConfigArn"]
    sm.add_tags(ResourceArn=cfg_arn, Tags=[{"Key": "project", "Value": "bins"},
                                           {"Key": "bincounter:version", "Value": "0.0.1"}])  # as deployed
    rc, (got,), err = _cli(moto, "update", name, "--model-data", "s3://bkt/t.tar.gz", "--tag", "owner=ml")
    assert rc == 0, err
    like_the_endpoint = {"team": "bins", "project": "bins", "bincounter:version": __version__, "owner": "ml"}
    for a in cw.describe_alarms(AlarmNames=alarms.names(name))["MetricAlarms"]:
        assert _tag_dict(cw.list_tags_for_resource(ResourceARN=a["AlarmArn"])) == like_the_endpoint, a["AlarmName"]
    new_cfg = sm.describe_endpoint_config(EndpointConfigName=got["config"])["EndpointConfigArn"]
    assert _tag_dict(sm.list_tags(ResourceArn=new_cfg)) == {**like_the_endpoint, update.PREVIOUS_TAG: name}
    new_model = sm.describe_model(ModelName=got["model"])["ModelArn"]
    assert _tag_dict(sm.list_tags(ResourceArn=new_model)) == {"cost-centre": "wh-7", **DEFAULT_TAGS, "owner": "ml"}
    # the log group, created where the endpoint never logged (moto's PutMetricFilter needs none: checked offline)
    tags = [{"Key": k, "Value": v} for k, v in like_the_endpoint.items()]
    group = alarms.log_group_request(alarms.log_group(name), tags)
    validate.check("CreateLogGroup", group, "logs")
    assert group["tags"] == like_the_endpoint

    _sagemaker_finishes(name)
    proxy = FaultProxy(moto)
    try:
        rc, _, err = _cli(proxy.url, "update", name, "--model-data", "s3://bkt/t2.tar.gz", "--tag", "owner=ops")
    finally:
        proxy.close()
    assert rc == 0, err
    sent = [(target or "", body) for target, body in proxy.sent]
    tagged = [b for t, b in sent if t.endswith(".TagResource") or b.startswith(b"Action=TagResource")]
    assert len(tagged) == 3 and all(b"owner" in b for b in tagged), sent  # the alarms existed
    for a in cw.describe_alarms(AlarmNames=alarms.names(name))["MetricAlarms"]:
        assert _tag_dict(cw.list_tags_for_resource(ResourceARN=a["AlarmArn"]))["owner"] == "ops"



def test_too_many_tags_on_the_live_endpoint_refuse_the_update_before_anything_is_written(moto):
    """49 tags on the live config + the defaults + one --tag: 52 on the alarms, 53 on the config (with the one naming
    the config it replaces); AWS takes 50. Refused in one line before the metric filter, the alarms or the model
    (a real run would otherwise stop midway, the metric filter and alarms put)."""
    name = "bc-upd-many-tags"
    _live_endpoint(moto, name)  # its config has one tag (team=bins)
    sm, cw, logs = _client(moto), _client(moto, "cloudwatch"), _client(moto, "logs")
    cfg_arn = sm.describe_endpoint_config(EndpointConfigName=name)["EndpointConfigArn"]
    sm.add_tags(ResourceArn=cfg_arn, Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(48)])
    models = {m["ModelName"] for m in sm.list_models()["Models"]}
    proc = run_cli("sm", "update", name, "--model-data", "s3://bkt/m.tar.gz", "--tag", "owner=ml", "--endpoint-url",
                   moto, env=ENV)
    assert_one_line_error(proc, "53 tags on the new endpoint config (49 from the live endpoint config, 2 from the "
                          "defaults, 1 from --tag, 1 from sm update)", "at most 50")
    assert {m["ModelName"] for m in sm.list_models()["Models"]} == models
    assert not cw.describe_alarms(AlarmNames=alarms.names(name))["MetricAlarms"]
    assert not logs.describe_metric_filters(logGroupName=alarms.log_group(name))["metricFilters"]
    # the alarms' list alone (the config's less the one naming the replaced config): 52
    own = [{"Key": f"k{i}", "Value": "v"} for i in range(49)]
    spec = update.UpdateSpec(endpoint=name, tags=(("owner", "ml"),), default_tags=tuple(DEFAULT_TAGS.items()))
    assert len(spec.tags_from(own[:47], "alarms")) == 50
    with pytest.raises(UserError, match=r"^52 tags on the new alarms \(49 from the live endpoint config, 2 from the "
                                        r"defaults, 1 from --tag\)"):
        spec.tags_from(own, "alarms")


def test_the_project_configs_tags_are_checked_as_deploy_checks_them(tmp_path):
    """A project config's tag AWS refuses: sm deploy refused it, sm update printed it in 5 requests (issue: only
    --tag was checked). Now one line naming the project config, nothing printed; the live model's tags likewise."""
    cfg = tmp_path / "bincounter.toml"
    cfg.write_text('[sm.tags]\n"aws:team" = "v!sion"\n')
    proc = run_cli("sm", "update", "bc-ep", "--model-data", "s3://b/m.tar.gz", "--config", cfg, "--dry-run", env=ENV)
    assert_one_line_error(proc, "tag aws:team=v!sion (from the project config)", "letters, digits")
    assert proc.stdout == ""
    cfg.write_text('[sm.tags]\n"aws:team" = "vision"\n')
    proc = run_cli("sm", "update", "bc-ep", "--model-data", "s3://b/m.tar.gz", "--config", cfg, "--dry-run", env=ENV)
    assert_one_line_error(proc, "tag aws:team=vision (from the project config)", "reserved by AWS")
    spec = update.UpdateSpec(endpoint="bc-ep", default_tags=tuple(DEFAULT_TAGS.items()))
    with pytest.raises(UserError, match=r"^tag team=a\|b \(from the live model\)"):
        spec.tags_from([{"Key": "team", "Value": "a|b"}], "model")


class _Stubbed:
    """A target whose boto3 clients answer from botocore's Stubber (`alarms.put` asks only `client(service)`)."""

    def __init__(self):
        from botocore.stub import Stubber

        self.clients = {s: boto3.client(s, region_name="us-east-1", aws_access_key_id="testing",
                                        aws_secret_access_key="testing") for s in ("logs", "cloudwatch")}
        self.stubs = {s: Stubber(c) for s, c in self.clients.items()}
        for stub in self.stubs.values():
            stub.activate()

    def client(self, service):
        return self.clients[service]


TAGS = [{"Key": "team", "Value": "bins"}, *({"Key": k, "Value": v} for k, v in DEFAULT_TAGS.items())]


def _no_log_group_yet(t: _Stubbed, metric_filter: dict) -> None:
    t.stubs["logs"].add_client_error("put_metric_filter", "ResourceNotFoundException", "The specified log group "
                                     "does not exist.", 400, expected_params=metric_filter)


def test_alarms_put_creates_the_missing_log_group_tagged_then_puts_the_filter_again():
    """An endpoint that never logged has no log group: PutMetricFilter answers ResourceNotFoundException, `put`
    creates the group with the alarms' tags, puts the filter again, then the alarms (each tagged)."""
    t = _Stubbed()
    metric_filter, reqs = alarms.requests("bc-new", "AllTraffic", alarms.Thresholds(), TAGS)
    _no_log_group_yet(t, metric_filter)
    t.stubs["logs"].add_response("create_log_group", {}, {"logGroupName": alarms.log_group("bc-new"),
                                                          "tags": {"team": "bins", **DEFAULT_TAGS}})
    t.stubs["logs"].add_response("put_metric_filter", {}, metric_filter)
    t.stubs["cloudwatch"].add_response("describe_alarms", {"MetricAlarms": []}, {"AlarmNames": alarms.names("bc-new")})
    for a in reqs:
        assert a["Tags"] == TAGS
        t.stubs["cloudwatch"].add_response("put_metric_alarm", {}, a)
    assert alarms.put(t, metric_filter, reqs) == alarms.names("bc-new")
    for stub in t.stubs.values():
        stub.assert_no_pending_responses()


@pytest.mark.parametrize("refused,needs", [("create_log_group", "logs:CreateLogGroup and logs:TagResource"),
                                           ("put_metric_alarm", "cloudwatch:PutMetricAlarm and cloudwatch:TagResource"),
                                           ("tag_resource", "cloudwatch:TagResource")])
def test_a_caller_that_may_not_tag_is_told_which_permission_in_one_line(refused, needs):
    """Every sm update tags its alarms and log group (the default tags): a policy without cloudwatch:TagResource or
    logs:TagResource gets AccessDenied after PutMetricFilter; the line names what it lacks."""
    t = _Stubbed()
    metric_filter, reqs = alarms.requests("bc-new", "AllTraffic", alarms.Thresholds(), TAGS)
    logs, cw = t.stubs["logs"], t.stubs["cloudwatch"]
    denied = {"service_error_code": "AccessDenied" if refused != "create_log_group" else "AccessDeniedException",
              "service_message": "User: arn:aws:iam::123456789012:user/ci is not authorized to perform this action"}
    if refused == "create_log_group":
        _no_log_group_yet(t, metric_filter)
        logs.add_client_error("create_log_group", **denied)
    else:
        logs.add_response("put_metric_filter", {}, metric_filter)
        arn = f"arn:aws:cloudwatch:us-east-1:123456789012:alarm:{reqs[0]['AlarmName']}"
        existing = [{"AlarmName": reqs[0]["AlarmName"], "AlarmArn": arn}] if refused == "tag_resource" else []
        cw.add_response("describe_alarms", {"MetricAlarms": existing})
        if refused == "tag_resource":
            for _ in reqs:
                cw.add_response("put_metric_alarm", {})
        cw.add_client_error(refused, **denied)
    with pytest.raises(UserError) as e:
        alarms.put(t, metric_filter, reqs)
    assert "AccessDenied" in str(e.value) and f"the caller needs {needs}" in str(e.value)
    assert "\n" not in str(e.value)

def test_named_alarms_autoscaling_and_mistakes(moto):
    name = "bc-upd-scaled"
    _live_endpoint(moto, name, count=2)
    aas = _client(moto, "application-autoscaling")
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=f"endpoint/{name}/variant/AllTraffic",
                                 ScalableDimension="sagemaker:variant:DesiredInstanceCount", MinCapacity=1,
                                 MaxCapacity=4)
    # a named alarm must exist
    proc = run_cli("sm", "update", name, "--model-data", "s3://bkt/n.tar.gz", "--alarm", "nope", "--endpoint-url",
                   moto, env=ENV)
    assert_one_line_error(proc, "--alarm nope", "no such CloudWatch alarm")
    # autoscaling refuses a new instance type
    proc = run_cli("sm", "update", name, "--model-data", "s3://bkt/n.tar.gz", "--instance-type", "ml.c6i.xlarge",
                   "--endpoint-url", moto, env=ENV)
    assert_one_line_error(proc, "--instance-type ml.c6i.xlarge", "autoscaling")
    _client(moto, "cloudwatch").put_metric_alarm(
        AlarmName="team-5xx", Namespace="AWS/SageMaker", MetricName="Invocation5XXErrors", Statistic="Sum",
        Period=60, EvaluationPeriods=1, Threshold=1.0, ComparisonOperator="GreaterThanOrEqualToThreshold")
    rc, (got,), err = _cli(moto, "update", name, "--model-data", "s3://bkt/n.tar.gz", "--alarm", "team-5xx",
                           "--image", IMAGE + "-v2")
    assert rc == 0, err
    assert got["alarms"] == ["team-5xx"]
    ep = _backend().endpoints[name]
    assert ep.last_deployment_config["AutoRollbackConfiguration"]["Alarms"] == [{"AlarmName": "team-5xx"}]
    assert ep.retained is True  # the count autoscaling chose is kept
    assert _client(moto).describe_model(ModelName=got["model"])["PrimaryContainer"]["Image"] == IMAGE + "-v2"
    assert not _client(moto, "cloudwatch").describe_alarms(AlarmNames=alarms.names(name))["MetricAlarms"]
    # a missing endpoint: one line
    proc = run_cli("sm", "update", "nope", "--model-data", "s3://bkt/n.tar.gz", "--endpoint-url", moto, env=ENV)
    assert_one_line_error(proc, "nope")


def test_an_alarm_already_firing_refuses_the_update(moto, aws_env, monkeypatch):
    """A rollback alarm already in ALARM would roll the update back at once: refused in one line before anything
    is created, unless --ignore-alarm-state. Our own alarms are read back after they are put, too."""
    name = "bc-upd-firing"
    _live_endpoint(moto, name)
    sm, cw = _client(moto), _client(moto, "cloudwatch")
    cw.put_metric_alarm(AlarmName="ops-5xx", Namespace="AWS/SageMaker", MetricName="Invocation5XXErrors",
                        Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=1.0,
                        ComparisonOperator="GreaterThanOrEqualToThreshold")
    cw.set_alarm_state(AlarmName="ops-5xx", StateValue="ALARM", StateReason="5xx on the live fleet")
    models = {m["ModelName"] for m in sm.list_models()["Models"]}
    proc = run_cli("sm", "update", name, "--model-data", "s3://bkt/f.tar.gz", "--alarm", "ops-5xx",
                   "--endpoint-url", moto, env=ENV)
    assert_one_line_error(proc, "rollback alarm ops-5xx is already in ALARM", "--ignore-alarm-state")
    assert {m["ModelName"] for m in sm.list_models()["Models"]} == models  # nothing created
    assert "PendingDeploymentSummary" not in sm.describe_endpoint(EndpointName=name)
    rc, (got,), err = _cli(moto, "update", name, "--model-data", "s3://bkt/f.tar.gz", "--alarm", "ops-5xx",
                           "--ignore-alarm-state")
    assert rc == 0, err
    assert "ops-5xx already in ALARM: updating anyway" in err
    _sagemaker_finishes(name)
    # our own alarms: put, then read back; moto resets the state of an alarm a put replaces (CloudWatch keeps it),
    # so the read-back is where the firing state is set here
    from bincounter.sm.target import AwsTarget

    real = alarms.states
    monkeypatch.setattr(alarms, "states", lambda target, names: {**real(target, names), names[1]: "ALARM"})
    with pytest.raises(UserError, match=f"rollback alarm {alarms.names(name)[1]} is already in ALARM"):
        update.update(update.UpdateSpec(endpoint=name, model_data="s3://bkt/g.tar.gz"),
                      AwsTarget(endpoint_url=moto, region="us-east-1"))


def test_the_readme_says_what_the_alarms_watch():
    """The refusal's override, and that the alarms see the whole variant (both fleets): a canary is diluted."""
    from .conftest import REPO

    text = (REPO / "README.md").read_text()
    start = text.index("### Updating an endpoint without downtime")
    section = " ".join(text[start:text.index("\n### ", start + 1)].split())
    assert "already in ALARM" in section and "`--ignore-alarm-state`" in section
    assert "variant as a whole" in section and "diluted by the old fleet's traffic" in section
    assert "`PendingDeploymentSummary`" in section


def test_autoscaling_updating_is_no_deployment_to_roll_back(moto):
    """Autoscaling puts an endpoint in Updating without a PendingDeploymentSummary: sm rollback must not set a
    rollback alarm (left over in LastDeploymentConfig) to ALARM then, and sm update says to wait, not to roll back."""
    name = "bc-upd-scaling"
    _live_endpoint(moto, name)
    rc, _, err = _cli(moto, "update", name, "--model-data", "s3://bkt/s.tar.gz")
    assert rc == 0, err
    _sagemaker_finishes(name)
    _backend().endpoints[name].endpoint_status = "Updating"  # autoscaling adds an instance
    cw = _client(moto, "cloudwatch")
    proc = run_cli("sm", "rollback", name, "--endpoint-url", moto, env=ENV)
    assert_one_line_error(proc, "no deployment in progress", "wait until it is InService")
    assert all(a["StateValue"] != "ALARM" for a in cw.describe_alarms(AlarmNames=alarms.names(name))["MetricAlarms"])
    proc = run_cli("sm", "update", name, "--model-data", "s3://bkt/t.tar.gz", "--endpoint-url", moto, env=ENV)
    assert_one_line_error(proc, "no deployment in progress")
    assert "sm rollback" not in proc.stderr
    _backend().endpoints[name].endpoint_status = "InService"


def test_wait_follows_the_update_to_its_end(moto, aws_env, caplog):
    """--wait: 0 when the new config serves; an error line when SageMaker rolled back. The fake deployment
    engine moves one step per poll (the `sleep` the watcher calls), so nothing waits on a clock."""
    from bincounter.sm.target import AwsTarget

    name, target = "bc-upd-wait", AwsTarget(endpoint_url=moto)
    _live_endpoint(moto, name)

    def engine(*steps):
        it = iter(steps)
        return lambda _s: next(it)()

    def baking():
        _backend().endpoints[name].pending_deployment_summary["ProductionVariants"][0]["VariantStatus"] = [
            {"Status": "Baking"}]

    rc, out, err = _cli(moto, "update", name, "--model-data", "s3://bkt/w1.tar.gz")
    assert rc == 0, err
    caplog.set_level("INFO", logger="bincounter")
    assert update.watch(target, name, out[0]["config"], sleep=engine(baking, lambda: _sagemaker_finishes(name))) \
        == 0
    assert any("AllTraffic: Baking" in r.getMessage() for r in caplog.records)
    rc, out, err = _cli(moto, "update", name, "--model-data", "s3://bkt/w2.tar.gz")
    assert rc == 0, err
    with pytest.raises(UserError, match="rolled back or failed"):
        update.watch(target, name, out[0]["config"], sleep=engine(lambda: _sagemaker_rolls_back(name)))


# ------------------------------------------------------------------ dry runs: offline, every request valid
def _dry(*args):
    proc = run_cli("sm", *args, "--dry-run", "--endpoint-url", "http://127.0.0.1:9", env=ENV)
    assert proc.returncode == 0, proc.stderr
    return _docs(proc.stdout), proc.stderr


def test_update_dry_run_prints_valid_requests_and_the_cost():
    docs, err = _dry("update", "bc-ep", "--training-job", "bc-train-1", "--instance-count", "4", "--traffic",
                     "linear:25%", "--bake", "300", "--keep-old", "60", "--max-time", "7200", "--max-p99-ms", "500",
                     "--tag", "team=vision")
    assert [d["api"] for d in docs] == ["PutMetricFilter"] + ["PutMetricAlarm"] * 3 + [
        "CreateModel", "CreateEndpointConfig", "UpdateEndpoint"]
    for d in docs:  # botocore's validator on the SageMaker, CloudWatch and CloudWatch Logs shapes
        service = {"PutMetricFilter": "logs", "PutMetricAlarm": "cloudwatch"}.get(d["api"], "sagemaker")
        assert validate.errors(d["api"], d["request"], service) is None
    policy = docs[-1]["request"]["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    assert policy == {"TrafficRoutingConfiguration": {"Type": "LINEAR", "WaitIntervalInSeconds": 300,
                                                      "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 25}},
                      "TerminationWaitInSeconds": 60, "MaximumExecutionTimeoutInSeconds": 7200}
    assert docs[2]["request"]["Threshold"] == 500_000.0
    for d in docs[1:6]:  # the alarms, the model and the config: the default tags and --tag
        assert {**DEFAULT_TAGS, "team": "vision"}.items() <= _tag_dict(d["request"]).items(), d["api"]
    assert docs[4]["request"]["PrimaryContainer"]["ModelDataUrl"].endswith("bc-train-1/output/model.tar.gz")
    # the new fleet's rate, and the overlap: 4 old instances for 4 steps x 300 s + 60 s = 21 min
    assert "estimated cost: $5.63/h while the endpoint exists" in err
    assert "4 old instance(s) for ~21 min" in err and "about $1.97 more" in err


def test_update_and_rollback_dry_runs_make_no_network_call_and_need_no_credentials(offline, moto):  # noqa: F811
    import os

    if os.environ.get("PYTHONPATH"):  # the source tree under test, after the network guard
        offline["env"]["PYTHONPATH"] += os.pathsep + os.environ["PYTHONPATH"]
    proc, calls = _run_offline(offline, "update", "bc-ep", "--model-package", "arn:aws:sagemaker:us-east-1:1:"
                               "model-package/bc/3", "--cpu-image", IMAGE, "--role", "bincounter-sm", "--dry-run")
    assert proc.returncode == 0 and calls == "", (proc.stderr, calls)
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith(("estimated cost:", "during the update"))] == [
        "estimated cost: $1.41/h while the endpoint exists (the new fleet) (1 ml.g5.xlarge x $1.408/h; $1,013.76 "
        "per 30 days; us-east-1 prices of 2026-11-27)",
        "during the update both fleets bill: about $0.23 more (1 old instance(s) for ~10 min of traffic shifting "
        "and baking, plus the new fleet's start-up)"]
    assert "placeholders" in proc.stderr and _docs(proc.stdout)[-1]["api"] == "UpdateEndpoint"
    proc, calls = _run_offline(offline, "rollback", "bc-ep", "--dry-run")
    assert proc.returncode == 0 and calls == "", (proc.stderr, calls)
    no_creds = {**ENV, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SHARED_CREDENTIALS_FILE": "/none",
                "AWS_CONFIG_FILE": "/none"}
    for args in (["update", "bc-ep", "--model-data", "s3://b/m.tar.gz"], ["rollback", "bc-ep"]):
        proc = run_cli("sm", *args, "--endpoint-url", moto, env=no_creds)
        assert_one_line_error(proc, "no AWS credentials found", "--dry-run needs none")


def test_rollback_dry_run_is_a_valid_update_to_the_named_config():
    (doc,), _ = _dry("rollback", "bc-ep", "--to", "bc-ep-old")
    assert doc["api"] == "UpdateEndpoint" and doc["request"]["EndpointConfigName"] == "bc-ep-old"
    assert validate.errors("UpdateEndpoint", doc["request"]) is None


@pytest.mark.parametrize("args,needle", [
    (["--traffic", "canary:1"], "at most half of the fleet"),
    (["--traffic", "linear:25%"], "a dry run does not read the live instance count and assumes 1"),
    (["--alarm", "ops-5xx", "--max-p99-ms", "100"], "--max-p99-ms with --alarm: no alarm is created"),
    (["--model-data", "/tmp/model.tar.gz"], "--model-data '/tmp/model.tar.gz': must be an s3:// URI"),
    (["--traffic", "canary:3", "--instance-count", "4"], "at most half"),
    (["--traffic", "linear:5%", "--instance-count", "4"], "10-50%"),
    (["--traffic", "linear:1", "--instance-count", "20"], "10-50%"),
    (["--traffic", "blue"], "expected auto, all-at-once"),
    (["--traffic", "canary:x"], "expected instances"),
    (["--bake", "4000"], "0..3600"),
    (["--max-time", "60"], "600..28800"),
    (["--max-5xx-rate", "5"], "(0, 1]"),
    (["--alarm-period", "45"], "10, 30 or a multiple of 60"),
    (["--instance-type", "ml.nope"], "ml.nope"),
])
def test_update_mistakes_are_one_line_before_any_request(args, needle):
    proc = run_cli("sm", "update", "bc-ep", "--model-data", "s3://b/m.tar.gz", *args, "--dry-run", env=ENV)
    assert_one_line_error(proc, needle)
    assert proc.stdout == ""


def test_traffic_routing_within_sagemakers_limits():
    assert update.traffic_routing("auto", 1, 60) == {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 60}
    assert update.traffic_routing("auto", 3, 60)["CanarySize"] == {"Type": "INSTANCE_COUNT", "Value": 1}
    assert update.traffic_routing("canary:50%", 2, 0)["CanarySize"] == {"Type": "CAPACITY_PERCENT", "Value": 50}
    assert update.traffic_routing("linear:2", 4, 0)["LinearStepSize"] == {"Type": "INSTANCE_COUNT", "Value": 2}
    with pytest.raises(UserError, match="serverless"):
        update.traffic_routing("canary:1", 4, 0, serverless=True)
    with pytest.raises(UserError, match="at most half"):
        update.traffic_routing("canary:60%", 10, 0)
    # a canary, then the rest: two baking periods; a linear 25% step: four
    assert update.overlap_minutes(update.traffic_routing("canary:1", 2, 600), 2, 0) == 20
    assert update.overlap_minutes(update.traffic_routing("linear:25%", 8, 60), 8, 120) == 6


def test_a_serverless_endpoint_is_updated_all_at_once_without_instances():
    """`plan` on a serverless live endpoint: the variant keeps its ServerlessConfig and gets no instance count;
    canary/linear and instance flags are refused (a serverless endpoint has no instances)."""
    variant = {"VariantName": "AllTraffic", "ModelName": "m", "ServerlessConfig": {"MemorySizeInMB": 3072,
                                                                                   "MaxConcurrency": 10}}
    live = update.Live("old", {"ProductionVariants": [variant]}, variant,
                       {"ExecutionRoleArn": ROLE, "PrimaryContainer": {"Image": IMAGE}}, None, [], False)
    spec = update.UpdateSpec(endpoint="bc-sl", model_data="s3://b/n.tar.gz")
    _, reqs = update.plan(spec, live, "s3://b/n.tar.gz", None, None, ["a"])
    for api, req in reqs:
        assert validate.errors(api, req, "sagemaker") is None
    (v,) = reqs[1][1]["ProductionVariants"]
    assert "InitialInstanceCount" not in v and v["ServerlessConfig"]["MemorySizeInMB"] == 3072
    assert reqs[2][1]["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["Type"] == \
        "ALL_AT_ONCE"
    with pytest.raises(UserError, match="serverless"):
        update.plan(update.UpdateSpec(endpoint="bc-sl", instance_count=2), live, None, None, None, ["a"])
    with pytest.raises(UserError, match="serverless"):
        update.plan(update.UpdateSpec(endpoint="bc-sl", traffic="linear:10%"), live, None, None, None, ["a"])


def test_an_update_dry_run_imports_neither_torch_nor_the_sagemaker_sdk():
    from .test_cli import _heavy_imported

    argv = ["sm", "update", "bc-ep", "--model-data", "s3://b/m.tar.gz", "--region", "us-east-1", "--dry-run", "-q"]
    code = ("import contextlib, io\nfrom bincounter.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()):\n    assert main({argv!r}) == 0")
    assert not {"torch", "timm", "sagemaker"} & set(_heavy_imported(code, {"AWS_EC2_METADATA_DISABLED": "true"}))


def test_the_new_config_carries_the_users_tags_not_the_old_ones_provenance():
    """The new-user trial: the new config inherited sagemaker.amazonaws.com/model-source = the OLD model.tar.gz."""
    tags = [{"Key": "team", "Value": "vision"}, {"Key": "aws:cloudformation:stack-name", "Value": "s"},
            {"Key": "sagemaker.amazonaws.com/model-source", "Value": "s3://b/m/model.tar.gz"},
            {"Key": update.PREVIOUS_TAG, "Value": "cfg-0"}]
    assert update._own(tags) == [{"Key": "team", "Value": "vision"}]
