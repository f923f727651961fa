"""`sm delete`: everything a deploy may have left (autoscaling target, endpoint, endpoint config, models) and what
`sm update` added (its CloudWatch alarms and log metric filter, which bill monthly), each step on its own, so a
deploy that stopped half-way is cleaned up too; what is missing is listed, not fatal."""

from __future__ import annotations

import json
import logging

from .. import aws
from ..errors import UserError
from . import alarms, jobs, printing
from .target import AwsTarget

log = logging.getLogger("bincounter")


def _print_dry_run(endpoint: str | None, model: str | None) -> None:
    if endpoint:
        log.info("dry run: the autoscaling target is deregistered only if one is registered (a real delete "
                 "reads it with DescribeScalableTargets); the endpoint's config and models as sm deploy named "
                 "them (a real delete reads them from the endpoint)")
        printing.print_request("DeregisterScalableTarget", {
            "ServiceNamespace": "sagemaker", "ResourceId": f"endpoint/{endpoint}/variant/{jobs.VARIANT}",
            "ScalableDimension": jobs.SCALABLE_DIMENSION})
        for api, req in (("DeleteEndpoint", {"EndpointName": endpoint}),
                         ("DeleteEndpointConfig", {"EndpointConfigName": endpoint}),
                         ("DeleteModel", {"ModelName": endpoint})):
            printing.print_request(api, req)
        log.info("dry run: sm update's alarms and metric filter are deleted only where they exist")
        for service, api, req in alarms.delete_requests(endpoint):
            printing.print_request(api, req, service=service)
    if model and model != endpoint:
        printing.print_request("DeleteModel", {"ModelName": model})


def delete(target: AwsTarget, endpoint: str | None = None, model: str | None = None) -> int:
    """Delete the endpoint (with its autoscaling target, config and models) and/or the model; one JSON line says
    what was deleted and what did not exist."""
    if not (endpoint or model):
        raise UserError("sm delete needs --endpoint NAME and/or --model NAME")
    if target.dry_run:
        _print_dry_run(endpoint, model)
        return 0
    sm = target.client()
    deleted, absent = [], []

    def attempt(what: str, call, **kw) -> bool:
        try:
            aws.aws_call(what, call, **kw)
        except UserError as e:
            if not aws.not_found(e):
                raise
            absent.append(what)
            return False
        deleted.append(what)
        return True

    models: list[str] = []
    if endpoint:
        name = endpoint
        aas = target.client("application-autoscaling")
        resource = f"endpoint/{name}/variant/{jobs.VARIANT}"
        targets = aws.aws_call("DescribeScalableTargets", aas.describe_scalable_targets, ServiceNamespace="sagemaker",
                               ResourceIds=[resource])["ScalableTargets"]
        for t in targets:
            aws.aws_call("DeregisterScalableTarget", aas.deregister_scalable_target, ServiceNamespace="sagemaker",
                         ResourceId=resource, ScalableDimension=t["ScalableDimension"])
            deleted.append(f"autoscaling target {resource}")
        config = name  # sm deploy names the config after the endpoint; the endpoint says which it really uses
        try:
            config = aws.aws_call("DescribeEndpoint", sm.describe_endpoint, EndpointName=name)["EndpointConfigName"]
        except UserError as e:
            if not aws.not_found(e):
                raise
        try:
            cfg = aws.aws_call("DescribeEndpointConfig", sm.describe_endpoint_config, EndpointConfigName=config)
            models = [v["ModelName"] for v in cfg["ProductionVariants"]]
        except UserError as e:
            if not aws.not_found(e):
                raise
            models = [name]
        attempt(f"endpoint {name}", sm.delete_endpoint, EndpointName=name)
        attempt(f"endpoint config {config}", sm.delete_endpoint_config, EndpointConfigName=config)
        deleted += alarms.delete(target, name)
    if model and model not in models:
        models.append(model)
    for m in models:
        attempt(f"model {m}", sm.delete_model, ModelName=m)
    print(json.dumps({"deleted": deleted, "did_not_exist": absent}))
    if deleted:
        log.info("deleted: %s", ", ".join(deleted))
    if absent:
        log.info("did not exist: %s", ", ".join(absent))
    if endpoint and deleted:
        log.info("nothing left billing for endpoint %s", endpoint)
    if not deleted:
        log.warning("nothing to delete: %s (names are case-sensitive; aws sagemaker list-endpoints / list-models)",
                    ", ".join(absent))
    return 0
