"""`sm update`: a new model behind a live endpoint without downtime, and `sm rollback`: back again by hand
(about 430 lines: both read the live endpoint and its tags the same way, and rollback undoes what update's plan
wrote, so they stay together).

An update is a blue/green deployment run by SageMaker: a new model (the live one's container definition with the
new model.tar.gz and/or image; its role, environment, VPC and isolation kept) and a new endpoint config (the live
one's, the variant pointing at the new model; data capture, KMS key and tags kept, plus a tag naming the config it
replaces; both, and the alarms, tagged as `platform.carried_tags` says: the live tags, the defaults, --tag), then
UpdateEndpoint with a `DeploymentConfig`: traffic shifted to the new (green) fleet all at once, as a canary or
linearly, each step followed by a baking period (the alarms watched) before the next or before the old (blue)
fleet goes, and automatic rollback on CloudWatch alarms (`alarms.py`: created for the endpoint, or named by the
user).

`rollback` during an update sets one of its rollback alarms to ALARM (SageMaker then shifts traffic back to the
old fleet); after an update it updates the endpoint back to the config the live one replaced (blue/green again,
all at once, no baking: still no downtime).

Requests go through boto3 (the SDK v3 has no blue/green update); every one is checked by botocore's validator
before it is sent, and printed instead in a dry run (nothing is read then: the live settings are placeholders).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field

from .. import aws
from ..errors import UserError
from . import alarms, cost, jobs, platform, printing, validate
from .alarms import Thresholds
from .checks import DEFAULT_INSTANCE, check_instance_type, check_name, check_s3_uri
from .endpoint import model_source
from .specs import EndpointSpec
from .target import DRY_ACCOUNT, AwsTarget

log = logging.getLogger("bincounter")

PREVIOUS_TAG = "bincounter:previous-endpoint-config"  # on a config sm update made: the config it replaced


@dataclass(frozen=True)
class UpdateSpec:
    """A blue/green update of `endpoint` to a new model from exactly one of `training_job`, `model_data`,
    `model_package` (`image`/`cpu_image`: its image; default: the source's, else the live one's).
    `traffic`: "auto" (canary of one instance with 2+ instances, else all at once), "all-at-once",
    "canary:SIZE" or "linear:SIZE" with SIZE instances ("1") or a share of the fleet ("10%")."""

    endpoint: str
    role: str | None = None  # None: the live model's role
    training_job: str | None = None
    model_data: str | None = None
    model_package: str | None = None
    image: str | None = None
    cpu_image: str | None = None
    instance_type: str | None = None  # None: the live variant's
    instance_count: int | None = None  # None: the live variant's current count
    traffic: str = "auto"
    bake_s: int = 600  # the baking period after each traffic step, alarms watched (WaitIntervalInSeconds)
    keep_old_s: int = 0  # after the deployment completed, before the old fleet is terminated (no rollback then)
    max_time_s: int | None = None  # MaximumExecutionTimeoutInSeconds (600..28800); None: SageMaker's default
    alarm_names: tuple[str, ...] = ()  # existing alarms to roll back on; empty: create ours
    thresholds: Thresholds = field(default_factory=Thresholds)
    price_per_hour: float | None = None
    ignore_alarm_state: bool = False  # update even when a rollback alarm is already in ALARM
    wait: bool = False  # follow the update until it completes (exit 0) or is rolled back (an error)
    tags: tuple[tuple[str, str], ...] = ()  # --tag: on the new model and config and the alarms (platform.carried_tags)
    default_tags: tuple[tuple[str, str], ...] = ()  # project, bincounter:version, the project config's tags

    def tags_from(self, own: list[dict], what: str, extra: tuple[dict, ...] = ()) -> list[dict]:
        """The new `what`'s tags (model, endpoint config, alarms), from the live one's `own`, plus `extra`; checked
        as PlatformSettings checks --tag (before anything is sent: AWS would refuse a bad one midway)."""
        tags = platform.carried_tags(dict(self.default_tags), own, self.tags) + list(extra)
        whose = "the live model" if what == "model" else "the live endpoint config"
        platform.check_carried(tags, dict(self.default_tags), own, self.tags, whose, what)
        return tags


def parse_size(text: str, count: int) -> dict:
    """'10%' -> CAPACITY_PERCENT 10, '2' -> INSTANCE_COUNT 2 (a CapacitySize)."""
    t = text.strip()
    try:
        value = int(t[:-1]) if t.endswith("%") else int(t)
    except ValueError:
        raise UserError(f"--traffic size {text!r}: expected instances (e.g. 1) or a share of the fleet (e.g. 10%)") \
            from None
    if value < 1 or (t.endswith("%") and value > 100) or (not t.endswith("%") and value > count):
        raise UserError(f"--traffic size {text!r}: must be 1..{count} instances or 1..100%")
    return {"Type": "CAPACITY_PERCENT" if t.endswith("%") else "INSTANCE_COUNT", "Value": value}


def _share(size: dict, count: int) -> float:
    return size["Value"] / 100 if size["Type"] == "CAPACITY_PERCENT" else size["Value"] / count


def traffic_routing(traffic: str, count: int, bake_s: int, serverless: bool = False) -> dict:
    """A TrafficRoutingConfiguration, within SageMaker's documented limits (a canary <= 50% of the fleet, a
    linear step 10-50%), so a bad choice is one line here rather than a failed deployment later."""
    kind, _, size = traffic.partition(":")
    if kind == "auto":
        kind, size = ("canary", "1") if count >= 2 and not serverless else ("all-at-once", "")
    if kind == "all-at-once" and not size:
        return {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": bake_s}
    if kind not in ("canary", "linear") or not size:
        raise UserError(f"--traffic {traffic!r}: expected auto, all-at-once, canary:SIZE or linear:SIZE "
                        "(SIZE: instances, e.g. 1, or a share of the fleet, e.g. 10%)")
    if serverless:
        raise UserError(f"--traffic {traffic}: a serverless endpoint has no instances to shift traffic by; "
                        "use all-at-once (the baking period and the alarms still apply)")
    cap = parse_size(size, count)
    share = _share(cap, count)
    if kind == "canary" and (share > 0.5 or share * count < 1):
        raise UserError(f"--traffic {traffic}: SageMaker's canary is at most half of the fleet and at least one "
                        f"instance; with {count} instance(s) "
                        + ("use all-at-once, or --instance-count 2 or more" if count < 2 else "pick a smaller one"))
    if kind == "linear" and not (0.1 <= share <= 0.5 and share * count >= 1):
        raise UserError(f"--traffic {traffic}: SageMaker's linear steps are 10-50% of the fleet and at least one "
                        f"instance; with {count} instance(s) "
                        + ("use canary or all-at-once" if count < 2 else "pick another step"))
    key = "CanarySize" if kind == "canary" else "LinearStepSize"
    return {"Type": kind.upper(), "WaitIntervalInSeconds": bake_s, key: cap}


def deployment_config(routing: dict, keep_old_s: int, max_time_s: int | None, alarm_names: list[str]) -> dict:
    policy = {"TrafficRoutingConfiguration": routing, "TerminationWaitInSeconds": keep_old_s}
    if max_time_s is not None:
        policy["MaximumExecutionTimeoutInSeconds"] = max_time_s
    return {"BlueGreenUpdatePolicy": policy,
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": n} for n in alarm_names]}}


def _check(spec: UpdateSpec) -> None:
    check_name("endpoint", spec.endpoint)
    check_name("--training-job", spec.training_job)
    check_s3_uri("--model-data", spec.model_data)
    if spec.model_package is not None and not re.fullmatch(r"arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d+:"
                                                           r"model-package/\S+", spec.model_package):
        raise UserError(f"--model-package {spec.model_package!r}: expected a model package version ARN "
                        "(arn:aws:sagemaker:REGION:ACCOUNT:model-package/GROUP/VERSION)")
    if not 0 <= spec.bake_s <= 3600 or not 0 <= spec.keep_old_s <= 3600:
        raise UserError("--bake and --keep-old: 0..3600 seconds each (SageMaker's limits)")
    if spec.max_time_s is not None and not 600 <= spec.max_time_s <= 28800:
        raise UserError(f"--max-time {spec.max_time_s}: 600..28800 seconds (SageMaker's limits)")
    if spec.instance_type:
        check_instance_type(spec.instance_type)
    if spec.instance_count is not None and spec.instance_count < 1:
        raise UserError(f"--instance-count {spec.instance_count}: must be >= 1")
    if not 1 <= len(spec.alarm_names) <= 10 and spec.alarm_names:
        raise UserError("--alarm: SageMaker rolls back on at most 10 alarms")
    spec.thresholds.check()
    platform.PlatformSettings(tags=spec.tags).check()


# ------------------------------------------------------------------------------------------ what is live
@dataclass(frozen=True)
class Live:
    """What the endpoint runs now: its config, the config's only variant, that variant's model."""

    config_name: str
    config: dict  # the DescribeEndpointConfig fields CreateEndpointConfig takes
    variant: dict
    model: dict  # the DescribeModel fields CreateModel takes
    current_count: int | None
    tags: list[dict]  # the config's
    autoscaled: bool
    model_tags: tuple = ()
    placeholder: bool = False  # a dry run's stand-in: nothing was read


def _creatable(desc: dict, api: str) -> dict:
    keys = validate.operation(api).input_shape.members
    return {k: v for k, v in desc.items() if k in keys}


def read_live(target: AwsTarget, endpoint: str) -> Live:
    sm = target.client()
    ep = aws.aws_call(f"endpoint {endpoint}", sm.describe_endpoint, EndpointName=endpoint)
    if ep.get("PendingDeploymentSummary"):
        raise UserError(f"endpoint {endpoint} is {ep['EndpointStatus']} with a deployment in progress (to config "
                        f"{ep['PendingDeploymentSummary'].get('EndpointConfigName')}): an update needs it InService "
                        f"(bincounter sm status {endpoint}; to stop that one: bincounter sm rollback {endpoint})")
    if ep["EndpointStatus"] != "InService":
        raise UserError(f"endpoint {endpoint} is {ep['EndpointStatus']} (no deployment in progress: autoscaling "
                        f"changing its instance count, or another change): an update needs it InService; wait for "
                        f"it (bincounter sm status {endpoint})")
    name = ep["EndpointConfigName"]
    cfg = aws.aws_call(f"endpoint config {name}", sm.describe_endpoint_config, EndpointConfigName=name)
    variants = cfg["ProductionVariants"]
    if len(variants) != 1:
        raise UserError(f"endpoint {endpoint} has {len(variants)} variants: sm update handles one-variant endpoints "
                        "(what sm deploy makes)")
    model = aws.aws_call(f"model {variants[0]['ModelName']}", sm.describe_model, ModelName=variants[0]["ModelName"])
    tags = aws.aws_call("ListTags", sm.list_tags, ResourceArn=cfg["EndpointConfigArn"]).get("Tags", [])
    model_tags = aws.aws_call("ListTags", sm.list_tags, ResourceArn=model["ModelArn"]).get("Tags", [])
    current = next((v.get("CurrentInstanceCount") for v in ep.get("ProductionVariants", [])
                    if v["VariantName"] == variants[0]["VariantName"]), None)
    aas = target.client("application-autoscaling")
    scaled = aws.aws_call("DescribeScalableTargets", aas.describe_scalable_targets, ServiceNamespace="sagemaker",
                          ResourceIds=[f"endpoint/{endpoint}/variant/{variants[0]['VariantName']}"])
    return Live(name, _creatable(cfg, "CreateEndpointConfig"), variants[0], _creatable(model, "CreateModel"),
                current, _own(tags), bool(scaled["ScalableTargets"]), tuple(_own(model_tags)))


def _own(tags: list[dict]) -> list[dict]:
    """Tags a new resource may carry over: not AWS's own (aws:...), not the SDK's record of what the old one was
    made from (sagemaker.amazonaws.com/..., e.g. model-source: the old model.tar.gz), not the config sm update
    names."""
    return [t for t in tags if not t["Key"].startswith(("aws:", "sagemaker.amazonaws.com/"))
            and t["Key"] != PREVIOUS_TAG]


def _dry_live(spec: UpdateSpec, image: str | None, role: str) -> Live:
    log.warning("dry run: endpoint %s is not read (no network call): its config, model, instance type/count and "
                "autoscaling are placeholders (a real update copies them from the live endpoint)", spec.endpoint)
    variant = {"VariantName": jobs.VARIANT, "ModelName": f"live-model-of-{spec.endpoint}"[:63],
               "InstanceType": DEFAULT_INSTANCE, "InitialInstanceCount": 1, "InitialVariantWeight": 1.0}
    model = {"ExecutionRoleArn": role, "PrimaryContainer": {"Image": image or "live-image", "Environment": {}}}
    return Live(f"live-config-of-{spec.endpoint}"[:63], {"ProductionVariants": [variant]}, variant, model,
                spec.instance_count or 1, [], False, placeholder=True)


# ------------------------------------------------------------------------------------------------ update
def plan(spec: UpdateSpec, live: Live, model_data: str | None, image: str | None, role: str | None,
         alarm_names: list[str]) -> tuple[str, list[tuple[str, dict]]]:
    """(new name, [(api, request)]): CreateModel, CreateEndpointConfig, UpdateEndpoint. Pure."""
    new = jobs.job_name(spec.endpoint)
    model = json.loads(json.dumps(live.model))  # a deep copy
    if len(model.get("Containers") or []) > 1:
        raise UserError(f"endpoint {spec.endpoint} serves a model of {len(model['Containers'])} containers: sm update "
                        "replaces one-container models (what sm deploy makes)")
    container = model.pop("PrimaryContainer", None) or (model.pop("Containers", None) or [{}])[0]
    container["Image"] = image or container.get("Image")
    if model_data:
        container.pop("ModelDataSource", None)  # the new model.tar.gz replaces either form of the old one
        container["ModelDataUrl"] = model_data
    tags = spec.tags_from(list(live.model_tags), "model")
    model.update(ModelName=new, PrimaryContainer=container, **({"ExecutionRoleArn": role} if role else {}),
                 **({"Tags": tags} if tags else {}))
    if spec.instance_type and live.autoscaled and spec.instance_type != live.variant.get("InstanceType"):
        raise UserError(f"--instance-type {spec.instance_type}: endpoint {spec.endpoint} has autoscaling, which "
                        "refuses an update that changes the instance type; update the model alone, or remove the "
                        "scaling first (aws application-autoscaling deregister-scalable-target)")
    serverless = "ServerlessConfig" in live.variant
    if serverless and (spec.instance_type or spec.instance_count):
        raise UserError(f"endpoint {spec.endpoint} is serverless: it has no instance type or count to change")
    count = spec.instance_count or live.current_count or live.variant.get("InitialInstanceCount") or 1
    variant = {**live.variant, "ModelName": new, **({} if serverless else {"InitialInstanceCount": count}),
               **({"InstanceType": spec.instance_type} if spec.instance_type else {})}
    config = {**json.loads(json.dumps(live.config, default=str)), "EndpointConfigName": new,
              "ProductionVariants": [variant],
              "Tags": spec.tags_from(live.tags, "endpoint config", ({"Key": PREVIOUS_TAG, "Value": live.config_name},))}
    try:
        routing = traffic_routing(spec.traffic, count, spec.bake_s, serverless=serverless)
    except UserError as e:
        if live.placeholder and not spec.instance_count:
            raise UserError(f"{e} (a dry run does not read the live instance count and assumes 1: pass "
                            "--instance-count N to dry-run the real fleet)") from None
        raise
    update = {"EndpointName": spec.endpoint, "EndpointConfigName": new,
              "DeploymentConfig": deployment_config(routing, spec.keep_old_s, spec.max_time_s, alarm_names)}
    if live.autoscaled and spec.instance_count is None:
        update["RetainAllVariantProperties"] = True  # keep the count autoscaling chose
    return new, [("CreateModel", model), ("CreateEndpointConfig", config), ("UpdateEndpoint", update)]


def overlap_minutes(routing: dict, count: int, keep_old_s: int) -> float:
    """How long both fleets run after the new one takes traffic: a baking period per traffic step (a canary:
    two, the canary's and the rest's), then `keep_old_s`. The new fleet's start-up comes on top."""
    size = routing.get("CanarySize") or routing.get("LinearStepSize")
    steps = {"ALL_AT_ONCE": 1, "CANARY": 2}.get(routing["Type"]) or math.ceil(1 / _share(size, count))
    return (steps * routing["WaitIntervalInSeconds"] + keep_old_s) / 60


def _cost_lines(spec: UpdateSpec, variant: dict, routing: dict, old_count: int, region: str) -> None:
    itype, count = variant.get("InstanceType"), variant.get("InitialInstanceCount", 1)
    if not itype:
        printing.cost("estimated cost: serverless, as before (billed per request); no second fleet to pay for")
        return
    printing.cost(cost.hourly_line(what="while the endpoint exists (the new fleet)", instance_type=itype,
                                   instance_count=count, price_per_hour=spec.price_per_hour, region=region))
    minutes = overlap_minutes(routing, count, spec.keep_old_s)
    rate = spec.price_per_hour if spec.price_per_hour is not None else \
        cost.table()["instances"].get(itype, {}).get("usd_per_hour")
    extra = f"about ${old_count * rate * minutes / 60:,.2f}" if rate is not None else "unknown"
    printing.cost(f"during the update both fleets bill: {extra} more ({old_count} old instance(s) for "
                  f"~{minutes:g} min of traffic shifting and baking, plus the new fleet's start-up)")


def update(spec: UpdateSpec, target: AwsTarget) -> int:
    """Check, price and start the blue/green update (a dry run prints its requests); how to follow it and how to
    roll it back."""
    _check(spec)
    region = target.resolved_region()
    role = target.role_arn(spec.role, region) if spec.role else None
    src = EndpointSpec(role=role or "unused", training_job=spec.training_job, model_data=spec.model_data,
                       model_package=spec.model_package, image=spec.image, cpu_image=spec.cpu_image)
    model_data, image = model_source(src, target, region)
    if target.dry_run:
        live = _dry_live(spec, image, role or f"arn:aws:iam::{DRY_ACCOUNT}:role/live-role")
    else:
        live = read_live(target, spec.endpoint)
    names = list(spec.alarm_names) or alarms.names(spec.endpoint)
    new, reqs = plan(spec, live, model_data, image, role, names)
    routing = reqs[2][1]["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    size = routing.get("CanarySize") or routing.get("LinearStepSize")
    log.info("traffic: %s%s, %d s baking per step", routing["Type"].lower().replace("_", " "),
             f" of {size['Value']}{'%' if size['Type'] == 'CAPACITY_PERCENT' else ' instance(s)'}" if size else "",
             spec.bake_s)
    _cost_lines(spec, reqs[1][1]["ProductionVariants"][0], routing, live.current_count or 1, region)
    metric_filter, alarm_reqs = alarms.requests(spec.endpoint, live.variant["VariantName"], spec.thresholds,
                                                spec.tags_from(live.tags, "alarms"))  # like the endpoint's config
    if target.dry_run:
        if not spec.alarm_names:
            printing.print_request("PutMetricFilter", metric_filter, service="logs")
            for a in alarm_reqs:
                printing.print_request("PutMetricAlarm", a, service="cloudwatch")
        for api, req in reqs:
            printing.print_request(api, req, service="sagemaker")
        return 0
    for api, req in reqs:
        validate.check(api, req, "sagemaker")
    if spec.alarm_names:
        found = alarms.check_named(target, names)
    else:
        alarms.put(target, metric_filter, alarm_reqs)
        found = alarms.states(target, names)
    alarms.check_quiet(found, spec.ignore_alarm_state)  # before anything is created
    log.info("rollback alarms: %s", ", ".join(names))
    sm = target.client()
    aws.aws_call("CreateModel", sm.create_model, **reqs[0][1])
    aws.aws_call("CreateEndpointConfig", sm.create_endpoint_config, **reqs[1][1])
    arn = aws.aws_call("UpdateEndpoint", sm.update_endpoint, **reqs[2][1])["EndpointArn"]
    print(json.dumps({"updating": spec.endpoint, "arn": arn, "config": new, "model": new,
                      "previous_config": live.config_name, "traffic": routing["Type"], "alarms": names}))
    log.info("endpoint %s: blue/green update to config %s started; SageMaker rolls back by itself if an alarm "
             "fires while a step bakes", spec.endpoint, new)
    log.info("console: %s", jobs.console_link(region, "endpoint", spec.endpoint))
    log.info("follow:  bincounter sm status %s", spec.endpoint)
    log.info("undo:    bincounter sm rollback %s   (during the update: rolls it back now; after it: back to %s)",
             spec.endpoint, live.config_name)
    return watch(target, spec.endpoint, new) if spec.wait else 0


def watch(target: AwsTarget, endpoint: str, new_config: str, poll_s: float = 30.0, sleep=time.sleep) -> int:
    """`sm update --wait`: a line whenever the update's steps change, until the endpoint is out of it. 0 when the
    new config serves; one error line when SageMaker rolled back (an alarm fired) or the update failed."""
    sm, last = target.client(), None
    while True:
        ep = aws.aws_call(f"endpoint {endpoint}", sm.describe_endpoint, EndpointName=endpoint)
        pending = ep.get("PendingDeploymentSummary") or {}
        steps = [f"{v['VariantName']}: {'/'.join(s['Status'] for s in v.get('VariantStatus', [])) or '-'}"
                 for v in pending.get("ProductionVariants", [])]
        line = f"{ep['EndpointStatus']}" + (f" ({', '.join(steps)})" if steps else "")
        if line != last:
            log.info("endpoint %s: %s", endpoint, line)
            last = line
        if ep["EndpointStatus"] not in ("Updating", "RollingBack", "SystemUpdating", "Creating"):
            break
        sleep(poll_s)
    if ep["EndpointStatus"] == "InService" and ep["EndpointConfigName"] == new_config:
        log.info("endpoint %s: the update completed; config %s serves", endpoint, new_config)
        return 0
    why = f": {ep['FailureReason']}" if ep.get("FailureReason") else ""
    raise UserError(f"endpoint {endpoint} is {ep['EndpointStatus']} on config {ep['EndpointConfigName']}, not "
                    f"{new_config}: the update was rolled back or failed{why} (bincounter sm status {endpoint})")


# ---------------------------------------------------------------------------------------------- rollback
def _rollback_request(endpoint: str, to: str, autoscaled: bool) -> dict:
    routing = {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}
    req = {"EndpointName": endpoint, "EndpointConfigName": to,
           "DeploymentConfig": {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing,
                                                          "TerminationWaitInSeconds": 0}}}
    if autoscaled:
        req["RetainAllVariantProperties"] = True
    return req


def rollback(target: AwsTarget, endpoint: str, to: str | None = None) -> int:
    """During an update: one of its rollback alarms set to ALARM (SageMaker rolls back). After one: the endpoint
    updated back to `to`, else to the config the live one replaced (its PREVIOUS_TAG)."""
    if target.dry_run:
        if not to:
            log.warning("dry run: endpoint %s is not read: the config to go back to is a placeholder (a real "
                        "rollback reads it from the live config's %s tag, or stops an update in progress)",
                        endpoint, PREVIOUS_TAG)
        printing.print_request("UpdateEndpoint", _rollback_request(
            endpoint, to or f"previous-config-of-{endpoint}"[:63], False), service="sagemaker")
        return 0
    sm = target.client()
    ep = aws.aws_call(f"endpoint {endpoint}", sm.describe_endpoint, EndpointName=endpoint)
    status = ep["EndpointStatus"]
    # a deployment in progress is PendingDeploymentSummary, not the status: autoscaling also makes it Updating
    if ep.get("PendingDeploymentSummary"):
        names = [a["AlarmName"] for a in ((ep.get("LastDeploymentConfig") or {}).get("AutoRollbackConfiguration")
                                          or {}).get("Alarms", [])]
        if not names:
            raise UserError(f"endpoint {endpoint} is {status} with no rollback alarms: wait until it is InService "
                            f"(bincounter sm status {endpoint}), then bincounter sm rollback {endpoint}")
        aws.aws_call("SetAlarmState", target.client("cloudwatch").set_alarm_state, AlarmName=names[0],
                     StateValue="ALARM", StateReason=f"bincounter sm rollback {endpoint}: rolled back by hand")
        print(json.dumps({"rolling_back": endpoint, "alarm": names[0],
                          "to_config": ep.get("EndpointConfigName")}))
        log.info("alarm %s set to ALARM: SageMaker shifts traffic back to config %s (bincounter sm status %s)",
                 names[0], ep.get("EndpointConfigName"), endpoint)
        return 0
    if status != "InService":
        raise UserError(f"endpoint {endpoint} is {status} with no deployment in progress (autoscaling changing its "
                        f"instance count, or another change): nothing to roll back now; wait until it is InService "
                        f"(bincounter sm status {endpoint}), then bincounter sm rollback {endpoint}")
    live = ep["EndpointConfigName"]
    if not to:
        arn = aws.aws_call(f"endpoint config {live}", sm.describe_endpoint_config,
                           EndpointConfigName=live)["EndpointConfigArn"]
        tags = {t["Key"]: t["Value"] for t in aws.aws_call("ListTags", sm.list_tags, ResourceArn=arn).get("Tags", [])}
        to = tags.get(PREVIOUS_TAG)
        if not to:
            raise UserError(f"endpoint {endpoint}'s config {live} was not made by sm update (no {PREVIOUS_TAG} tag): "
                            "name the config to go back to with --to CONFIG (aws sagemaker list-endpoint-configs)")
    if to == live:
        raise UserError(f"endpoint {endpoint} already runs config {to}")
    aws.aws_call(f"endpoint config {to}", sm.describe_endpoint_config, EndpointConfigName=to)  # it must exist
    aas = target.client("application-autoscaling")
    variant = (ep.get("ProductionVariants") or [{}])[0].get("VariantName", jobs.VARIANT)
    scaled = aws.aws_call("DescribeScalableTargets", aas.describe_scalable_targets, ServiceNamespace="sagemaker",
                          ResourceIds=[f"endpoint/{endpoint}/variant/{variant}"])["ScalableTargets"]
    req = _rollback_request(endpoint, to, bool(scaled))
    validate.check("UpdateEndpoint", req, "sagemaker")
    aws.aws_call("UpdateEndpoint", sm.update_endpoint, **req)
    print(json.dumps({"rolling_back": endpoint, "from_config": live, "to_config": to}))
    log.info("endpoint %s: back to config %s (blue/green, all at once; no downtime); bincounter sm status %s",
             endpoint, to, endpoint)
    return 0
