"""Shared fixtures: small synthetic ABID data, its channels, and one tiny trained model (session-scoped,
so the fast tier trains once)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from bincounter.data.split import split_dataset
from bincounter.data.synth import synth_dataset

from .helpers import wait_for

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach for the hub
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "bincounter"


def pytest_collection_modifyitems(items):
    """Tests marked `acceptance` (the README's long commands at their defaults) run only with
    BINCOUNTER_ACCEPTANCE=1 (`make acceptance`): they would add minutes to every CI run."""
    if os.environ.get("BINCOUNTER_ACCEPTANCE") == "1":
        return
    for item in items:
        if item.get_closest_marker("acceptance"):
            item.add_marker(pytest.mark.skip(reason="acceptance: the README's command at its defaults, minutes "
                                                    "long; `make acceptance` runs it"))


def run_cli(*args, env=None, timeout=300, cwd=None) -> subprocess.CompletedProcess:
    """Run the real console script, capture output."""
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("bincounter: error:")]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n in errors[0], errors[0]


@pytest.fixture(scope="session")
def abid_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("abid")
    synth_dataset(root, per_class=8, seed=3, size=128)
    return root


@pytest.fixture(scope="session")
def channels(abid_root, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("channels")
    split_dataset(abid_root, dst, val=0.25, test=0.25, seed=0)
    return dst


@pytest.fixture()
def channels_copy(channels, tmp_path) -> Path:
    """A private copy a test may damage."""
    dst = tmp_path / "channels"
    shutil.copytree(channels, dst)
    return dst


@pytest.fixture(scope="session")
def trained_model(channels, tmp_path_factory) -> Path:
    from bincounter.train import TrainConfig, train

    model_dir = tmp_path_factory.mktemp("model")
    train(TrainConfig(train_dir=str(channels / "train"), val_dir=str(channels / "val"),
                      test_dir=str(channels / "test"), model_dir=str(model_dir), epochs=1, image_size=64,
                      pretrained=False, workers=0, batch_size=16, show_progress=False))
    return model_dir


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_answers_like_sagemaker():
    """moto answers DescribeModel with `VpcConfig: {}` and DescribeEndpoint with `DataCaptureConfig: {}` or the
    request's config; SageMaker leaves the empty ones out and returns a DataCaptureConfigSummary. The SDK v3
    validates responses with pydantic and rejects moto's, so the fake server is corrected here (only the
    response shapes; nothing in bincounter knows about moto)."""
    from moto.sagemaker import models

    if getattr(models, "_bincounter_shapes", False):
        return
    model_response, endpoint_response = models.Model.response_object.fget, models.FakeEndpoint.response_object.fget

    def model_object(self):
        r = model_response(self)
        if not r.get("VpcConfig"):
            r.pop("VpcConfig", None)
        return r

    def endpoint_object(self):
        r = endpoint_response(self)
        if c := r.pop("DataCaptureConfig", None):
            r["DataCaptureConfig"] = {"EnableCapture": c.get("EnableCapture", True), "CaptureStatus": "Started",
                                      "CurrentSamplingPercentage": c.get("InitialSamplingPercentage", 100),
                                      "DestinationS3Uri": c["DestinationS3Uri"]}
        return r

    models.Model.response_object = property(model_object)
    models.FakeEndpoint.response_object = property(endpoint_object)
    models._bincounter_shapes = True


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real HTTP AWS API (S3, STS, ECR, SageMaker...) from moto in server mode, on loopback."""
    from moto.server import ThreadedMotoServer

    _moto_answers_like_sagemaker()
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def aws_env(monkeypatch, tmp_path):
    """Fake credentials for moto, no real config files, no instance-metadata lookups."""
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_EC2_METADATA_DISABLED": "true"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    return env


def _mlflow_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (sqlite backend, artifacts served by the server) on a free loopback port, one per
    session (test_tracking and the Docker tier's in-image run share it); waits on /health (and stops waiting if it
    exits)."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "wb")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                             f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or _mlflow_healthy(url), timeout=180, interval=0.2,
                 what="mlflow /health")
        assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
