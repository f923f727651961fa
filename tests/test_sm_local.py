"""SageMaker local mode without Docker: what local.py and the local_test scripts do with a job that failed or was
stopped, the channels a training run used, and an endpoint that never comes up (the SDK's objects faked)."""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bincounter.errors import UserError
from bincounter.sm import local

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _sdk_env_restored(monkeypatch):
    """local.offline_sdk_env sets process-wide variables: each is put back after the test (a leaked
    SAGEMAKER_USER_CONFIG_OVERRIDE opted later CLI runs, e.g. test_sm_errors', out of telemetry)."""
    for k in ("SAGEMAKER_USER_CONFIG_OVERRIDE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED",
              "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(k, os.environ.get(k, "unset"))  # recorded as it was (a missing one: removed after)
        if os.environ[k] == "unset":
            monkeypatch.delenv(k)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_local_test_{name}", REPO / "local_test" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:  # as the SDK's create_tar_file: members at the top level
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def no_docker(monkeypatch):
    """Every `docker` call answers as a Docker with nothing running; the calls are recorded."""
    calls = []

    def fake(*args):
        calls.append(args)
        return subprocess.CompletedProcess(["docker", *args], 0, "", "")

    monkeypatch.setattr(local, "_docker", fake)
    return calls


def test_an_empty_or_partial_model_tarball_is_a_failed_job(tmp_path):
    with pytest.raises(local.LocalJobFailed, match="is empty"):
        local.check_model_tarball(_tar(tmp_path / "empty.tar.gz", {}))
    with pytest.raises(local.LocalJobFailed, match="has no model.safetensors"):
        local.check_model_tarball(_tar(tmp_path / "partial.tar.gz", {"config.json": b"{}"}))
    with pytest.raises(local.LocalJobFailed, match="unreadable"):
        (tmp_path / "torn.tar.gz").write_bytes(b"\x1f\x8b\x08")
        local.check_model_tarball(tmp_path / "torn.tar.gz")
    local.check_model_tarball(_tar(tmp_path / "ok.tar.gz", {"config.json": b"{}", "model.safetensors": b"w"}))
    local.check_model_tarball(_tar(tmp_path / "cpu.tar.gz", {"config.json": b"{}", "model.onnx": b"w"}))


class _FakeTrainer:
    """ModelTrainer in local mode: packs whatever the job left in /opt/ml/model, or fails / is interrupted."""

    outcome: object = None

    def __init__(self, local_container_root, **_):
        self.root = Path(local_container_root)

    def train(self, input_data_config):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        _tar(self.root / "compressed_artifacts" / "model.tar.gz", self.outcome)


@pytest.fixture
def fake_trainer(monkeypatch, no_docker):
    import sagemaker.train

    monkeypatch.setattr(sagemaker.train, "ModelTrainer", _FakeTrainer)
    monkeypatch.setattr(local, "check_image", lambda image: None)
    return _FakeTrainer


@pytest.mark.parametrize("outcome, needle", [
    ({}, "is empty"),  # docker compose stopped with 130 (Ctrl-C): the SDK packs an empty model dir
    ({"config.json": b"{}"}, "has no model.safetensors"),
    (RuntimeError("Failed to run: ['docker', 'compose']. Process exited with code: 1"), "exited with code: 1"),
])
def test_local_train_writes_no_model_tarball_for_a_failed_job(tmp_path, channels, fake_trainer, outcome, needle,
                                                               monkeypatch):
    monkeypatch.setattr(fake_trainer, "outcome", outcome)
    with pytest.raises(local.LocalJobFailed, match=needle):
        local.local_train("img", channels, tmp_path, {"epochs": 1})
    assert not (tmp_path / "model.tar.gz").exists() and not (tmp_path / local.TRAIN_RECORD).exists()
    assert not list(tmp_path.glob("bincounter-local-*")), "the job's directory is removed"


def test_local_train_writes_the_model_and_records_its_channels(tmp_path, channels, fake_trainer, monkeypatch):
    monkeypatch.setattr(fake_trainer, "outcome", {"config.json": b"{}", "model.safetensors": b"w"})
    out = local.local_train("img", channels, tmp_path, {"epochs": 1})
    assert out == tmp_path / "model.tar.gz" and tarfile.open(out).getnames() == ["config.json", "model.safetensors"]
    assert local.recorded_channels(tmp_path) == Path(channels).resolve()


@pytest.mark.parametrize("raised, code, needle", [
    (KeyboardInterrupt(), 130, "interrupted"),
    (local.LocalJobFailed("local training produced no model"), 1, "produced no model"),
    (UserError("Docker image x not found"), 2, "not found"),
])
def test_train_local_exit_codes(tmp_path, channels, monkeypatch, capsys, raised, code, needle):
    mod = _script("train_local")

    def boom(*a, **kw):
        raise raised

    monkeypatch.setattr(mod, "local_train", boom)
    monkeypatch.setattr(sys, "argv", ["train_local.py", "--workdir", str(tmp_path), "--channels", str(channels),
                                      "--no-pretrained"])
    assert mod.main() == code
    out, err = capsys.readouterr()
    assert "model:" not in out
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err


def test_serve_local_finds_the_channels_train_local_used(tmp_path, channels):
    mod = _script("serve_local")
    with pytest.raises(UserError, match=r"pass --test DIR"):
        mod.find_test_channel(tmp_path, None)
    local.record_channels(tmp_path, channels)
    assert mod.find_test_channel(tmp_path, None) == Path(channels).resolve() / "test"
    assert mod.find_test_channel(tmp_path, Path(channels) / "val") == Path(channels) / "val"


def test_serve_local_ctrl_c_is_one_line_and_130(tmp_path, channels, monkeypatch, capsys):
    mod = _script("serve_local")
    _tar(tmp_path / "model.tar.gz", {"config.json": b"{}", "model.safetensors": b"w"})
    local.record_channels(tmp_path, channels)

    class _Endpoint:
        def __init__(self, *a):
            pass

        def __enter__(self):
            raise KeyboardInterrupt

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(mod, "local_endpoint", _Endpoint)
    monkeypatch.setattr(sys, "argv", ["serve_local.py", "--workdir", str(tmp_path)])
    assert mod.main() == 130
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err


def test_an_endpoint_that_never_comes_up_shows_the_container_log(tmp_path, monkeypatch):
    import sagemaker.core.local.local_session as ls

    deleted = []

    class _Client:
        def create_model(self, **kw):
            pass

        def create_endpoint_config(self, **kw):
            pass

        def create_endpoint(self, **kw):
            raise RuntimeError("Giving up, endpoint didn't launch correctly")

        def delete_endpoint_config(self, **kw):
            deleted.append("config")

        def delete_model(self, **kw):
            deleted.append("model")

    class _Session:
        sagemaker_client = sagemaker_runtime_client = _Client()

    def docker(*args):
        if args[0] == "ps":  # the serving container, started from the SDK's hosting dir under our root
            rows = "".join(f"abc123 {d.resolve()}/tmpy\n" for d in tmp_path.glob("endpoint-*"))
            return subprocess.CompletedProcess(args, 0, "other9 /elsewhere\n" + rows, "")
        if args[0] == "logs":
            return subprocess.CompletedProcess(args, 0, "", "starting workers\nbincounter: error: /opt/ml/model: "
                                               "no config.json (not a bincounter model directory)\n")
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(ls, "LocalSession", _Session)
    monkeypatch.setattr(local, "_docker", docker)
    monkeypatch.setattr(local, "check_image", lambda image: None)
    model = _tar(tmp_path / "model.tar.gz", {})
    with pytest.raises(local.LocalJobFailed) as e, local.local_endpoint("img", model, tmp_path):
        pass
    assert "did not come up" in str(e.value) and "no config.json" in str(e.value)
    assert deleted == ["config", "model"]


def test_the_region_notice_is_silenced_only_when_a_region_is_set(monkeypatch, caplog, tmp_path):
    from bincounter.sm.sdk_compat import REGION_NOTICE, quiet_region_notice

    quiet_region_notice()
    sdk_log = logging.getLogger("sagemaker.core.utils.utils")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    # botocore reads AWS_DEFAULT_REGION (sdk_session and offline_sdk_env set it); this test had it only from the
    # local_train tests before it, which left it set
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    with caplog.at_level(logging.WARNING):
        sdk_log.warning(REGION_NOTICE)
        sdk_log.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
    caplog.clear()
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with caplog.at_level(logging.WARNING):
        sdk_log.warning(REGION_NOTICE)
    assert [r.getMessage() for r in caplog.records] == [REGION_NOTICE]


def test_record_is_json(tmp_path, channels):
    local.record_channels(tmp_path, channels)
    assert json.loads((tmp_path / local.TRAIN_RECORD).read_text()) == {"channels": str(Path(channels).resolve())}


@pytest.mark.parametrize("nic, level", [("ethwe", logging.INFO), ("eth7", logging.WARNING)])
def test_the_missing_local_mode_nic_is_info_not_a_warning(tmp_path, monkeypatch, caplog, nic, level):
    from bincounter import distributed
    from bincounter.sagemaker import train_entry
    from tests.test_contract import make_opt_ml

    contract = make_opt_ml(tmp_path, hosts=("algo-1",), nic=nic)
    monkeypatch.setattr(train_entry, "plan", lambda c, gpus: {"nnodes": 1, "nproc_per_node": 2, "world_size": 2,
                                                              "node_rank": 0, "master_addr": "algo-1"})
    monkeypatch.setattr(distributed, "list_interfaces", lambda: ["eth0", "lo"])
    monkeypatch.setattr(train_entry.subprocess, "call", lambda cmd, env: 0)
    with caplog.at_level(logging.INFO, logger="bincounter"):
        train_entry.run(contract)
    [record] = [r for r in caplog.records if "which does not exist here" in r.getMessage()]
    assert record.levelno == level and "using 'eth0'" in record.getMessage()
