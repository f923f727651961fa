"""`bincounter process prepare|evaluate` (what `docker run IMAGE process ...` runs in the pipeline)."""

from __future__ import annotations

import json
import tarfile

import pytest

from .conftest import assert_one_line_error, run_cli


def test_prepare_writes_channels_and_the_eda_report(abid_root, tmp_path):
    proc = run_cli("process", "prepare", "--raw", abid_root, "--out", tmp_path / "out", "--val", "0.25",
                   "--test", "0.25")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    n = {s: len(list((tmp_path / "out" / "channels" / s).rglob("*.jpg"))) for s in ("train", "val", "test")}
    assert sum(n.values()) == 40 and all(n.values()), n
    assert result["channels"]["test"] == str(tmp_path / "out" / "channels" / "test")
    assert (tmp_path / "out" / "eda" / "index.html").is_file()
    assert (tmp_path / "out" / "channels" / "manifest.csv").is_file()


def test_evaluate_a_training_jobs_tarball_in_the_model_metrics_layout(trained_model, channels, tmp_path):
    (tmp_path / "model").mkdir()
    with tarfile.open(tmp_path / "model" / "model.tar.gz", "w:gz") as tar:  # what a training job uploads
        for p in trained_model.iterdir():
            tar.add(p, arcname=p.name)
    proc = run_cli("process", "evaluate", "--model", tmp_path / "model", "--data", channels / "test",
                   "--out", tmp_path / "ev")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    own = json.loads((trained_model / "test_metrics.json").read_text())  # the trainer's test evaluation
    acc = doc["multiclass_classification_metrics"]["accuracy"]
    assert acc == {"value": own["accuracy"], "standard_deviation": "NaN"}
    assert doc["regression_metrics"]["rmse"]["value"] == own["rmse"]
    cm = doc["multiclass_classification_metrics"]["confusion_matrix"]
    assert [[cm[t][p] for p in "12345"] for t in "12345"] == own["confusion_matrix"]
    assert (tmp_path / "ev" / "eval_confusion_matrix.png").is_file()


def test_evaluate_without_a_model_is_one_line(channels, tmp_path):
    assert_one_line_error(run_cli("process", "evaluate", "--model", tmp_path, "--data", channels / "test",
                                  "--out", tmp_path / "ev"), "expected a model directory")


def test_a_count_without_test_images_still_gives_strict_json():
    """No bins of count 5 in the test split: recall 5 is None; evaluation.json must stay strict JSON (no NaN)."""
    from bincounter.sagemaker.processing import _finite, model_metrics

    summary = {"accuracy": 0.5, "rmse": 1.0, "n": 4, "per_class_recall": {"1": 1.0, "2": 0.0, "3": 0.5, "4": 1.0,
                                                                         "5": None},
               "confusion_matrix": [[1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0],
                                    [0, 0, 0, 0, 0]], "loss": float("nan")}
    text = json.dumps(_finite(model_metrics(summary)), allow_nan=False)
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    mc = doc["multiclass_classification_metrics"]
    assert "recall_count_5" not in mc and mc["recall_count_3"]["value"] == 0.5
    assert doc["bincounter"]["loss"] is None
