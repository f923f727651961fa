"""What each `bincounter sm` job kind is asked to do, as typed values: the CLI builds these from its flags (syntax
only: NAME=VALUE pairs, MIN,MAX pairs); the job modules check them (the values' meaning) and send them. With
`target.AwsTarget` (where to, dry run or not) they are every input a job kind takes, so a job can be started from
Python without the CLI:

    training.start(TrainingJobSpec(image=..., role=..., train=..., val=..., output=...), AwsTarget(dry_run=True))
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .checks import DEFAULT_INSTANCE
from .platform import PlatformSettings

DEFAULT_MAX_RUNTIME_S = 4 * 3600
TRAIN_INSTANCE_COUNT = 2  # sm train's default (a tuning trial's: 1)


@dataclass(frozen=True)
class TrainingJobSpec:
    """One training job (`sm train`), or the definition every trial of a tuning job shares (`sm tune`).

    `instance_type`/`instance_count` None: the default (DEFAULT_INSTANCE, TRAIN_INSTANCE_COUNT), or with
    `from_tuning_job` the trials' (`training.instances_for_training`)."""

    image: str
    role: str  # an ARN, or a role name expanded with the account (STS)
    train: str
    val: str
    output: str
    test: str | None = None
    pretrained: str | None = None  # ImageNet weights for offline pretraining
    instance_type: str | None = None
    instance_count: int | None = None
    hyperparameters: dict[str, str] = field(default_factory=dict)  # the user's --hp, as given
    input_mode: str | None = None  # None: per channel (`channels.plan`)
    volume_gb: int | None = None  # None: sized from the channels (`channels.plan`)
    data_size_gb: float | None = None  # the File-mode channels' size, instead of reading it from S3
    max_runtime_s: int = DEFAULT_MAX_RUNTIME_S
    spot: bool = False
    checkpoint_s3: str | None = None
    price_per_hour: float | None = None  # None: the price table
    name: str | None = None  # a job name prefix (training) / the tuning job's name (tuning)
    wait: bool = False  # follow the job until it ends; an error unless it completes
    from_tuning_job: str | None = None  # training only: start from this tuning job's best hyperparameters
    profiler: bool = True  # training only: SageMaker's system profiler and its ProfilerReport rule
    profiler_interval_ms: int = 500
    platform: PlatformSettings = PlatformSettings()  # tags, VPC, KMS key, isolation (a tuning job: its trials')

    @property
    def channels(self) -> dict[str, str]:
        """The S3 channels given, by name, in the order the job lists them."""
        return {k: v for k, v in (("train", self.train), ("val", self.val), ("test", self.test),
                                  ("pretrained", self.pretrained)) if v}


@dataclass(frozen=True)
class TuningJobSpec:
    """A hyperparameter tuning job (`sm tune`): the trials' training job and what is searched. A range given as
    None is the default range (`hyperparameters.DEFAULT_RANGES`), not tuned when `job.hyperparameters` fixes it;
    `archs`/`image_sizes` are searched only when given (comma-separated, as on the command line)."""

    job: TrainingJobSpec
    max_jobs: int = 12
    max_parallel: int = 3
    lr_range: str | None = None
    batch_sizes: str | None = None
    epochs_range: str | None = None
    archs: str = ""
    image_sizes: str = ""
    early_stopping: bool = True


@dataclass(frozen=True)
class EndpointSpec:
    """A real-time endpoint (`sm deploy`): its model from exactly one of `training_job`, `model_data` (then
    `image`/`cpu_image`), `model_package`; instances, or `serverless` (memory MB, max concurrency)."""

    role: str
    name: str | None = None  # the endpoint's, its config's and its model's name
    training_job: str | None = None
    model_data: str | None = None
    model_package: str | None = None
    image: str | None = None
    cpu_image: str | None = None  # the CPU serving image (ONNX Runtime)
    serverless: tuple[int, int] | None = None
    instance_type: str = DEFAULT_INSTANCE
    instance_count: int = 1
    autoscale: tuple[int, ...] | None = None  # (min, max) instances, checked by `endpoint.deploy`
    invocations_per_instance: int = 300
    capture_s3: str | None = None
    capture_percent: int = 100
    wait: bool = True  # wait for InService (autoscaling always does)
    price_per_hour: float | None = None
    platform: PlatformSettings = PlatformSettings()  # the model's VPC/isolation, every resource's tags, the key


@dataclass(frozen=True)
class BatchSpec:
    """A batch transform job (`sm batch`) over an S3 prefix of images with a SageMaker model."""

    model: str
    input: str
    output: str
    instance_type: str = DEFAULT_INSTANCE
    instance_count: int = 1
    name: str | None = None
    wait: bool = False
    collect_csv: str | None = None  # wait, then write the results as one CSV
    price_per_hour: float | None = None
    platform: PlatformSettings = PlatformSettings()  # tags and KMS key (VPC and isolation: the model's)
