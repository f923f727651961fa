"""The SageMaker training contract (hyperparameter strings, channels, hosts) and the /invocations
protocol: pure functions, no container needed. The Docker tier runs the same code in the real image."""

from __future__ import annotations

import base64
import json

import pytest

from bincounter.errors import UserError
from bincounter.sagemaker.contract import TrainingContract, decode_value, train_argv
from bincounter.sagemaker.train_entry import _parser, plan, torchrun_command
from bincounter.serving.protocol import RequestError, format_response, parse_request


def make_opt_ml(tmp, hps=None, hosts=("algo-1",), current="algo-1", channels=("train", "val"), nic="eth0"):  # noqa: E501
    cfg = tmp / "input" / "config"
    cfg.mkdir(parents=True)
    (cfg / "hyperparameters.json").write_text(json.dumps(hps or {}))
    (cfg / "resourceconfig.json").write_text(json.dumps(
        {"current_host": current, "hosts": list(hosts), "network_interface_name": nic}))
    for c in channels:
        (tmp / "input" / "data" / c).mkdir(parents=True)
    return TrainingContract.from_env(tmp)


def test_hyperparameter_strings_become_trainer_flags(tmp_path):
    c = make_opt_ml(tmp_path, {"epochs": "3", "lr": "0.0005", "batch_size": "16", "pretrained": "false",
                               "arch": '"efficientnet_b2"', "amp": "True", "sagemaker_program": "x",
                               "_tuning_objective_metric": "val_acc"})
    argv, ignored = train_argv(c, _parser())
    assert argv[:4] == ["--train", str(tmp_path / "input/data/train"), "--val", str(tmp_path / "input/data/val")]
    args = _parser().parse_args(argv)
    assert (args.epochs, args.lr, args.batch_size, args.pretrained, args.arch, args.amp) == \
           (3, 0.0005, 16, False, "efficientnet_b2", True)
    assert args.model_dir == str(tmp_path / "model") and args.checkpoint_dir == str(tmp_path / "checkpoints")
    assert args.output_dir == str(tmp_path / "output" / "data")
    assert ignored == ["_tuning_objective_metric", "sagemaker_program"]


@pytest.mark.parametrize("hps, needle", [
    ({"epoch": "3"}, "unknown hyperparameter 'epoch'"),
    ({"pretrained": "maybe"}, "must be true or false"),
    ({"model_dir": "/tmp"}, "set by the container"),
])
def test_bad_hyperparameters_are_one_line(tmp_path, hps, needle):
    c = make_opt_ml(tmp_path, hps)
    with pytest.raises(UserError, match=needle):
        train_argv(c, _parser())


def test_bad_hyperparameter_value_is_caught_before_training(tmp_path):
    c = make_opt_ml(tmp_path, {"epochs": "three"})
    argv, _ = train_argv(c, _parser())
    with pytest.raises(UserError, match="bad hyperparameter: argument --epochs"):
        _parser().parse_args(argv)


def test_missing_val_channel_and_pretrained_channel(tmp_path):
    with pytest.raises(UserError, match="missing the 'val' channel"):
        train_argv(make_opt_ml(tmp_path / "a", channels=("train",)), _parser())
    c = make_opt_ml(tmp_path / "b", channels=("train", "validation", "pretrained"))
    argv, _ = train_argv(c, _parser())
    args = _parser().parse_args(argv)
    assert args.val_dir.endswith("validation") and args.pretrained_path.endswith("pretrained") and args.pretrained


def test_two_hosts_plan_a_torchrun_world(tmp_path):
    c = make_opt_ml(tmp_path, hosts=("algo-2", "algo-1"), current="algo-2", nic="ethwe")
    p = plan(c, gpus=0)
    assert p == {"nnodes": 2, "nproc_per_node": 1, "world_size": 2, "node_rank": 1, "master_addr": "algo-1"}
    cmd = torchrun_command(p, ["--epochs", "1"])
    assert cmd[cmd.index("--node_rank") + 1] == "1" and cmd[-3:] == ["train", "--epochs", "1"]
    assert plan(c, gpus=8)["world_size"] == 16
    assert c.network_interface == "ethwe"


def test_current_host_must_be_listed(tmp_path):
    with pytest.raises(UserError, match="not among hosts"):
        make_opt_ml(tmp_path, hosts=("algo-1",), current="algo-9")


def test_decode_value():
    assert decode_value("3") == 3 and decode_value("false") is False and decode_value('"a"') == "a"
    assert decode_value("efficientnet_b0") == "efficientnet_b0" and decode_value(0.1) == 0.1


def test_is_false_takes_every_spelling_the_trainer_takes():
    """Review of issue 26: `sm pipeline local --hp pretrained=0` fetched and mounted the weights anyway."""
    from bincounter.sagemaker.contract import is_false

    assert all(is_false(v) for v in ("false", "False", "0", "no", "OFF", False, 0))
    assert not any(is_false(v) for v in ("true", "1", "yes", True, "lite0"))


def test_interface_choice_falls_back_from_a_missing_one(monkeypatch):
    from bincounter import distributed

    monkeypatch.setattr(distributed, "list_interfaces", lambda: ["eth0", "lo"])
    assert distributed.choose_ifname("ethwe") == "eth0"
    assert distributed.choose_ifname("lo") == "lo"
    assert distributed.choose_ifname(None) == "eth0"


# ------------------------------------------------------------------------------------------ protocol
def test_protocol_single_image_and_json_batch():
    assert parse_request(b"\xff\xd8jpeg", "image/jpeg") == ([b"\xff\xd8jpeg"], False)
    assert parse_request(b"png", "application/x-image; charset=binary") == ([b"png"], False)
    b64 = base64.b64encode(b"img").decode()
    assert parse_request(json.dumps({"instances": [b64, {"b64": b64}]}), "application/json") == \
           ([b"img", b"img"], True)
    assert parse_request(json.dumps([b64]).encode(), "application/json") == ([b"img"], True)
    assert json.loads(format_response([{"count": 2}], False)) == {"count": 2}
    assert json.loads(format_response([{"count": 2}], True)) == {"predictions": [{"count": 2}]}


def test_front_precheck():
    from bincounter.serving.protocol import precheck

    precheck(b"x", "image/jpeg")
    for body, ctype, status in [(b"x", "text/csv", 415), (b"", "image/png", 400), (b"\xff{", "application/json", 400)]:
        with pytest.raises(RequestError) as e:
            precheck(body, ctype)
        assert e.value.status == status



@pytest.mark.parametrize("body, ctype, status", [
    (b"", "image/jpeg", 400),
    (b"{nope", "application/json", 400),
    (b'{"instances": ["***"]}', "application/json", 400),
    (b'{"instances": []}', "application/json", 400),
    (b'{"instances": [3]}', "application/json", 400),
    (json.dumps({"instances": ["aGk="] * 65}).encode(), "application/json", 413),
    (b"hello", "text/plain", 415),
])
def test_protocol_errors_are_4xx(body, ctype, status):
    with pytest.raises(RequestError) as e:
        parse_request(body, ctype)
    assert e.value.status == status
    assert json.loads(e.value.body())["status"] == status


def test_a_batch_of_requests_is_one_forward_pass_with_answers_of_its_own(trained_model, channels):
    """What an MMS worker does with a dynamic batch: every good request answered as if it came alone, every
    bad one its own 4xx, and the model run once for all images."""
    from bincounter.evaluate import Predictor
    from bincounter.serving.protocol import answer_batch

    pred = Predictor(trained_model, device="cpu")
    images = [p.read_bytes() for p in sorted((channels / "test").rglob("*.jpg"))[:3]]
    alone = [pred.predict([b])[0] for b in images]
    calls = []
    forward = pred.forward
    pred.forward = lambda batch: calls.append(len(batch)) or forward(batch)
    requests = [(images[0], "image/jpeg"),
                (b"not an image", "image/jpeg"),
                (json.dumps({"instances": [base64.b64encode(b).decode() for b in images[1:]]}), "application/json"),
                (b"{", "application/json"),
                (images[2], "application/x-image")]
    answers = answer_batch(pred, requests)
    assert calls == [4]  # one forward pass over the 4 decodable images of 3 good requests
    assert [status for status, _ in answers] == [200, 400, 200, 400, 200]
    docs = [json.loads(body) for _, body in answers]

    def same(a, b):
        return a["count"] == b["count"] and all(abs(a["probabilities"][k] - b["probabilities"][k]) < 1e-4
                                                for k in a["probabilities"])
    assert same(docs[0], alone[0]) and same(docs[4], alone[2])
    assert [same(d, a) for d, a in zip(docs[2]["predictions"], alone[1:], strict=True)] == [True, True]
    assert "cannot decode" in docs[1]["error"] and docs[3]["status"] == 400


def test_a_batch_of_only_bad_requests_runs_no_forward_pass(trained_model):
    from bincounter.evaluate import Predictor
    from bincounter.serving.protocol import answer_batch

    pred = Predictor(trained_model, device="cpu")
    pred.forward = lambda batch: pytest.fail("forward on a batch with no good image")
    assert [s for s, _ in answer_batch(pred, [(b"", "image/jpeg"), (b"x", "text/plain")])] == [400, 415]


@pytest.mark.parametrize("name, value, needle", [
    ("BINCOUNTER_BATCH_SIZE", "many", "BINCOUNTER_BATCH_SIZE='many' is not a number"),
    ("BINCOUNTER_BATCH_SIZE", "0", "must be at least 1"),
    ("SAGEMAKER_MODEL_SERVER_WORKERS", "2.5", "is not a number"),
])
def test_server_settings_that_are_not_numbers_stop_it_with_one_line(monkeypatch, caplog, name, value, needle):
    from bincounter.serving import server

    monkeypatch.setenv(name, value)
    assert server.main() == 2  # before any port is bound or process started
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and needle in errors[0]


def test_payload_limit_from_the_environment(monkeypatch):
    from bincounter.serving.server import payload_limit_bytes

    monkeypatch.delenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", raising=False)
    assert payload_limit_bytes() == 6 * 2**20
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "20")
    assert payload_limit_bytes() == 20 * 2**20
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "0")  # batch transform's "no limit"
    assert payload_limit_bytes() == 100 * 2**20
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "-1")
    with pytest.raises(ValueError, match="must be at least 0"):
        payload_limit_bytes()
