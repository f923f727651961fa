"""A SageMaker hyperparameter tuning job (`sm tune`) from a `TuningJobSpec`: a Bayesian search over lr, batch size
and epochs (optionally model and image size) maximising val_acc. The trials' training job is checked as `sm train`
checks one (`training.check_job`), every range with the trainer's own rules, then priced for all trials.
"""

from __future__ import annotations

import logging

from ..errors import UserError
from . import cost, hyperparameters, jobs, printing, sdk, training
from .checks import DEFAULT_INSTANCE
from .specs import TuningJobSpec
from .target import AwsTarget

log = logging.getLogger("bincounter")


def check(spec: TuningJobSpec) -> None:
    for flag, value in (("--max-jobs", spec.max_jobs), ("--max-parallel", spec.max_parallel)):
        if value < 1:
            raise UserError(f"{flag} {value}: at least 1")
    if spec.max_parallel > spec.max_jobs:
        raise UserError(f"--max-parallel {spec.max_parallel} cannot exceed --max-jobs {spec.max_jobs}")
    training.check_job(spec.job)
    if spec.job.checkpoint_s3:
        raise UserError("--checkpoint-s3 with sm tune: SageMaker gives every trial of a tuning job the same "
                        "checkpoint URI, and a job resumes from what its URI holds, so trials would resume from "
                        "one another; tune without it (with --spot an interrupted trial starts over)")


def start(spec: TuningJobSpec, target: AwsTarget) -> int:
    """Check, price and start the tuning job (a dry run prints its request); with `spec.job.wait`, follow it."""
    check(spec)
    job = spec.job
    itype, count = job.instance_type or DEFAULT_INSTANCE, job.instance_count or 1
    user = job.hyperparameters
    ranges = hyperparameters.tuning_ranges(lr=spec.lr_range, batch_sizes=spec.batch_sizes, epochs=spec.epochs_range,
                                           archs=spec.archs, image_sizes=spec.image_sizes, static=user)
    training.check_pretrained(job, target,
                              list(ranges.get("arch") or [user.get("arch") or hyperparameters.default("arch")]))
    name = job.name or jobs.job_name("bc-hpo", 32)
    region = target.resolved_region()
    training.platform_checks(job, user, region, count)
    training.dry_run_notes(job, target)
    role = target.role_arn(job.role, region)
    printing.cost(cost.job_line(instance_type=itype, instance_count=count, max_runtime_s=job.max_runtime_s,
                                jobs=spec.max_jobs, spot=job.spot, price_per_hour=job.price_per_hour, region=region))
    chans, volume = training.input_plan(job, target)
    # MLflow (--hp mlflow=URI): every trial a run of the experiment named after this tuning job
    hps = jobs.hp_strings(hyperparameters.with_tracking({"progress": False, **user}, experiment=name))
    log.info("profiler: a tuning job's TrainingJobDefinition has no ProfilerConfig field (CreateHyperParameterTuning"
             "Job takes none), so trials run with SageMaker's own profiling defaults; bincounter sm report TRIAL "
             "shows what a trial wrote, and sm train --from-tuning-job %s runs the winner with the profiler", name)
    with sdk.sdk_session(region, target.profile, target.endpoint_url, target.dry_run,
                         job.platform) as (session, captured):
        trainer = sdk.model_trainer(session, image=job.image, role=role, instance_type=itype, instance_count=count,
                                    hyperparameters=hps, output_path=job.output, spot=job.spot, checkpoint_s3=None,
                                    max_runtime_s=job.max_runtime_s, base_name="bincounter-hpo",
                                    spot_needs_checkpoint=False, volume_gb=volume, input_mode=chans[0].mode)
        tuner = sdk.tuner(trainer, ranges=ranges, max_jobs=spec.max_jobs, max_parallel=spec.max_parallel,
                          early_stopping=spec.early_stopping, base_name=name)
        tuner.tune(inputs=sdk.inputs(chans), job_name=name, wait=False)
    if target.dry_run:
        printing.captured(captured, "CreateHyperParameterTuningJob")
        return 0
    started = tuner.latest_tuning_job
    printing.created("tuning job", name, getattr(started, "hyper_parameter_tuning_job_arn", None),
                     jobs.console_link(region, "tuning", name),
                     f"aws sagemaker stop-hyper-parameter-tuning-job --hyper-parameter-tuning-job-name {name}",
                     f"then: bincounter sm train --from-tuning-job {name} ...")
    if not job.wait:
        return 0
    from . import follow

    return follow.wait(target, name, "tuning")
