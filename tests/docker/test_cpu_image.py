"""The CPU serving image (`--target serve-cpu`): what it holds, that it answers like the default image, and
that a model it cannot serve is said in one line. The request-level tests of test_serve_container.py run
against it too (its `served` fixture takes both images)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess

import numpy as np

from ..helpers import docker, http, wait_for
from .test_serve_container import PING_WITHIN_S, _start, _up

MAX_SIZE = 1.5e9  # issue 14: <= 1.5 GB (the default image is ~8 GB)


def _sh(image, script: str):
    return docker("run", "--rm", "--entrypoint", "sh", image, "-c", script, check=False)


def test_no_torch_no_cuda_and_small(cpu_image):
    out = _sh(cpu_image, "python -c 'import importlib.util as u; print(u.find_spec(\"torch\"))'; "
                         "find / -xdev \\( -name 'libcudart*' -o -name 'libcublas*' -o -name 'libnccl*' \\) | head -3; "
                         "command -v gcc; ls /tmp/certs /tmp/ca.pem 2>/dev/null; echo PIP_CERT=$PIP_CERT; "
                         "python -c 'import onnxruntime, sagemaker_inference, bincounter.serving.handler_service; "
                         "print(onnxruntime.__version__)'; java -version 2>&1 | head -1").stdout
    lines = out.strip().splitlines()
    assert lines[0] == "None" and lines[1] == "PIP_CERT=", out
    assert lines[2] == "1.32.0" and 'version "17' in lines[3], out
    size = int(docker("image", "inspect", cpu_image, "--format", "{{.Size}}").stdout)
    assert size <= MAX_SIZE, f"{size / 1e9:.2f} GB"


def test_train_and_the_cli_are_refused_in_one_line(cpu_image):
    proc = docker("run", "--rm", cpu_image, "train", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "train with the GPU image" in proc.stderr
    proc = docker("run", "--rm", cpu_image, "bincounter", "export", "--model-dir", "/opt/ml/model", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "runs only `serve`" in proc.stderr, proc.stderr


def test_both_images_give_the_same_answers(image, cpu_image, trained_model, channels, names):
    """Issue 14, parity: the same 20 images through `bincounter:local serve` (PyTorch) and `bincounter:cpu
    serve` (ONNX Runtime): the same counts, probabilities within 1e-4."""
    files = sorted(p for split in ("test", "val") for p in (channels / split).rglob("*.jpg"))[:20]
    assert len(files) == 20
    batch = json.dumps({"instances": [base64.b64encode(f.read_bytes()).decode() for f in files]}).encode()
    answers = {}
    for img in (image, cpu_image):
        url = _start(img, trained_model, names())
        wait_for(lambda u=url: _up(u) and http("GET", u + "/ping", timeout=2)[0] == 200, PING_WITHIN_S,
                 what=f"/ping 200 from {img}")
        status, _, out = http("POST", url + "/invocations", batch, "application/json")
        assert status == 200, out
        singles = [json.loads(http("POST", url + "/invocations", f.read_bytes(), "image/jpeg")[2]) for f in files[:3]]
        answers[img] = json.loads(out)["predictions"] + singles
    a, b = answers[image], answers[cpu_image]
    assert [x["count"] for x in a] == [x["count"] for x in b]
    pa = np.array([[x["probabilities"][k] for k in "12345"] for x in a])
    pb = np.array([[x["probabilities"][k] for k in "12345"] for x in b])
    assert np.abs(pa - pb).max() < 1e-4
    assert {x["model_version"] for x in a} == {x["model_version"] for x in b}


def test_a_model_without_onnx_is_named_in_one_line(cpu_image, trained_model, tmp_path, names):
    old = tmp_path / "old"
    shutil.copytree(trained_model, old)
    (old / "model.onnx").unlink()
    name = names()
    url = _start(cpu_image, old, name)
    wait_for(lambda: _up(url), 60, what="the front to answer")
    status, _, body = http("GET", url + "/ping")
    reason = json.loads(body)["reason"]
    assert status == 503 and "no model.onnx" in reason and "bincounter export" in reason, body
    logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
    lines = [ln for ln in (logs.stdout + logs.stderr).splitlines() if "no model.onnx" in ln]
    assert lines and "bincounter export" in lines[0] and "Traceback" not in logs.stdout + logs.stderr


def test_the_cpu_image_serves_the_int8_model_when_it_is_servable(cpu_image, trained_model, channels, tmp_path,
                                                                   names):
    """Issue 25: with a servable model.int8.onnx the CPU image answers from it (model_version '<v>-int8'), and
    BINCOUNTER_ONNX_PRECISION=fp32 puts the fp32 model back; the same hash gate: a tampered INT8 file is refused
    at start in one line, not swapped for fp32."""
    from bincounter.quantize import quantize_int8

    model = tmp_path / "int8"
    shutil.copytree(trained_model, model)
    quantize_int8(model, channels / "val", force_servable=True)  # no test channel: servable only when forced
    version = json.loads((model / "config.json").read_text())["model_version"]
    image = sorted((channels / "test").rglob("*.jpg"))[0].read_bytes()
    for extra, want in (((), f"{version}-int8"), (("-e", "BINCOUNTER_ONNX_PRECISION=fp32"), version)):
        url = _start(cpu_image, model, names(), *extra)
        wait_for(lambda u=url: _up(u) and http("GET", u + "/ping", timeout=2)[0] == 200, PING_WITHIN_S,
                 what="/ping 200")
        status, _, out = http("POST", url + "/invocations", image, "image/jpeg")
        assert status == 200 and json.loads(out)["model_version"] == want, out
    with open(model / "model.int8.onnx", "r+b") as f:  # one byte changed: not the file config.json hashed
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    name = names()
    url = _start(cpu_image, model, name)
    wait_for(lambda: _up(url), 60, what="the front to answer")
    wait_for(lambda: http("GET", url + "/ping", timeout=2)[0] == 503, 30, what="/ping 503")
    reason = json.loads(http("GET", url + "/ping")[2])["reason"]
    assert "model.int8.onnx" in reason and "sha256" in reason, reason
