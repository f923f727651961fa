"""`docker run IMAGE train` under the SageMaker contract, with real containers."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest
import torch

from ..helpers import docker, make_opt_ml, wait_for

HPS = {"epochs": 1, "image_size": 64, "pretrained": "false", "workers": 0, "batch_size": 8}


def test_train_writes_the_model_and_logs_the_run_to_mlflow(image, channels, tmp_path, names, mlflow_server):
    """The image's own MLflow client (mlflow-skinny) logs the job to a real server on this host (issue 24.3):
    the `mlflow` hyperparameter as `sm train --mlflow` sets it, SageMaker's job-name variable as the run name."""
    from mlflow.tracking import MlflowClient

    job = f"bc-train-{uuid.uuid4().hex[:8]}"
    opt = make_opt_ml(tmp_path / "ml", channels, {**HPS, "mlflow": mlflow_server, "mlflow_experiment": job})
    proc = docker("run", "--name", names(), "--network", "host", "-e", f"TRAINING_JOB_NAME={job}",
                  "-v", f"{opt}:/opt/ml", image, "train", check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (opt / "model" / "model.safetensors").is_file() and (opt / "model" / "config.json").is_file()
    assert (opt / "output" / "data" / "test_metrics.json").is_file()
    assert (opt / "output" / "success").is_file()
    assert "epoch=1 train_loss=" in proc.stdout + proc.stderr
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name(job)
    assert exp is not None, proc.stderr[-3000:]
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == job
    assert run.data.params["epochs"] == "1" and run.data.tags["sagemaker.training_job"] == job
    test = json.loads((opt / "output" / "data" / "test_metrics.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(test["accuracy"])
    assert {f.path for f in client.list_artifacts(run.info.run_id, "model")} >= {"model/model.safetensors",
                                                                                 "model/config.json"}


def test_no_argument_also_trains(image, channels, tmp_path, names):
    """SageMaker SDK v3 local mode starts the image without a command."""
    opt = make_opt_ml(tmp_path / "ml", channels, HPS, channels=("train", "val"))
    proc = docker("run", "--name", names(), "-v", f"{opt}:/opt/ml", image, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (opt / "model" / "model.safetensors").is_file()


def test_broken_channel_fails_with_a_one_line_reason(image, channels, tmp_path, names):
    opt = make_opt_ml(tmp_path / "ml", None, HPS, channels=("train", "val"))  # empty channels
    proc = docker("run", "--name", names(), "-v", f"{opt}:/opt/ml", image, "train", check=False)
    assert proc.returncode != 0
    failure = (opt / "output" / "failure").read_text().strip()
    assert len(failure.splitlines()) == 1 and "holds no images" in failure, failure


def test_unknown_hyperparameter_fails_with_a_one_line_reason(image, channels, tmp_path, names):
    opt = make_opt_ml(tmp_path / "ml", channels, {**HPS, "epoch": 3})
    proc = docker("run", "--name", names(), "-v", f"{opt}:/opt/ml", image, "train", check=False)
    assert proc.returncode != 0
    failure = (opt / "output" / "failure").read_text().strip()
    assert failure.startswith("unknown hyperparameter 'epoch'") and len(failure.splitlines()) == 1


def test_two_hosts_train_one_model_with_gloo(image, channels, tmp_path, names):
    net = names("network")
    docker("network", "create", net)
    hosts = ("algo-1", "algo-2")
    procs, dirs = [], {}
    for h in hosts:
        # "ethwe" as SageMaker local mode writes it; the container only has eth0
        dirs[h] = make_opt_ml(tmp_path / h, channels, {**HPS, "epochs": 2}, hosts=hosts, current=h, nic="ethwe")
        cmd = ["docker", "run", "--name", names(), "--hostname", h, "--network", net, "--network-alias", h,
               "-v", f"{dirs[h]}:/opt/ml", image, "train"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n=====\n".join(x[-3000:] for x in logs)
    assert "rank 0/2" in logs[0] and "rank 1/2" in logs[1]
    assert "'ethwe', which does not exist here" in logs[0] and "using 'eth0'" in logs[0]
    assert (dirs["algo-1"] / "model" / "model.safetensors").is_file()
    assert not (dirs["algo-2"] / "model" / "model.safetensors").exists()  # rank 1 writes nothing
    epoch_lines = [[ln for ln in log.splitlines() if ln.startswith("epoch=")] for log in logs]
    assert len(epoch_lines[0]) == 2 and epoch_lines[1] == []  # rank 0 alone logs the epochs
    m = json.loads((dirs["algo-1"] / "model" / "metrics.json").read_text())
    assert m["world_size"] == 2
    # the two hosts validated and tested disjoint halves: together exactly each split, nothing twice
    assert [h["val_n"] for h in m["history"]] == [len(list((channels / "val").rglob("*.jpg")))] * 2
    assert m["test"]["n"] == len(list((channels / "test").rglob("*.jpg")))


def test_killed_job_resumes_from_its_checkpoint(image, abid_root, tmp_path, names):
    from bincounter.data.split import split_dataset

    ch = tmp_path / "ch"
    split_dataset(abid_root, ch, val=0.25, test=0.25)
    opt = make_opt_ml(tmp_path / "ml", ch, {**HPS, "epochs": 4, "batch_size": 4})
    name = names()
    docker("run", "-d", "--name", name, "-v", f"{opt}:/opt/ml", image, "train")
    ckpt = opt / "checkpoints" / "checkpoint.pt"

    def done_epochs():
        try:
            return torch.load(ckpt, weights_only=True)["epoch"]
        except Exception:  # noqa: BLE001 - not there yet, or being replaced
            return 0

    first = wait_for(done_epochs, 300, what="a first checkpoint")
    docker("kill", name)
    assert first < 4, "training finished before it could be killed; make it longer"
    time.sleep(0.5)
    k = done_epochs()
    docker("rm", name)
    proc = docker("run", "--name", names(), "-v", f"{opt}:/opt/ml", image, "train", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert f"resuming from /opt/ml/checkpoints/checkpoint.pt (epoch {k} done)" in out
    printed = [int(line.split()[0].split("=")[1]) for line in proc.stdout.splitlines() if line.startswith("epoch=")]
    assert printed == list(range(k + 1, 5))  # no epoch lost or repeated
    history = json.loads((opt / "model" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
