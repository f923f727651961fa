"""What a platform team asks of every resource `sm` creates: tags, a VPC, a customer KMS key, network isolation and
inter-container encryption, as one typed value (`PlatformSettings`), checked offline, and the request fields it
adds to each SageMaker API (`fields(api, request)`; `apply` merges them into a request).

The fields are added where the request is made (`sdk.sdk_session` registers `hook` on botocore's
before-parameter-build event), so every Create* the SDK sends carries them, also where the SDK would drop one
(its tuner leaves out the volume key, isolation and inter-container encryption of the trials), and a dry run
prints them. The same fragments serve code that builds requests itself (`model_fields` and
`endpoint_config_fields` for CreateModel/CreateEndpointConfig; `apply` for a pipeline step's Arguments, which are
the request of its API).

What offline checks cannot know, and a dry run says: that the subnets are in one VPC and the security groups in
that VPC, that the key exists, is enabled and lets the execution role use it.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass

from ..errors import UserError

log = logging.getLogger("bincounter")

MAX_TAGS = 50  # per SageMaker resource, CloudWatch alarm and log group
_SUBNET = re.compile(r"^subnet-([0-9a-f]{8}|[0-9a-f]{17})$")
_SG = re.compile(r"^sg-([0-9a-f]{8}|[0-9a-f]{17})$")
_KEY_ID = r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})"
_ALIAS = r"alias/[a-zA-Z0-9/_-]{1,250}"
_KMS_ARN = re.compile(rf"^arn:aws[a-z-]*:kms:([a-z0-9-]+):(\d{{12}}):(key/{_KEY_ID}|{_ALIAS})$")
_KMS_PLAIN = re.compile(rf"^({_KEY_ID}|{_ALIAS})$")
_TAG_CHARS = re.compile(r"^[\w\s.:/=+\-@]*$")
MAX_SUBNETS, MAX_SGS = 16, 5  # VpcConfig's limits
# instance families with local NVMe storage: SageMaker refuses an endpoint config KmsKeyId on them (their
# instance store is encrypted by the hardware)
_NVME = re.compile(r"^ml\.([a-z]+\d[a-z]*d[a-z]*|g5|g6|g6e|p5|p5e|p5en|trn1|trn1n|inf2)\.")
INTER_CONTAINER_COST = ("inter-container traffic encryption slows the all-reduce between instances (AWS: training "
                        "may take longer, by how much depends on how much the instances exchange); no effect on one "
                        "instance")
NOT_CHECKED_OFFLINE = ("that the subnets are in one VPC, that the security groups belong to it, and that the KMS "
                       "key exists, is enabled and lets the execution role use it")


def parse_tags(pairs: list[str] | None) -> tuple[tuple[str, str], ...]:
    """--tag KEY=VALUE (repeatable) -> ((key, value), ...); the syntax only (`PlatformSettings.check`: the rules)."""
    out = []
    for p in pairs or []:
        key, sep, value = p.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--tag {p!r}: expected KEY=VALUE")
        out.append((key.strip(), value.strip()))
    return tuple(out)


VERSION_TAG = "bincounter:version"  # a default tag: the version that made the resource


def carried_tags(defaults: dict[str, str], own: list[dict], given: tuple[tuple[str, str], ...]) -> list[dict]:
    """The tags of a resource made from another one (sm update's model, endpoint config and alarms, from the live
    endpoint's): the defaults (project, the project config's tags) where the old one has no tag of that key, the
    old one's, then the --tag flags; VERSION_TAG is this version's (what made the new one) unless --tag sets it."""
    merged = {**defaults, **{t["Key"]: t["Value"] for t in own}}
    if VERSION_TAG in defaults:
        merged[VERSION_TAG] = defaults[VERSION_TAG]
    return [{"Key": k, "Value": v} for k, v in {**merged, **dict(given)}.items()]


def check_tag(key: str, value: str, where: str | None = None) -> None:
    """One tag by the rules of SageMaker, CloudWatch and CloudWatch Logs alike; `where` names it (default: --tag)."""
    where = where or f"--tag {key}={value}"
    if not 1 <= len(key) <= 128 or len(value) > 256 or not (_TAG_CHARS.match(key) and _TAG_CHARS.match(value)):
        raise UserError(f"{where}: a key of 1..128 and a value of 0..256 letters, digits, spaces and _ . : / = + - @")
    if key.lower().startswith("aws:"):
        raise UserError(f"{where}: keys starting with 'aws:' are reserved by AWS")


def check_carried(tags: list[dict], defaults: dict[str, str], own: list[dict], given: tuple[tuple[str, str], ...],
                  whose: str, what: str) -> None:
    """`PlatformSettings.check`'s rules on a merged list (`carried_tags`'s, plus any tag the caller added) before
    anything is sent, each tag named by where it came from: --tag, `whose` (the old resource, e.g. "the live
    model"), the defaults (project, VERSION_TAG), the project config, else sm update; `what`: the new resource."""
    given_keys, own_keys = dict(given), {t["Key"] for t in own}

    def source(key: str) -> str:
        if key in given_keys:
            return "--tag"
        if key in own_keys and not (key == VERSION_TAG and key in defaults):
            return whose
        if key in defaults:
            return "the defaults" if key in ("project", VERSION_TAG) else "the project config"
        return "sm update"

    for t in tags:
        src = source(t["Key"])
        check_tag(t["Key"], t["Value"], None if src == "--tag" else f"tag {t['Key']}={t['Value']} (from {src})")
    if len(tags) > MAX_TAGS:
        counts = ", ".join(f"{n} from {s}" for s, n in Counter(source(t["Key"]) for t in tags).most_common())
        raise UserError(f"{len(tags)} tags on the new {what} ({counts}): AWS takes at most {MAX_TAGS} per resource; "
                        f"remove some from {whose} (aws sagemaker delete-tags), the project config or --tag")


def split_ids(text: str | None) -> tuple[str, ...]:
    """'subnet-a,subnet-b' -> ('subnet-a', 'subnet-b')."""
    return tuple(v.strip() for v in (text or "").split(",") if v.strip())


def check_kms_key(key: str, region: str | None = None, flag: str = "--kms-key") -> None:
    """A key id (UUID or mrk-...), a key ARN, an alias (alias/NAME) or an alias ARN; an ARN in another region than
    the job's is refused (SageMaker uses keys of its own region)."""
    m = _KMS_ARN.match(key)
    if not (m or _KMS_PLAIN.match(key)):
        raise UserError(f"{flag} {key!r}: not a KMS key id (1234abcd-12ab-34cd-56ef-1234567890ab), key ARN "
                        "(arn:aws:kms:REGION:ACCOUNT:key/ID), alias (alias/NAME) or alias ARN")
    if m and region and m.group(1) != region:
        raise UserError(f"{flag} {key}: the key is in {m.group(1)}, the job in {region} (SageMaker uses a key of "
                        "its own region)")


@dataclass(frozen=True)
class PlatformSettings:
    """Tags, VPC, KMS key, isolation and inter-container encryption for what an `sm` command creates. Empty: no
    field is added (the default tags are the CLI's to add: `with_default_tags`)."""

    tags: tuple[tuple[str, str], ...] = ()
    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    kms_key: str | None = None
    isolation: bool = False
    inter_container_encryption: bool = False

    def check(self, region: str | None = None) -> None:
        """Every offline rule, one line each (UserError)."""
        keys = [k for k, _ in self.tags]
        for k, v in self.tags:
            check_tag(k, v)
        if dup := sorted({k for k in keys if keys.count(k) > 1}):
            raise UserError(f"--tag {dup[0]} given twice with different values")
        if len(keys) > MAX_TAGS:
            raise UserError(f"{len(keys)} tags: SageMaker takes at most {MAX_TAGS} per resource")
        for flag, ids, rx, most, shape in (("--subnets", self.subnets, _SUBNET, MAX_SUBNETS, "subnet-0123abcd"),
                                           ("--security-groups", self.security_groups, _SG, MAX_SGS, "sg-0123abcd")):
            for i in ids:
                if not rx.match(i):
                    raise UserError(f"{flag} {i!r}: not an id of the form {shape} (8 or 17 hex digits)")
            if len(ids) > most:
                raise UserError(f"{flag}: {len(ids)} given, a VpcConfig takes at most {most}")
        if bool(self.subnets) != bool(self.security_groups):
            raise UserError("--subnets and --security-groups go together: a job in a VPC needs both")
        if self.kms_key:
            check_kms_key(self.kms_key, region)

    def check_training(self, region: str | None, instance_count: int | None) -> None:
        """`check`, and what only a training job's volume and cluster care about."""
        self.check(region)
        if self.kms_key and (self.kms_key.startswith("alias/") or ":alias/" in self.kms_key):
            raise UserError(f"--kms-key {self.kms_key}: a training job's volume takes a key id or key ARN, not an "
                            f"alias (aws kms describe-key --key-id {self.kms_key} gives its ARN)")
        if self.inter_container_encryption:
            if instance_count == 1:
                log.warning("--inter-container-encryption with one instance: nothing to encrypt between "
                            "instances (it matters from 2)")
            else:
                log.info("%s", INTER_CONTAINER_COST)

    def with_default_tags(self, defaults: dict[str, str]) -> PlatformSettings:
        """The defaults first, each replaced by a tag of the same key given by the user."""
        given = dict(self.tags)
        merged = tuple((k, v) for k, v in defaults.items() if k not in given) + self.tags
        return PlatformSettings(merged, self.subnets, self.security_groups, self.kms_key, self.isolation,
                                self.inter_container_encryption)

    @property
    def vpc_config(self) -> dict | None:
        if not self.subnets:
            return None
        return {"SecurityGroupIds": list(self.security_groups), "Subnets": list(self.subnets)}

    def tag_list(self) -> list[dict]:
        return [{"Key": k, "Value": v} for k, v in self.tags]

    def dry_run_notes(self) -> list[str]:
        """What a dry run cannot check, for the settings in use."""
        if not (self.subnets or self.kms_key):
            return []
        return [f"dry run: not checked offline: {NOT_CHECKED_OFFLINE} (a real run finds out from SageMaker)"]


# ------------------------------------------------------------------------------------------------ the fields
def _job_fields(s: PlatformSettings) -> dict:
    """What a training job and a tuning job's TrainingJobDefinition take alike."""
    f: dict = {}
    if s.vpc_config:
        f["VpcConfig"] = s.vpc_config
    if s.isolation:
        f["EnableNetworkIsolation"] = True
        f["Environment"] = {"HF_HUB_OFFLINE": "1"}  # the trainer never reaches for the hub, even by mistake
    if s.inter_container_encryption:
        f["EnableInterContainerTrafficEncryption"] = True
    if s.kms_key:
        f["OutputDataConfig"] = {"KmsKeyId": s.kms_key}
        f["ResourceConfig"] = {"VolumeKmsKeyId": s.kms_key}
    return f


def model_fields(s: PlatformSettings) -> dict:
    """CreateModel's fields: tags, VPC, isolation."""
    f: dict = {"Tags": s.tag_list()} if s.tags else {}
    if s.vpc_config:
        f["VpcConfig"] = s.vpc_config
    if s.isolation:
        f["EnableNetworkIsolation"] = True
    return f


def endpoint_config_fields(s: PlatformSettings, instance_types: list[str | None] = (), capture: bool = False) -> dict:
    """CreateEndpointConfig's fields: tags, the storage volume's key (left out for serverless variants (None) and
    instance types with local NVMe storage, which SageMaker refuses it for) and data capture's key (`capture`)."""
    f: dict = {"Tags": s.tag_list()} if s.tags else {}
    if s.kms_key:
        no_volume = [t or "serverless" for t in instance_types if t is None or _NVME.match(t)]
        if no_volume:
            log.info("--kms-key: not set on the endpoint's storage volume for %s (SageMaker refuses a key there: "
                     "local NVMe storage is encrypted by the hardware, serverless has no volume)",
                     ", ".join(no_volume))
        else:
            f["KmsKeyId"] = s.kms_key
        if capture:
            f["DataCaptureConfig"] = {"KmsKeyId": s.kms_key}
    return f


def processing_fields(s: PlatformSettings) -> dict:
    """CreateProcessingJob's fields (for a pipeline's processing steps)."""
    f: dict = {"Tags": s.tag_list()} if s.tags else {}
    net = {}
    if s.vpc_config:
        net["VpcConfig"] = s.vpc_config
    if s.isolation:
        net["EnableNetworkIsolation"] = True
    if s.inter_container_encryption:
        net["EnableInterContainerTrafficEncryption"] = True
    if net:
        f["NetworkConfig"] = net
    if s.kms_key:
        f["ProcessingResources"] = {"ClusterConfig": {"VolumeKmsKeyId": s.kms_key}}
        f["ProcessingOutputConfig"] = {"KmsKeyId": s.kms_key}
    return f


def fields(api: str, request: dict, s: PlatformSettings) -> dict:
    """The fields `s` adds to `request` of SageMaker's `api`; {} for an API it has nothing for."""
    tags = {"Tags": s.tag_list()} if s.tags else {}
    if api == "CreateTrainingJob":
        return {**tags, **_job_fields(s)}
    if api == "CreateHyperParameterTuningJob":  # the tuning job's tags go to every trial too (AWS)
        return {**tags, "TrainingJobDefinition": _job_fields(s)}
    if api == "CreateModel":
        return model_fields(s)
    if api == "CreateEndpointConfig":
        variants = request.get("ProductionVariants", [])
        return endpoint_config_fields(s, [None if "ServerlessConfig" in v else v.get("InstanceType")
                                          for v in variants], capture="DataCaptureConfig" in request)
    if api == "CreateTransformJob":  # VPC and isolation: the model's
        return {**tags, **({"TransformOutput": {"KmsKeyId": s.kms_key},
                            "TransformResources": {"VolumeKmsKeyId": s.kms_key}} if s.kms_key else {})}
    if api == "CreateProcessingJob":  # an output config is the request's to have (it needs Outputs)
        f = processing_fields(s)
        if "ProcessingOutputConfig" not in request:
            f.pop("ProcessingOutputConfig", None)
        return f
    if api.startswith("Create") and api in _TAGGED:
        return tags
    return {}


# other SageMaker creates that take Tags (what an sm command or a pipeline may make)
_TAGGED = {"CreateEndpoint", "CreatePipeline", "CreateModelPackageGroup", "CreateExperiment"}


def _merge(into: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if k == "Tags":
            mine = {t["Key"] for t in v}
            into[k] = [t for t in into.get(k) or [] if t["Key"] not in mine] + v
        elif isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v
    return into


def apply(api: str, request: dict, s: PlatformSettings) -> dict:
    """`request` with `fields(api, request, s)` merged in (nested dicts merged, tags by key); changed in place."""
    return _merge(request, fields(api, request, s))


def hook(s: PlatformSettings):
    """A botocore before-parameter-build handler adding `s` to every SageMaker request it has fields for."""
    def add(params, model, **_):
        apply(model.name, params, s)
    return add
