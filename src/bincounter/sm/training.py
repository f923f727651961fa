"""A SageMaker training job (`sm train`) from a `TrainingJobSpec`, and the checks and input plan a tuning job's
trials share with it (`tuning.py`): inputs checked locally (S3 URIs, instance type, channels, the hyperparameters
with the trainer's own rules, the pretrained channel's arch), the cost line, then the request through the SDK
(printed in a dry run, sent otherwise).

Instances, batch size and learning rate, one rule for `sm train` and `sm tune`: `batch_size` is per training
process (one process per GPU on every instance, one per instance without GPUs) and `lr` is used as given,
never scaled with the number of processes. So a job on more instances trains with a proportionally larger
global batch at the same lr. A job from a tuning job therefore runs on the trials' instance type and count
unless told otherwise, and says so when told otherwise.
"""

from __future__ import annotations

import logging

from ..errors import UserError
from . import channels, cost, hyperparameters, jobs, printing, sdk, sdk_compat
from .checks import DEFAULT_INSTANCE, check_instance_type, check_s3_uri
from .specs import TRAIN_INSTANCE_COUNT, TrainingJobSpec
from .target import AwsTarget

log = logging.getLogger("bincounter")


def check_job(spec: TrainingJobSpec) -> None:
    """What a training job and a tuning job's trials both need, checked before any request."""
    check_s3_uri("--output", spec.output)
    check_instance_type(spec.instance_type)
    channels.check(spec.channels, input_mode=spec.input_mode, volume_gb=spec.volume_gb,
                   data_size_gb=spec.data_size_gb)
    if spec.instance_count is not None and spec.instance_count < 1:
        raise UserError(f"--instance-count {spec.instance_count}: must be >= 1")
    if spec.max_runtime_s < 60:
        raise UserError(f"--max-runtime {spec.max_runtime_s}: seconds, at least 60")
    if spec.price_per_hour is not None and spec.price_per_hour < 0:
        raise UserError("--price-per-hour must be >= 0")


def check_isolation(spec: TrainingJobSpec, hps: dict) -> None:
    """A job without network access (isolation) cannot download ImageNet weights: they must come from the
    pretrained channel, or the job must not start from them. Refused before any request, a dry run too."""
    if not spec.platform.isolation or spec.pretrained:
        return
    if str(hps.get("pretrained", "true")).strip().lower() in ("false", "0", "no"):
        return
    raise UserError("--isolation with ImageNet weights downloaded by the job (timm's source, which needs the "
                    "network): give them as a channel (bincounter weights fetch --arch ARCH --out w; data upload; "
                    "--pretrained s3://.../w/) or pass --hp pretrained=false")


def platform_checks(spec: TrainingJobSpec, hps: dict, region: str, instance_count: int | None) -> None:
    """The platform settings' offline checks (`platform.PlatformSettings.check_training`) and isolation's."""
    spec.platform.check_training(region, instance_count)
    check_isolation(spec, hps)


def dry_run_notes(spec: TrainingJobSpec, target: AwsTarget) -> None:
    if target.dry_run:
        for n in spec.platform.dry_run_notes():
            log.warning("%s", n)


def check_pretrained(spec: TrainingJobSpec, target: AwsTarget, archs: list[str]) -> None:
    """`check_weights` for the job's --pretrained channel."""
    check_weights(spec.pretrained, target, archs)


def check_weights(uri: str | None, target: AwsTarget, archs: list[str], flag: str = "--pretrained") -> None:
    """The `pretrained` channel must hold weights for each arch the job trains (`sm tune --archs` may search
    several: each reads its own <arch>.safetensors, as the container picks it): each one's provenance JSON
    (written by `bincounter weights fetch` beside the weights) is read from S3 and its arch compared, before any
    request, as local `train` does before loading. A dry run reads nothing, so it only says so."""
    if not uri:
        return
    if target.dry_run:
        log.warning("dry run: the pretrained channel's provenance is not read (a real run checks its arch against "
                    "%s before any request)", ", ".join(archs))
        return
    from ..weights import parse_provenance

    picked = channels.pretrained_provenance(target.client("s3"), uri, archs, flag)
    provs, wrong = {}, []
    for arch, key, data in picked:
        if data is None:
            if key not in provs:
                log.warning("%s %s: no provenance JSON beside %s, so its arch is not checked here (bincounter "
                            "weights fetch writes one)", flag, uri, key)
            provs[key] = None
            continue
        if key not in provs:
            provs[key] = parse_provenance(data, key.rsplit(".", 1)[0] + channels.PROVENANCE_SUFFIX)
        if provs[key].get("arch") != arch:
            wrong.append((arch, key))
    if wrong:
        arch, key = wrong[0]
        got, names = provs[key].get("arch"), ", ".join(a for a, k in wrong if k == key)
        what = f"{flag} {uri}" if len(provs) == 1 else f"{flag} {uri}: {key.rsplit('/', 1)[-1]}"
        fix = f"pass --hp arch={got}" if len(archs) == 1 else f"drop {names} from --archs"
        raise UserError(f"{what} holds {got} weights (per its provenance JSON), not {names}: {fix}, or fetch and "
                        f"upload weights for {arch} (bincounter weights fetch --arch {arch})")
    for key, prov in provs.items():
        if prov is not None:
            log.info("pretrained weights: %s (%s)", prov.get("arch"), key)


def input_plan(spec: TrainingJobSpec, target: AwsTarget) -> tuple[list, int]:
    """(channels with their input modes, volume GB): `channels.plan`; its line is printed next to the cost line."""
    s3 = None if target.dry_run else target.client("s3")
    chans, volume, line, notes = channels.plan(spec.channels, input_mode=spec.input_mode, volume_gb=spec.volume_gb,
                                               data_size_gb=spec.data_size_gb, s3=s3)
    printing.cost(line)
    for n in notes:
        log.warning("%s", n)
    return chans, volume


def tuned_hyperparameters(spec: TrainingJobSpec, target: AwsTarget,
                          region: str) -> tuple[dict[str, str], str | None, int | None]:
    """(best hyperparameters, trials' instance type, trials' instance count) of `spec.from_tuning_job`. A dry run
    reads nothing: the tuned values are placeholders."""
    name = spec.from_tuning_job
    if target.dry_run:
        defaults = [f"{what} {default}" for what, given, default in (
            ("type", spec.instance_type, DEFAULT_INSTANCE), ("count", spec.instance_count, TRAIN_INSTANCE_COUNT))
            if given is None]
        log.warning("dry run: tuning job %s is not read (no network call): its best %s are placeholders in the "
                    "request%s", name, ", ".join(hyperparameters.TUNED[:3]),
                    f"; the request and the cost line show the default instance {' and '.join(defaults)}, not the "
                    "trials' (a real run takes the trials' unless --instance-type/--instance-count say otherwise)"
                    if defaults else "")
        return {**{k: f"<best {k} of {name}>" for k in hyperparameters.TUNED[:3]},
                "mlflow_from_trial": f"<best trial of {name}>"}, None, None
    desc = jobs.describe_tuning_job(target.client(), name, region)
    itype, count = jobs.trial_resources(desc)
    return {**jobs.best_hyperparameters(None, name, desc), **hyperparameters.from_trial(desc)}, itype, count


def instances_for_training(instance_type: str | None, instance_count: int | None, trial_type: str | None,
                           trial_count: int | None) -> tuple[str, int]:
    """The rule (module docstring): tuned values were found on the trials' resources, so a job from a tuning job
    runs on them unless told otherwise (`instance_type`/`instance_count` given), and a change of the process
    count is said out loud."""
    itype = instance_type or trial_type or DEFAULT_INSTANCE
    count = instance_count or trial_count or TRAIN_INSTANCE_COUNT
    if trial_count:
        now, then = jobs.processes(itype, count), jobs.processes(trial_type or itype, trial_count)
        if now and then and now != then:
            log.warning("the tuning trials trained with %d process(es), this job with %d: the per-process batch "
                        "and the tuned lr are kept (not scaled), so the global batch is %gx the trials'", then, now,
                        now / then)
    return itype, count


def start(spec: TrainingJobSpec, target: AwsTarget) -> int:
    """Check, price and start the training job (a dry run prints its request); with `spec.wait`, follow it."""
    check_job(spec)
    check_s3_uri("--checkpoint-s3", spec.checkpoint_s3)
    region = target.resolved_region()
    user = spec.hyperparameters
    tuned, trial_type, trial_count = ({}, None, None)
    if spec.from_tuning_job:
        tuned, trial_type, trial_count = tuned_hyperparameters(spec, target, region)
    hps = hyperparameters.with_tracking({**tuned, **user})  # MLflow: the trial it came from, or nothing
    hyperparameters.validate({k: v for k, v in hps.items() if not (target.dry_run and k in tuned and k not in user)})
    check_pretrained(spec, target, [hps.get("arch") or hyperparameters.default("arch")])
    itype, count = instances_for_training(spec.instance_type, spec.instance_count, trial_type, trial_count)
    platform_checks(spec, hps, region, count)
    dry_run_notes(spec, target)
    role = target.role_arn(spec.role, region)
    printing.cost(cost.job_line(instance_type=itype, instance_count=count, max_runtime_s=spec.max_runtime_s,
                                spot=spec.spot, price_per_hour=spec.price_per_hour, region=region))
    chans, volume = input_plan(spec, target)
    with sdk.sdk_session(region, target.profile, target.endpoint_url, target.dry_run,
                         spec.platform) as (session, captured):
        trainer = sdk.model_trainer(session, image=spec.image, role=role, instance_type=itype,
                                    instance_count=count, hyperparameters=jobs.hp_strings({"progress": False, **hps}),
                                    output_path=spec.output, spot=spec.spot, checkpoint_s3=spec.checkpoint_s3,
                                    max_runtime_s=spec.max_runtime_s, base_name=spec.name or "bincounter-train",
                                    volume_gb=volume, input_mode=chans[0].mode,
                                    profiler=sdk.profiler_settings(spec.output, region, spec.profiler_interval_ms)
                                    if spec.profiler else None)
        trainer.train(input_data_config=sdk.inputs(chans), wait=False)
    if target.dry_run:
        printing.captured(captured, "CreateTrainingJob")
        return 0
    job = sdk_compat.latest_training_job(trainer)
    name = job.training_job_name
    printing.created("training job", name, job.training_job_arn, jobs.console_link(region, "training", name),
                     f"aws sagemaker stop-training-job --training-job-name {name}",
                     f"model: {spec.output.rstrip('/')}/{name}/output/model.tar.gz; "
                     f"then: bincounter sm report {name}; bincounter sm deploy --training-job {name} ...")
    if not spec.wait:
        return 0
    from . import follow

    return follow.wait(target, name, "training")
