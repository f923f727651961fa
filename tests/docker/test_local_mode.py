"""SageMaker SDK v3 local mode for real: local_test/ scripts, 2 local instances, a local endpoint."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ..conftest import REPO
from ..helpers import docker


def _run(script, *args, timeout=900):
    return subprocess.run([sys.executable, str(REPO / "local_test" / script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _leftovers(workdir):
    rows = docker("ps", "-a", "--format", '{{.ID}} {{.Label "com.docker.compose.project.working_dir"}}').stdout
    return [r for r in rows.splitlines() if str(workdir) in r]


def test_local_train_two_instances_then_local_endpoint(image, channels, tmp_path):
    pytest.importorskip("sagemaker.train", reason="the SageMaker SDK is installed by `make venv`")
    net_before = docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    work = tmp_path / "work"
    proc = _run("train_local.py", "--workdir", work, "--image", image, "--channels", channels, "--epochs", "1",
                "--image-size", "64")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert (work / "model.tar.gz").is_file()
    # both ranks joined one process group, over the real interface (local mode names a missing 'ethwe')
    assert "rank 0/2" in out and "rank 1/2" in out and "interface=eth0" in out
    # ImageNet weights reached the job through its `pretrained` channel, as on a network-isolated job
    assert "loaded 245/245 backbone tensors" in out
    epoch_lines = [ln for ln in out.splitlines() if "epoch=1 train_loss=" in ln]
    assert len(epoch_lines) == 1 and "algo-1" in epoch_lines[0]  # rank 1 (algo-2) logs and writes nothing
    import tarfile

    with tarfile.open(work / "model.tar.gz") as t:
        names = sorted(n.lstrip("./") for n in t.getnames() if n not in (".", "./"))
    assert "model.safetensors" in names and "config.json" in names

    proc = _run("serve_local.py", "--workdir", work, "--image", image, "--test", channels / "test")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "local endpoint evaluation: accuracy=" in out and "confusion matrix" in out
    assert (work / "local_endpoint_confusion_matrix.png").is_file()
    # nothing left behind: containers, the network, temp dirs
    assert _leftovers(work) == []
    if "sagemaker-local" not in net_before:
        assert "sagemaker-local" not in docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert sorted(p.name for p in work.iterdir() if p.is_dir()) == ["weights"]  # the ImageNet weights cache only
    assert not (work / "model.safetensors").exists()


def test_missing_model_is_one_line(tmp_path):
    pytest.importorskip("sagemaker.train")
    proc = _run("serve_local.py", "--workdir", tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("serve_local: error:")
    assert "Traceback" not in proc.stderr
