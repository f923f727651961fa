"""SageMaker Python SDK v3 local mode, with its gaps for custom images wrapped once, here.

* `ModelTrainer(LOCAL_CONTAINER)` starts the image with no command: the image's ENTRYPOINT trains then.
* Local multi-host names the NIC `ethwe`; the trainer picks the real one (distributed.choose_ifname).
* `local_container_root` defaults to the current directory and leaks earlier jobs' files into the next
  model.tar.gz: every job gets a fresh directory here.
* Channels must be plain absolute paths (not file://); `output_data_config` is ignored locally.
* Telemetry and the execution-role lookup must not reach AWS: a config file with TelemetryOptOut, a fixed
  placeholder role, placeholder credentials when none are set, no instance-metadata lookups.
* `ModelBuilder(LOCAL_CONTAINER)` pulls the image and starts nothing for a plain custom image, so local
  serving goes through `LocalSession` (create_model / create_endpoint_config / create_endpoint /
  invoke_endpoint).
* The SDK leaves exited `algo-*` containers and the `sagemaker-local` network: `cleanup_docker` removes
  what a job started, on success, failure and Ctrl-C alike.

The local pipeline's own gaps (two local sessions, the executor's JsonGet on file:// outputs, ModelBuilder.build's
client) are worked around in sdk_compat. A file:// input that names a file (a model.tar.gz) mounts its whole folder
(next to output.tar.gz): the Evaluate step names its model file with `--model` (pipeline_local).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError
from . import sdk_compat
from .sdk import write_offline_config

log = logging.getLogger("bincounter")
#: what `local_train` records in its workdir (the channels it trained on), for serve_local's test channel
TRAIN_RECORD = "local-train.json"
LOCAL_ROLE = "arn:aws:iam::111111111111:role/bincounter-local-mode"


class LocalJobFailed(UserError):
    """A local job ran and failed (or was stopped): no usable result. The scripts exit 1 on it, not 2."""


def offline_sdk_env(workdir: Path) -> None:
    """Make the SDK work with no AWS account: call before importing sagemaker."""
    sdk_compat.quiet_region_notice()
    os.environ["SAGEMAKER_USER_CONFIG_OVERRIDE"] = str(write_offline_config(workdir))
    os.environ.setdefault("AWS_REGION", "us-east-1")
    os.environ.setdefault("AWS_DEFAULT_REGION", os.environ["AWS_REGION"])
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    if not (os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")):
        os.environ["AWS_ACCESS_KEY_ID"] = os.environ["AWS_SECRET_ACCESS_KEY"] = "local-mode"


def _docker(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True)


def _containers(root: Path) -> list[str]:
    """Ids of the containers the SDK's docker-compose started from a directory under `root` (compose labels each
    container with its working dir)."""
    rows = _docker("ps", "-a", "--format", '{{.ID}} {{.Label "com.docker.compose.project.working_dir"}}').stdout
    root_s = str(Path(root).resolve())
    return [cid for cid, _, wd in (r.partition(" ") for r in rows.splitlines()) if wd.startswith(root_s)]


def container_log_tail(root: Path, lines: int = 15) -> str:
    """The last `lines` log lines of the containers started under `root` (why an endpoint never came up)."""
    tails = []
    for cid in _containers(root):
        out = _docker("logs", "--tail", str(lines), cid)
        text = (out.stdout + out.stderr).strip()
        if text:
            tails.append(text)
    return "\n".join(tails)


def cleanup_docker(root: Path) -> None:
    """Remove every container the SDK's docker-compose started from a directory under `root`, and the
    sagemaker-local network when nothing uses it."""
    ids = _containers(root)
    if ids:
        _docker("rm", "-f", *ids)
        log.info("removed %d local-mode container(s)", len(ids))
    net = _docker("network", "inspect", "sagemaker-local", "--format", "{{len .Containers}}")
    if net.returncode == 0 and net.stdout.strip() == "0":
        _docker("network", "rm", "sagemaker-local")


def check_image(image: str) -> None:
    if _docker("image", "inspect", image).returncode != 0:
        raise UserError(f"Docker image {image} not found; build it with `make image` "
                        "(or container/build_local.sh)")


def check_model_tarball(tarball: Path) -> None:
    """A model.tar.gz a local job wrote must hold a model (config.json and weights). The SDK packs one even when
    the job failed or was stopped (docker compose exiting 130 counts as success there): an empty one is a failure."""
    from ..artifact import CONFIG, ONNX, WEIGHTS

    try:
        with tarfile.open(tarball) as tar:
            names = {Path(n).as_posix().removeprefix("./") for n in tar.getnames()}
    except (OSError, EOFError, tarfile.TarError) as e:
        raise LocalJobFailed(f"local training left an unreadable {tarball.name} ({e})") from None
    missing = [n for n in (CONFIG, WEIGHTS) if n not in names]
    if CONFIG in names and WEIGHTS in missing and ONNX in names:
        missing = []
    if missing:
        what = "is empty" if not names else f"has no {' or '.join(missing)}"
        raise LocalJobFailed(f"local training produced no model ({tarball.name} {what}): the job failed or was "
                             "stopped; see the container log above")


def record_channels(workdir: Path, channels: Path) -> None:
    """Note in `workdir` which channels a local training run used (serve_local's default test channel)."""
    (workdir / TRAIN_RECORD).write_text(json.dumps({"channels": str(Path(channels).resolve())}) + "\n")


def recorded_channels(workdir: Path) -> Path | None:
    """The channels the last `local_train` in `workdir` used, if it recorded them."""
    try:
        return Path(json.loads((workdir / TRAIN_RECORD).read_text())["channels"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def local_train(image: str, channels: Path, workdir: Path, hyperparameters: dict, instance_count: int = 2,
                job_name: str | None = None, pretrained: Path | None = None) -> Path:
    """Train in SageMaker local mode on `instance_count` local "instances" (containers). -> model.tar.gz
    `pretrained`: a weights directory (`bincounter weights fetch`) given to the job as its `pretrained` channel,
    as a network-isolated SageMaker job gets its ImageNet weights."""
    check_image(image)
    channels = Path(channels).resolve()
    present = [c for c in ("train", "val", "test") if (channels / c).is_dir()]
    if "train" not in present or "val" not in present:
        raise UserError(f"{channels}: needs train/ and val/ channels (run `bincounter data split`)")
    offline_sdk_env(workdir)
    from sagemaker.train import ModelTrainer
    from sagemaker.train.configs import Compute, InputData
    from sagemaker.train.model_trainer import Mode

    job_name = job_name or f"bincounter-local-{uuid.uuid4().hex[:6]}"
    root = Path(tempfile.mkdtemp(prefix=f"{job_name}-", dir=workdir))  # fresh: nothing leaks in
    try:
        trainer = ModelTrainer(training_mode=Mode.LOCAL_CONTAINER, training_image=image, role=LOCAL_ROLE,
                               compute=Compute(instance_type="local_cpu", instance_count=instance_count),
                               hyperparameters=hyperparameters, local_container_root=str(root),
                               base_job_name="bincounter-local")
        log.info("local training: %d instance(s) of %s, channels %s, hyperparameters %s", instance_count, image,
                 present, json.dumps(hyperparameters))
        inputs = [InputData(channel_name=c, data_source=str(channels / c)) for c in present]
        if pretrained is not None:
            inputs.append(InputData(channel_name="pretrained", data_source=str(Path(pretrained).resolve())))
        try:
            trainer.train(input_data_config=inputs)
        except RuntimeError as e:  # docker compose exited non-zero: a container failed
            raise LocalJobFailed(f"local training failed ({' '.join(str(e).split())[-200:]}); see the container "
                                 "log above") from None
        tarball = root / "compressed_artifacts" / "model.tar.gz"
        if not tarball.is_file():
            raise LocalJobFailed(f"local training produced no model.tar.gz in {root}")
        check_model_tarball(tarball)
        out = workdir / "model.tar.gz"
        tmp = workdir / "model.tar.gz.part"
        shutil.copyfile(tarball, tmp)
        tmp.replace(out)  # a model.tar.gz under its name is always whole
        record_channels(workdir, channels)
        for extra in ("output.tar.gz",):
            if (root / "compressed_artifacts" / extra).is_file():
                shutil.copyfile(root / "compressed_artifacts" / extra, workdir / extra)
        return out
    finally:
        cleanup_docker(root)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def local_endpoint(image: str, model_tar: Path, workdir: Path, name: str | None = None):
    """A local SageMaker endpoint serving `model_tar`; yields `invoke(body, content_type) -> dict`.
    Everything it creates is deleted on exit, also on errors and Ctrl-C."""
    check_image(image)
    offline_sdk_env(workdir)
    from sagemaker.core.local.local_session import LocalSession

    session = LocalSession()
    root = Path(tempfile.mkdtemp(prefix="endpoint-", dir=workdir))
    session.config = {"local": {"container_root": str(root)}}  # the hosting dir lands under our root
    sm, rt = session.sagemaker_client, session.sagemaker_runtime_client
    name = name or f"bincounter-local-{uuid.uuid4().hex[:6]}"
    created = []
    try:
        # the SDK unpacks a file:// model next to the tarball: give it a private copy
        staged = root / "model" / "model.tar.gz"
        staged.parent.mkdir()
        shutil.copyfile(model_tar, staged)
        sm.create_model(ModelName=name, PrimaryContainer={
            "Image": image, "ModelDataUrl": f"file://{staged}",
            "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}})
        created.append("model")
        sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
            "InstanceType": "local_cpu"}])
        created.append("config")
        t0 = time.monotonic()
        try:
            sm.create_endpoint(EndpointName=name, EndpointConfigName=name)  # returns once /ping is 200
        except RuntimeError as e:  # the SDK's "Giving up, endpoint didn't launch correctly": say why
            tail = container_log_tail(root)
            raise LocalJobFailed(f"local endpoint did not come up ({e})" + (
                "; the container's log ends:\n" + "\n".join(f"  {line}" for line in tail.splitlines())
                if tail else "; the container left no log")) from None
        created.append("endpoint")
        log.info("local endpoint %s up in %.1f s", name, time.monotonic() - t0)

        def invoke(body: bytes, content_type: str = "image/jpeg") -> dict:
            resp = rt.invoke_endpoint(EndpointName=name, Body=body, ContentType=content_type,
                                      Accept="application/json")
            raw = resp["Body"].read() if hasattr(resp["Body"], "read") else resp["Body"]
            return json.loads(raw)

        yield invoke
    finally:
        if "endpoint" in created:
            sm.delete_endpoint(EndpointName=name)
        if "config" in created:
            sm.delete_endpoint_config(EndpointConfigName=name)
        if "model" in created:
            sm.delete_model(ModelName=name)
        cleanup_docker(root)
        shutil.rmtree(root, ignore_errors=True)
