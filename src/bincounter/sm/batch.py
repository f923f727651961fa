"""A SageMaker batch transform job (`sm batch`) from a `BatchSpec`: every image under the input prefix is sent to
a model (one request per image) and its JSON answer written under the output prefix as `<image>.out`;
`batch_collect` makes one CSV of them.
"""

from __future__ import annotations

import json
import logging

from .. import aws
from ..errors import UserError
from . import cost, jobs, printing, sdk
from .checks import check_instance_type
from .specs import BatchSpec
from .target import AwsTarget

log = logging.getLogger("bincounter")


def _check_platform(spec: BatchSpec, region: str) -> None:
    """A transform job runs in its model's VPC, with its model's isolation: they are set when the model is
    created (sm deploy --subnets/--isolation), not here."""
    p = spec.platform
    if p.subnets or p.isolation or p.inter_container_encryption:
        raise UserError("sm batch: a transform job runs in its model's VPC and with its model's network isolation; "
                        "set --subnets/--security-groups/--isolation when the model is created (sm deploy)")
    p.check(region)


def start(spec: BatchSpec, target: AwsTarget) -> int:
    """Check, price and start the job (a dry run prints its request); with `spec.wait` or `spec.collect_csv`,
    follow it, then (collect_csv) write its results as one CSV."""
    check_instance_type(spec.instance_type)
    name = spec.name or jobs.job_name("bincounter-batch")
    region = target.resolved_region()
    if spec.instance_count < 1:
        raise UserError(f"--instance-count {spec.instance_count}: must be >= 1")
    _check_platform(spec, region)
    if target.dry_run:
        for n in spec.platform.dry_run_notes():
            log.warning("%s", n)
    printing.cost(cost.hourly_line(what="while the job runs", instance_type=spec.instance_type,
                                   instance_count=spec.instance_count, price_per_hour=spec.price_per_hour,
                                   region=region))
    with sdk.sdk_session(region, target.profile, target.endpoint_url, target.dry_run,
                         spec.platform) as (session, captured):
        sdk.batch_transform(session, name=name, model=spec.model, input_s3=spec.input, output_s3=spec.output,
                            instance_type=spec.instance_type, instance_count=spec.instance_count)
    if target.dry_run:
        printing.captured(captured, "CreateTransformJob")
        return 0
    sm = target.client()
    desc = aws.aws_call("DescribeTransformJob", sm.describe_transform_job, TransformJobName=name)
    printing.created("batch transform job", name, desc.get("TransformJobArn"),
                     jobs.console_link(region, "transform", name),
                     f"aws sagemaker stop-transform-job --transform-job-name {name}",
                     f"results: {spec.output.rstrip('/')}/<image>.out (one JSON per image); "
                     f"one CSV: bincounter sm collect {name} --csv results.csv")
    if not (spec.wait or spec.collect_csv):
        return 0
    from . import follow

    rc = follow.wait(target, name, "transform")
    if spec.collect_csv:
        from . import batch_collect

        print(json.dumps(batch_collect.collect(sm, target.client("s3"), name, region, spec.collect_csv)))
    return rc
