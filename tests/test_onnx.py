"""model.onnx: written by training, checked against the weights, served by ONNX Runtime with the same answers
as PyTorch, and the serving code path runs without PyTorch (what the CPU image has)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bincounter.artifact import ONNX, read_config, sha256_file
from bincounter.errors import UserError
from bincounter.evaluate import Predictor
from bincounter.serving.onnx_runtime import OnnxPredictor, check_onnx, runtime_name
from bincounter.serving.protocol import answer_batch
from bincounter.serving.server import check_artifact

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]


def images(channels: Path, n: int = 20) -> list[bytes]:
    files = sorted(p for split in ("test", "val", "train") for p in (channels / split).rglob("*.jpg"))[:n]
    assert len(files) == n
    return [p.read_bytes() for p in files]


@pytest.fixture()
def model_copy(trained_model, tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(trained_model, dst)
    return dst


def test_training_writes_onnx_of_the_best_weights(trained_model):
    config = read_config(trained_model)
    meta = config["onnx"]
    assert (trained_model / ONNX).is_file()
    assert meta["sha256"] == sha256_file(trained_model / ONNX)
    assert meta["weights_sha256"] == config["weights_sha256"] == sha256_file(trained_model / "model.safetensors")
    assert meta["opset"] == 17 and meta["input"] == "image" and meta["output"] == "probabilities"


def test_onnx_runtime_agrees_with_pytorch_on_real_images(trained_model, channels):
    torch_pred, onnx_pred = Predictor(trained_model, device="cpu"), OnnxPredictor(trained_model)
    batch = np.stack([onnx_pred.preprocess(b) for b in images(channels)])
    p_torch, p_onnx = torch_pred.forward(batch), onnx_pred.forward(batch)
    assert p_onnx.shape == p_torch.shape == (20, 5)
    assert np.abs(p_onnx - p_torch).max() < 1e-4
    a, b = torch_pred.format(p_torch), onnx_pred.format(p_onnx)
    assert [x["count"] for x in a] == [x["count"] for x in b]
    assert all(abs(x["expected_count"] - y["expected_count"]) < 1e-3 for x, y in zip(a, b, strict=True))


def test_answer_batch_is_one_path_for_both_runtimes(trained_model, channels):
    """The same requests (one image, a JSON batch, a bad one) answered through protocol.answer_batch."""
    import base64

    imgs = images(channels, 3)
    requests = [(imgs[0], "image/jpeg"),
                (json.dumps({"instances": [base64.b64encode(b).decode() for b in imgs[1:]]}), "application/json"),
                (b"not an image", "image/jpeg")]
    answers = {}
    for pred in (Predictor(trained_model, device="cpu"), OnnxPredictor(trained_model)):
        answers[pred.runtime] = [(status, json.loads(body)) for status, body in answer_batch(pred, requests)]
    t, o = answers["torch"], answers["onnx"]
    assert [s for s, _ in t] == [s for s, _ in o] == [200, 200, 400]
    assert t[2] == o[2]
    assert t[0][1]["count"] == o[0][1]["count"]
    for x, y in zip(t[1][1]["predictions"], o[1][1]["predictions"], strict=True):
        assert x["count"] == y["count"]
        assert max(abs(x["probabilities"][k] - y["probabilities"][k]) for k in x["probabilities"]) < 1e-4


def test_export_cli_adds_onnx_to_an_older_model(model_copy, capsys):
    from bincounter.cli import main

    (model_copy / ONNX).unlink()
    config = read_config(model_copy)
    del config["onnx"]
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="no model.onnx.*bincounter export"):
        check_onnx(model_copy)
    assert main(["export", "--model-dir", str(model_copy), "--check"]) == 0
    assert "opset 17" in capsys.readouterr().out
    check_onnx(model_copy)
    assert read_config(model_copy)["onnx"]["sha256"] == sha256_file(model_copy / ONNX)


def test_new_weights_remove_the_stale_onnx(model_copy):
    from bincounter.model import load_artifact, save_artifact

    model, config, pre = load_artifact(model_copy)
    save_artifact(model_copy, model, config["arch"], config["backend"], pre)
    assert not (model_copy / ONNX).exists()


def test_recorded_digests_are_of_the_bytes_written(trained_model, tmp_path):
    """config.json's weights_sha256 and onnx.sha256 are the sha256 of the files on disk, and onnx.weights_sha256
    is of the weights model.onnx was exported from: another model exported beside the weights is told apart (the
    CPU image refuses it), not stamped with the hash of the file that happens to be there."""
    import hashlib

    from bincounter.artifact import WEIGHTS, write_hashed
    from bincounter.model import export_onnx, load_artifact, save_artifact

    model, config, pre = load_artifact(trained_model)
    m = tmp_path / "m"
    saved = save_artifact(m, model, config["arch"], config["backend"], pre)
    # the same weights give the same bytes: the model_version of a model saved again does not change
    assert saved["weights_sha256"] == sha256_file(m / WEIGHTS) == config["weights_sha256"]
    exported = export_onnx(m, model)
    assert exported["onnx"]["sha256"] == sha256_file(m / ONNX) and read_config(m) == exported
    assert exported["onnx"]["weights_sha256"] == saved["weights_sha256"]
    check_onnx(m)
    for p in model.parameters():
        p.data.add_(0.01)
    other = export_onnx(m, model)
    assert other["onnx"]["sha256"] == sha256_file(m / ONNX) != exported["onnx"]["sha256"]
    assert other["onnx"]["weights_sha256"] != saved["weights_sha256"]
    with pytest.raises(UserError, match="other weights"):
        check_onnx(m)
    assert write_hashed(tmp_path / "x.bin", b"abc") == hashlib.sha256(b"abc").hexdigest() == \
        sha256_file(tmp_path / "x.bin")
    assert not [p.name for p in tmp_path.rglob("*.tmp")]


def test_onnx_that_does_not_match_the_weights_is_refused(model_copy):
    config = read_config(model_copy)
    config["onnx"]["weights_sha256"] = "0" * 64
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="other weights"):
        OnnxPredictor(model_copy)
    assert "other weights" in check_artifact(model_copy, "onnx")
    assert check_artifact(model_copy, "torch") is None  # the PyTorch runtime does not need model.onnx


def test_truncated_onnx_is_refused_in_one_line(model_copy):
    data = (model_copy / ONNX).read_bytes()
    (model_copy / ONNX).write_bytes(data[: len(data) // 2])
    problem = check_artifact(model_copy, "onnx")
    assert "sha256" in problem and "\n" not in problem


def test_runtime_choice(monkeypatch):
    monkeypatch.setenv("BINCOUNTER_RUNTIME", "onnx")
    assert runtime_name() == "onnx"
    monkeypatch.setenv("BINCOUNTER_RUNTIME", "auto")
    assert runtime_name() == "torch"  # installed here
    monkeypatch.setenv("BINCOUNTER_RUNTIME", "tensorrt")
    with pytest.raises(UserError, match="expected torch, onnx or auto"):
        runtime_name()


def test_cpu_serving_path_runs_without_torch(trained_model, channels, tmp_path):
    """What the CPU image does, in a process where `import torch` fails: the server's model check, the MMS
    handler's model_fn and one batch through the handler's transform code (answer_batch)."""
    img = tmp_path / "x.jpg"
    img.write_bytes(images(channels, 1)[0])
    code = f"""
import sys, types
sys.modules["torch"] = None  # import torch -> ImportError
try:
    import sagemaker_inference.transformer  # in the images; not in the dev environment
except ImportError:
    for name, attrs in {{"sagemaker_inference": {{}}, "sagemaker_inference.utils": {{}},
                        "sagemaker_inference.default_inference_handler": {{"DefaultInferenceHandler": object}},
                        "sagemaker_inference.transformer": {{"Transformer": object}}}}.items():
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__dict__.update(attrs)
    sys.modules["sagemaker_inference"].utils = sys.modules["sagemaker_inference.utils"]
from bincounter.serving.server import check_artifact
from bincounter.serving.inference import InferenceHandler
from bincounter.serving.protocol import answer_batch
from pathlib import Path
assert check_artifact(Path({str(trained_model)!r}), "onnx") is None
model = InferenceHandler().default_model_fn({str(trained_model)!r})
print(answer_batch(model, [(Path({str(img)!r}).read_bytes(), "image/jpeg")])[0][1].decode())
"""
    env = {**os.environ, "BINCOUNTER_RUNTIME": "onnx", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer["count"] in (1, 2, 3, 4, 5) and set(answer["probabilities"]) == {"1", "2", "3", "4", "5"}
    assert answer == Predictor(trained_model, device="cpu").predict([img.read_bytes()])[0] | {
        "probabilities": answer["probabilities"], "expected_count": answer["expected_count"]}


def test_export_leaves_the_callers_model_alone(trained_model, tmp_path):
    """The trainer exports its own model and then evaluates it on its device: the export must not move it to
    the CPU, change its dtype or its train/eval mode (nn.Module.to works in place)."""
    import torch

    from bincounter.model import export_onnx, load_artifact

    model, _, _ = load_artifact(trained_model)
    shutil.copytree(trained_model, tmp_path / "m")
    model.double().train()
    export_onnx(tmp_path / "m", model)
    assert model.training and next(model.parameters()).dtype == torch.float64


def test_other_weights_copied_in_are_caught(model_copy, trained_model, tmp_path):
    """config.json says nothing about it: model.safetensors replaced by another model's file is found by hashing
    the file itself."""
    from bincounter.model import load_artifact, save_artifact

    model, config, pre = load_artifact(trained_model)
    for p in model.parameters():
        p.data.add_(0.01)
    save_artifact(tmp_path / "other", model, config["arch"], config["backend"], pre)
    shutil.copy(tmp_path / "other" / "model.safetensors", model_copy / "model.safetensors")
    with pytest.raises(UserError, match="other weights"):
        check_onnx(model_copy)
    # issue 21, item 8: the PyTorch image served a swapped weights file under the old model_version
    problem = check_artifact(model_copy, "torch")
    assert problem and "weights_sha256" in problem, problem


def test_truncated_weights_are_refused_before_mms_starts(model_copy):
    data = (model_copy / "model.safetensors").read_bytes()
    (model_copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "partial copy" in check_artifact(model_copy, "torch")


def test_export_refuses_an_unsupported_opset_in_one_line(model_copy):
    from .conftest import assert_one_line_error, run_cli

    assert_one_line_error(run_cli("export", "--model-dir", model_copy, "--opset", "99"), "supported 13..20")
