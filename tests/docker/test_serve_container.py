"""`docker run IMAGE serve`: health gating, every content type, bad requests, parity, clean shutdown."""

from __future__ import annotations

import base64
import io
import json
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from ..conftest import free_port
from ..helpers import docker, http, wait_for

PING_WITHIN_S = 90  # documented in the README: /ping 200 within this from `docker run` on 2 CPU cores


def _start(image, model_dir, name, *extra) -> str:
    port = free_port()
    docker("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", "-v", f"{model_dir}:/opt/ml/model:ro",
           *extra, image, "serve")
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def served(image, trained_model, tmp_path_factory):
    """One serving container for the module's request tests."""
    import subprocess
    import uuid

    name = f"bct-serve-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    url = _start(image, trained_model, name)
    try:
        wait_for(lambda: http("GET", url + "/ping", timeout=2)[0] == 200 if _up(url) else False,
                 PING_WITHIN_S, what="/ping 200")
        yield url, time.monotonic() - t0, name
    finally:
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
        print(logs.stdout[-5000:], logs.stderr[-5000:])
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def _up(url) -> bool:
    try:
        http("GET", url + "/ping", timeout=2)
        return True
    except OSError:
        return False


def _images(channels, n=4):
    files = sorted((channels / "test").rglob("*.jpg"))[:n]
    return files


def test_ping_is_200_within_the_documented_time(served):
    url, startup_s, _ = served
    assert startup_s < PING_WITHIN_S
    status, _, body = http("GET", url + "/ping")
    assert status == 200 and json.loads(body)["status"] == "healthy"


def test_every_content_type(served, channels, trained_model):
    url, _, _ = served
    version = json.loads((trained_model / "config.json").read_text())["model_version"]
    jpg = _images(channels, 1)[0].read_bytes()
    png = io.BytesIO()
    Image.open(io.BytesIO(jpg)).save(png, format="PNG")
    for body, ctype in [(jpg, "image/jpeg"), (png.getvalue(), "image/png"), (jpg, "application/x-image")]:
        status, headers, out = http("POST", url + "/invocations", body, ctype)
        assert status == 200, (ctype, out)
        doc = json.loads(out)
        assert doc["count"] in (1, 2, 3, 4, 5) and doc["model_version"] == version
        assert abs(sum(doc["probabilities"].values()) - 1) < 1e-4
        assert headers["Content-Type"].startswith("application/json")
    batch = {"instances": [base64.b64encode(f.read_bytes()).decode() for f in _images(channels, 3)]}
    status, _, out = http("POST", url + "/invocations", json.dumps(batch).encode(), "application/json")
    assert status == 200 and len(json.loads(out)["predictions"]) == 3


def test_train_serve_parity(served, channels, trained_model):
    """The endpoint's probabilities equal the trainer's own evaluation of that model (same decode,
    resize, normalisation), to 1e-4."""
    import torch
    from torch.utils.data import DataLoader

    from bincounter.data.dataset import ChannelDataset
    from bincounter.distributed import DistInfo
    from bincounter.engine import evaluate
    from bincounter.model import load_artifact

    url, _, _ = served
    model, _, pre = load_artifact(trained_model)
    ds = ChannelDataset(channels / "test", pre)
    ev = evaluate(model, DataLoader(ds, batch_size=4), torch.device("cpu"), DistInfo(), return_probs=True,
                  show_progress=False)
    batch = {"instances": [base64.b64encode(p.read_bytes()).decode() for p, _ in ds.samples]}
    status, _, out = http("POST", url + "/invocations", json.dumps(batch).encode(), "application/json")
    assert status == 200, out
    got = np.array([[p["probabilities"][str(c)] for c in (1, 2, 3, 4, 5)] for p in json.loads(out)["predictions"]])
    assert np.abs(got - ev["probs"]).max() < 1e-4


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(served, channels):
    """16 clients at once, good and bad requests mixed: MMS hands the worker several requests at a time
    (dynamic batching; fewer worker calls than requests) and every client still gets exactly its own
    answer, equal to what it gets alone."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    url, _, name = served
    jpgs = [p.read_bytes() for p in _images(channels, 4)]
    alone = [json.loads(http("POST", url + "/invocations", b, "image/jpeg")[2]) for b in jpgs]
    requests = [(jpgs[i % 4], "image/jpeg") if i % 4 != 3 else (b"not an image", "image/jpeg") for i in range(48)]

    def calls() -> int:
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
        return (logs.stdout + logs.stderr).count("Backend response time")

    before = calls()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda r: http("POST", url + "/invocations", *r), requests))
    worker_calls = calls() - before
    for i, (status, _, body) in enumerate(answers):
        if i % 4 == 3:
            assert status == 400 and "cannot decode" in json.loads(body)["error"], body
        else:
            got, want = json.loads(body), alone[i % 4]
            assert status == 200 and got["count"] == want["count"], (got, want)
            assert max(abs(got["probabilities"][k] - want["probabilities"][k]) for k in want["probabilities"]) < 1e-4
    assert 0 < worker_calls < len(requests), worker_calls


def _big_png() -> bytes:
    img = Image.new("RGB", (10_000, 10_000), (120, 90, 60))  # 100 megapixels, compresses to ~300 KB
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


@pytest.mark.parametrize("case", ["not-an-image", "truncated-jpeg", "empty", "wrong-type", "100mp",
                                  "bad-json", "bad-base64", "too-large"])
def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(served, channels, case):
    url, _, _ = served
    jpg = _images(channels, 1)[0].read_bytes()
    body, ctype = {
        "not-an-image": (b"hello world", "image/jpeg"),
        "truncated-jpeg": (jpg[: len(jpg) // 3], "image/jpeg"),
        "empty": (b"", "image/jpeg"),
        "wrong-type": (jpg, "text/csv"),
        "100mp": (_big_png() if case == "100mp" else b"", "image/png"),
        "bad-json": (b'{"instances": [', "application/json"),
        "bad-base64": (b'{"instances": ["%%%"]}', "application/json"),
        "too-large": (b"\0" * (7 * 2**20), "image/jpeg"),
    }[case]
    status, headers, out = http("POST", url + "/invocations", body, ctype)
    assert 400 <= status < 500, (status, out)
    doc = json.loads(out)
    assert doc["status"] == status and doc["error"]
    status, _, _ = http("POST", url + "/invocations", jpg, "image/jpeg")
    assert status == 200


def test_corrupt_weights_keep_ping_unhealthy(image, trained_model, tmp_path, names):
    bad = tmp_path / "bad"
    shutil.copytree(trained_model, bad)
    (bad / "model.safetensors").write_bytes(b"\0" * 1000)
    url = _start(image, bad, names())
    wait_for(lambda: _up(url), 60, what="the front to answer")
    for _ in range(10):
        status, _, body = http("GET", url + "/ping")
        assert status == 503 and "model" in json.loads(body)["reason"]
        time.sleep(1)
    status, _, body = http("POST", url + "/invocations", b"x", "image/jpeg")
    assert status == 503 and json.loads(body)["status"] == 503


def test_model_fn_failure_keeps_ping_unhealthy(image, trained_model, tmp_path, names):
    """Weights that pass the header check but do not fit the architecture: MMS's worker fails in model_fn,
    MMS alone would answer /ping 200; ours stays 503."""
    bad = tmp_path / "wrongarch"
    shutil.copytree(trained_model, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["arch"] = "efficientnet_b1"
    (bad / "config.json").write_text(json.dumps(cfg))
    url = _start(image, bad, names())
    wait_for(lambda: _up(url), 60, what="the front to answer")
    time.sleep(15)  # MMS has had time to start, fail and retry the worker
    for _ in range(5):
        status, _, body = http("GET", url + "/ping")
        assert status == 503, body
        time.sleep(1)
    assert "does not load" in json.loads(body)["reason"] and "cannot load weights" in json.loads(body)["reason"]


def test_stop_is_fast_and_leaves_no_process(image, trained_model, names):
    """The server started by `docker exec` (not as PID 1): after SIGTERM nothing of MMS is left."""
    name = names()
    docker("run", "-d", "--init", "--name", name, "-v", f"{trained_model}:/opt/ml/model:ro",
           "--entrypoint", "sleep", image, "600")
    docker("exec", "-d", name, "/opt/bincounter/container/entrypoint.sh", "serve")
    ps = ["exec", name, "python", "-c",
          "import psutil\n"
          "for p in psutil.process_iter(['cmdline', 'status']):\n"
          "    print(p.info['status'], ' '.join(p.info['cmdline'] or []))"]
    probe = ["exec", name, "python", "-c",
             "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8080/ping').status)"]
    wait_for(lambda: docker(*probe, check=False).stdout.strip() == "200", PING_WITHIN_S, what="/ping 200")
    procs = docker(*ps).stdout
    assert "com.amazonaws.ml.mms.ModelServer" in procs and "model_service_worker" in procs
    docker("exec", name, "python", "-c", "import os, psutil, signal\n"
           "for p in psutil.process_iter():\n"
           "    if p.pid != os.getpid() and 'bincounter.serving.server' in ' '.join(p.cmdline()):\n"
           "        p.send_signal(signal.SIGTERM)")
    t0 = time.monotonic()
    wait_for(lambda: "bincounter.serving.server" not in docker(*ps).stdout, 10, what="server exit")
    assert time.monotonic() - t0 < 10
    left = docker(*ps).stdout
    assert "mms" not in left.lower() and "java" not in left, left


def test_docker_stop_takes_under_10_s(image, trained_model, names):
    name = names()
    url = _start(image, trained_model, name)
    wait_for(lambda: _up(url) and http("GET", url + "/ping")[0] == 200, PING_WITHIN_S, what="/ping 200")
    t0 = time.monotonic()
    docker("stop", "-t", "10", name)
    took = time.monotonic() - t0
    code = docker("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip()
    assert took < 10 and code == "0", (took, code)


def test_serve_benchmark_quick(image, tmp_path):
    """bench/serve.py runs against a real container and writes its JSON (smoke; no timing asserted)."""
    import subprocess
    import sys

    from ..conftest import REPO

    out = tmp_path / "serve.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "serve.py"), "--quick", "--image", image,
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert [(c["batch_size"], [r["concurrency"] for r in c["rows"]]) for c in doc["containers"]] == \
        [(1, [1, 4, 16]), (4, [1, 4, 16])]
    assert all(r["errors"] == 0 for c in doc["containers"] for r in c["rows"])
    assert all(c["cold_start_s"] > 0 for c in doc["containers"]) and set(doc["in_process"]) == {"1", "4"}
