"""MLflow tracking (issue 24.3) against a real `mlflow server` this module starts (sqlite backend, artifacts served
by the server from a tmp folder), read back with MlflowClient: params, every epoch's metrics, the rules that fired,
the PNGs and the model; a tuning trial through the container's contract; the URI handling; no mlflow import
without tracking."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bincounter.errors import UserError
from bincounter.sm import hyperparameters
from bincounter.tracking import check_uri, resolve_uri, uri_kind
from bincounter.train import TrainConfig, train

from .conftest import assert_one_line_error, free_port, run_cli
from .helpers import make_opt_ml

ARN = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/bc-tracking"


@pytest.fixture()
def client(mlflow_server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server)


@pytest.fixture(autouse=True)
def _no_ambient_tracking(monkeypatch):
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_NAME", "TRAINING_JOB_NAME",
              "TRAINING_JOB_ARN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # an unreachable server answers at once


def _cfg(channels, model_dir, **kw):
    base = dict(train_dir=str(channels / "train"), val_dir=str(channels / "val"), model_dir=str(model_dir),
                epochs=1, image_size=64, pretrained=False, workers=0, batch_size=16, show_progress=False)
    return TrainConfig(**{**base, **kw})


def _only_run(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, experiment
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


# ----------------------------------------------------------------------------------------- a training run
def test_a_training_run_is_logged_in_full(mlflow_server, client, channels_copy, tmp_path, monkeypatch):
    """2 epochs, count 3 missing from train (rules fire), a test channel: everything readable back."""
    shutil.rmtree(channels_copy / "train" / "3")
    monkeypatch.setenv("TRAINING_JOB_NAME", "bc-train-42")
    r = train(_cfg(channels_copy, tmp_path / "m", test_dir=str(channels_copy / "test"), epochs=2, lr=1e-9,
                   warmup_epochs=0, mlflow=mlflow_server, mlflow_experiment="counts-a",
                   mlflow_from_trial="bc-hpo-1-003-abc"))
    # the process environment is as it was: mlflow's export of the URI would make this process's later
    # subprocesses (CI's next `bincounter train`) track to a server that is gone
    assert "MLFLOW_TRACKING_URI" not in os.environ
    run = _only_run(client, "counts-a")
    assert run.info.status == "FINISHED" and run.info.run_name == "bc-train-42"
    p = run.data.params
    assert p["lr"] == "1e-09" and p["epochs"] == "2" and p["arch"] == "efficientnet_b0" and p["image_size"] == "64"
    assert p["world_size"] == "1" and not any(k.startswith("mlflow") for k in p)
    # every epoch's metric line, step = epoch, the same numbers as metrics.json
    for key in ("train_loss", "val_loss", "val_acc", "val_rmse", "best_val_acc", "lr", "rules_fired"):
        hist = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))[:2]
        assert [m.step for m in hist] == [1, 2], key
        assert [m.value for m in hist] == pytest.approx([h[key] for h in r["history"]]), key
    m = run.data.metrics
    assert m["test_accuracy"] == pytest.approx(r["test"]["accuracy"]) and m["test_n"] == r["test"]["n"] == 10
    assert m["best_val_acc"] == pytest.approx(r["best"]["val_acc"]) and m["rules_fired"] == r["rules_fired"] == 3
    # the rules that fired: a tag with their names, and rules.json itself
    fired = json.loads((tmp_path / "m" / "rules.json").read_text())["fired"]
    assert set(run.data.tags["bincounter.rules"].split(",")) == {f["rule"] for f in fired} \
        == {"empty_class", "collapsed", "never_predicted"}
    tags = run.data.tags
    assert tags["sagemaker.training_job"] == "bc-train-42" and tags["bincounter.from_trial"] == "bc-hpo-1-003-abc"
    assert tags["bincounter.model_version"] == r["model_version"]
    files = _artifacts(client, run.info.run_id)
    assert {"training_curves.png", "test_confusion_matrix.png", "rules.json", "metrics.json", "test_metrics.json",
            "model/model.safetensors", "model/config.json", "model/model.onnx"} <= files
    # the model artifact is the model folder's bytes
    from mlflow.artifacts import download_artifacts

    got = Path(download_artifacts(run_id=run.info.run_id, artifact_path="model", dst_path=str(tmp_path / "dl"),
                                  tracking_uri=mlflow_server))
    for name in ("model.safetensors", "config.json"):
        assert (got / name).read_bytes() == (tmp_path / "m" / name).read_bytes()
    png = Path(download_artifacts(run_id=run.info.run_id, artifact_path="training_curves.png",
                                  dst_path=str(tmp_path / "dl2"), tracking_uri=mlflow_server))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_stopped_by_a_rule_ends_failed_and_names_the_rule(mlflow_server, client, channels, tmp_path):
    with pytest.raises(UserError, match="rule nonfinite"):
        train(_cfg(channels, tmp_path / "m", epochs=3, lr=1e30, warmup_epochs=0, batch_size=4,
                   mlflow=mlflow_server, mlflow_experiment="diverging"))
    run = _only_run(client, "diverging")
    assert run.info.status == "FAILED"
    assert run.data.tags["bincounter.rules"] == "nonfinite" and "rule nonfinite" in run.data.tags["bincounter.error"]
    assert "rules.json" in _artifacts(client, run.info.run_id)


def test_a_crash_leaves_a_failed_run_with_its_epochs_and_the_resumed_run_logs_them_too(
        mlflow_server, client, channels, tmp_path, monkeypatch):
    import bincounter.train as tr

    real = tr.train_one_epoch

    def crash_at_2(*a, **kw):
        if kw["epoch"] == 2:
            raise RuntimeError("killed at epoch 2")
        return real(*a, **kw)

    ck = str(tmp_path / "ck")
    with monkeypatch.context() as m:
        m.setattr(tr, "train_one_epoch", crash_at_2)
        with pytest.raises(RuntimeError):
            train(_cfg(channels, tmp_path / "m", checkpoint_dir=ck, epochs=2, mlflow=mlflow_server,
                       mlflow_experiment="resumed"))
    [failed] = client.search_runs([client.get_experiment_by_name("resumed").experiment_id])
    assert failed.info.status == "FAILED" and "killed at epoch 2" in failed.data.tags["bincounter.error"]
    assert [m.step for m in client.get_metric_history(failed.info.run_id, "val_loss")] == [1]  # logged as it went
    r = train(_cfg(channels, tmp_path / "m", checkpoint_dir=ck, epochs=2, mlflow=mlflow_server,
                   mlflow_experiment="resumed"))
    [run] = [x for x in client.search_runs([failed.info.experiment_id]) if x.info.run_id != failed.info.run_id]
    hist = client.get_metric_history(run.info.run_id, "val_loss")
    assert run.info.status == "FINISHED" and [m.step for m in hist] == [1, 2]
    assert [m.value for m in hist] == pytest.approx([h["val_loss"] for h in r["history"]])


def test_mlflow_tracking_uri_in_the_environment_turns_tracking_on(
        mlflow_server, client, channels, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    train(_cfg(channels, tmp_path / "m"))
    assert _only_run(client, "from-env").info.status == "FINISHED"


# ------------------------------------------------------------------------- tuning trials and the final job
def _container_train(tmp_path, channels, hps: dict, job: str, monkeypatch):
    """What a SageMaker training job runs (train_entry.run over a /opt/ml tree), with SageMaker's job-name env."""
    from bincounter.sagemaker.contract import TrainingContract
    from bincounter.sagemaker.train_entry import run

    base = make_opt_ml(tmp_path / job, channels, hps)
    monkeypatch.setenv("TRAINING_JOB_NAME", job)
    monkeypatch.setenv("SM_MODEL_DIR", str(base / "model"))
    run(TrainingContract.from_env(base))


def test_tuning_trials_are_runs_of_the_tuning_jobs_experiment_and_the_final_job_names_its_trial(
        mlflow_server, client, channels, tmp_path, monkeypatch):
    user = {"mlflow": mlflow_server, "epochs": "1", "image_size": "64", "pretrained": "false", "workers": "0",
            "progress": "false"}
    static = hyperparameters.with_tracking(user, experiment="bc-hpo-7")  # what sm tune puts in every trial
    assert static["mlflow_experiment"] == "bc-hpo-7"
    for i, lr in enumerate(("1e-3", "3e-4"), 1):
        _container_train(tmp_path, channels, {**static, "lr": lr}, f"bc-hpo-7-00{i}-abcd", monkeypatch)
    exp = client.get_experiment_by_name("bc-hpo-7")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"bc-hpo-7-001-abcd", "bc-hpo-7-002-abcd"}
    assert runs["bc-hpo-7-002-abcd"].data.params["lr"] == "0.0003"
    # sm train --from-tuning-job: the tuning job's static + best hyperparameters, and the best trial's name
    desc = {"BestTrainingJob": {"TrainingJobName": "bc-hpo-7-002-abcd", "TunedHyperParameters": {"lr": "3e-4"}},
            "TrainingJobDefinition": {"StaticHyperParameters": {**static, "_tuning_objective_metric": "x"}}}
    from bincounter.sm.jobs import best_hyperparameters

    final = hyperparameters.with_tracking({**best_hyperparameters(None, "bc-hpo-7", desc),
                                           **hyperparameters.from_trial(desc)})
    hyperparameters.validate({k: v for k, v in final.items() if k != "mlflow"})  # (a loopback server here)
    _container_train(tmp_path, channels, final, "bc-final-1", monkeypatch)
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert runs["bc-final-1"].data.tags["bincounter.from_trial"] == "bc-hpo-7-002-abcd"
    assert runs["bc-final-1"].info.status == "FINISHED"


def test_sm_tune_and_train_pass_the_uri_and_names_through_only_when_asked():
    def dry(*args):
        proc = run_cli("sm", *args, "--dry-run", "--endpoint-url", "http://127.0.0.1:9", env=ENV)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["request"]

    r = dry("tune", *TRAIN, "--name", "bc-hpo-9", "--hp", f"mlflow={ARN}")
    static = r["TrainingJobDefinition"]["StaticHyperParameters"]
    assert static["mlflow"] == ARN and static["mlflow_experiment"] == "bc-hpo-9"
    r = dry("train", *TRAIN, "--from-tuning-job", "bc-hpo-9", "--hp", "mlflow=https://mlflow.example.com")
    assert r["HyperParameters"]["mlflow_from_trial"] == "<best trial of bc-hpo-9>"
    r = dry("tune", *TRAIN, "--name", "bc-hpo-9", "--mlflow", ARN)  # the flag is --hp mlflow=URI
    assert r["TrainingJobDefinition"]["StaticHyperParameters"]["mlflow"] == ARN
    assert dry("train", *TRAIN, "--mlflow", "https://m.example.com")["HyperParameters"]["mlflow"] == \
        "https://m.example.com"
    assert_one_line_error(run_cli("sm", "train", *TRAIN, "--mlflow", "https://a.example.com", "--hp",
                                  "mlflow=https://b.example.com", "--dry-run", env=ENV), "give one")
    # without tracking the requests carry no MLflow name at all
    assert not any(k.startswith("mlflow") for k in dry("tune", *TRAIN)["TrainingJobDefinition"][
        "StaticHyperParameters"])
    assert not any(k.startswith("mlflow") for k in dry("train", *TRAIN, "--from-tuning-job", "bc-hpo-9")[
        "HyperParameters"])


ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", "SAGEMAKER_VALIDATE_ROLE": "false",
       "MLFLOW_TRACKING_URI": ""}
TRAIN = ["--role", "arn:aws:iam::123456789012:role/r", "--image", "1.dkr.ecr.us-east-1.amazonaws.com/b:1",
         "--train", "s3://bkt/ch/train/", "--val", "s3://bkt/ch/val/", "--output", "s3://bkt/out"]


# ------------------------------------------------------------------------------------------ the URI
def test_resolve_uri_flag_env_and_off():
    assert resolve_uri(None, {}) is None
    assert resolve_uri(None, {"MLFLOW_TRACKING_URI": "http://m:5000"}) == "http://m:5000"
    assert resolve_uri("https://x", {"MLFLOW_TRACKING_URI": "http://m:5000"}) == "https://x"
    assert resolve_uri("off", {"MLFLOW_TRACKING_URI": "http://m:5000"}) is None
    assert resolve_uri(None, {"MLFLOW_TRACKING_URI": " "}) is None


@pytest.mark.parametrize("uri,kind", [(ARN, "arn"), (ARN.replace("mlflow-tracking-server", "mlflow-app"), "arn"),
                                      ("https://mlflow.example.com/", "http"), ("./mlruns", "local"),
                                      ("file:///tmp/x", "local"), ("sqlite:///x.db", "local"),
                                      ("databricks", "other")])
def test_uri_kinds(uri, kind):
    assert uri_kind(uri) == kind and check_uri(uri) == kind


@pytest.mark.parametrize("uri,needle", [
    ("arn:aws:sagemaker:us-east-1:123:mlflow-tracking-server/x", "not a SageMaker MLflow tracking server ARN"),
    ("arn:aws:s3:::bucket", "not a SageMaker MLflow tracking server ARN"),
    ("http://", "not an http")])
def test_a_malformed_uri_is_one_line(uri, needle):
    with pytest.raises(UserError, match=needle):
        check_uri(uri)


@pytest.mark.parametrize("uri", ["./mlruns", "file:///tmp/mlruns", "sqlite:///m.db", "http://localhost:5000",
                                 "http://127.0.0.1:5000/"])
def test_a_sagemaker_job_refuses_a_store_on_this_machine(uri):
    with pytest.raises(UserError, match=r"--hp mlflow=.*a SageMaker job cannot reach a store on this machine"):
        hyperparameters.validate({"mlflow": uri})
    hyperparameters.validate({"mlflow": ARN})
    hyperparameters.validate({"mlflow": "https://mlflow.example.com"})


def test_an_arn_needs_the_sagemaker_mlflow_plugin(monkeypatch):
    import importlib.util

    from bincounter import tracking

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "sagemaker_mlflow" else real(n, *a))
    with pytest.raises(UserError, match="needs the sagemaker-mlflow plugin"):
        tracking.start(ARN, config={})


def test_the_sagemaker_mlflow_plugin_is_what_answers_an_arn():
    """With the plugin installed, MLflow resolves an ARN to the plugin's store and auth (its entry points)."""
    from importlib.metadata import entry_points

    assert {e.name for e in entry_points(group="mlflow.tracking_store")} >= {"arn"}
    assert {e.name for e in entry_points(group="mlflow.request_auth_provider")} >= {"arn"}


def test_an_unreachable_server_stops_the_run_in_one_line_before_training(channels, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    proc = run_cli("train", "--train", channels / "train", "--val", channels / "val", "--model-dir", tmp_path / "m",
                   "--epochs", "1", "--image-size", "64", "--no-pretrained", "--workers", "0", "--no-progress",
                   "--mlflow", url, env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    assert_one_line_error(proc, f"--mlflow {url}: cannot start an MLflow run")
    assert "epoch=" not in proc.stdout and not (tmp_path / "m" / "model.safetensors").exists()


# --------------------------------------------------------------------------------- no import without it
def test_without_tracking_mlflow_is_never_imported(channels, tmp_path):
    code = f"""
import sys
from bincounter.train import TrainConfig, train
train(TrainConfig(train_dir={str(channels / 'train')!r}, val_dir={str(channels / 'val')!r},
                  model_dir={str(tmp_path / 'm')!r}, epochs=1, image_size=64, pretrained=False, workers=0,
                  batch_size=16, show_progress=False))
from bincounter.cli import main
assert main(["sm", "tune", *{TRAIN!r}, "--hp", "mlflow=https://m.example.com", "--dry-run", "-q"]) == 0
print("MLFLOW", sorted(m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")))
"""
    env = {**os.environ, **ENV}
    env.pop("MLFLOW_TRACKING_URI")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "MLFLOW []", proc.stdout[-2000:]


def test_tracking_leaves_the_environment_as_it_found_it(monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; tracking undoes that, whether the variable was unset
    (it stays unset) or set to another server (it keeps that value). mlflow's process-wide URI is reset first: it
    skips the export when the URI is already the same."""
    import mlflow.tracking._tracking_service.utils as mlflow_uri

    from bincounter.tracking import _plugin_quirks

    monkeypatch.setattr(mlflow_uri, "_tracking_uri", None)
    _plugin_quirks("http://127.0.0.1:1")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setattr(mlflow_uri, "_tracking_uri", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://a.example.com")
    _plugin_quirks("http://127.0.0.1:2")
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://a.example.com"
