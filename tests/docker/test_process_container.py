"""`docker run IMAGE process ...`: the pipeline's processing steps under SageMaker's Processing contract."""

from __future__ import annotations

import json
import tarfile

from ..helpers import docker


def test_prepare_and_evaluate_in_the_image(image, abid_root, trained_model, tmp_path):
    out, model, ev, msg = (tmp_path / d for d in ("out", "model", "evaluation", "output"))
    for d in (out, model, ev, msg):
        d.mkdir()
        d.chmod(0o777)
    proc = docker("run", "--rm", "-v", f"{abid_root}:/opt/ml/processing/input/raw:ro",
                  "-v", f"{out}:/opt/ml/processing/output", image, "process", "prepare", "--val", "0.25",
                  "--test", "0.25", check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sum(1 for _ in (out / "channels" / "test").rglob("*.jpg")) > 0 and (out / "eda" / "index.html").is_file()
    with tarfile.open(model / "model.tar.gz", "w:gz") as tar:
        for p in trained_model.iterdir():
            tar.add(p, arcname=p.name)
    proc = docker("run", "--rm", "-v", f"{model}:/opt/ml/processing/model:ro",
                  "-v", f"{out / 'channels' / 'test'}:/opt/ml/processing/test:ro",
                  "-v", f"{ev}:/opt/ml/processing/evaluation", image, "process", "evaluate", check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((ev / "evaluation.json").read_text())
    assert 0 <= doc["multiclass_classification_metrics"]["accuracy"]["value"] <= 1
    # a failure: its one line is the job's ExitMessage
    proc = docker("run", "--rm", "-v", f"{msg}:/opt/ml/output", image, "process", "evaluate", check=False)
    assert proc.returncode == 2
    assert "expected a model directory" in (msg / "message").read_text()
