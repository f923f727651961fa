"""Issue 26: the `sm` paths a user really takes end in one line, never a traceback; near-miss values get a close
suggestion; what `sm` prints is what a real run would do (cost lines, the delete plan), without the SDK's own
log lines or telemetry.

Endpoints are real HTTP servers on loopback speaking the SageMaker runtime API (POST
/endpoints/NAME/invocations); the SageMaker API is moto in server mode."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest

from .conftest import run_cli
from .test_sm_jobs import ENV, ROLE, TRAIN, _docs, moto_endpoint  # noqa: F401 - the module's moto fixture

NOWHERE = ["--endpoint-url", "http://127.0.0.1:9", "--region", "us-east-1"]


def _main(capsys, monkeypatch, *argv, env=ENV):
    """Run the CLI in-process; -> (exit code, stdout, stderr)."""
    from bincounter.cli import main

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rc = main(["sm", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _one_error(rc, err) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("bincounter: error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- endpoints that answer oddly
class _Runtime:
    """A SageMaker runtime endpoint on loopback that answers every invocation with `answer(n_images)` ->
    (status, content type, body bytes)."""

    def __init__(self, answer):
        self.answer, self.calls = answer, 0
        runtime = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                n = len(json.loads(body)["instances"])
                runtime.calls += 1
                status, ctype, data = runtime.answer(n)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _predictions(n, count=3):
    return json.dumps({"predictions": [{"count": count, "probabilities": [0.1, 0.1, 0.6, 0.1, 0.1]}] * n}).encode()


HTML = b"<html><body><h1>502 Bad Gateway</h1>" + b"x" * 500 + b"</body></html>"
ODD_ANSWERS = {
    "not-json": (lambda n: (200, "text/html", HTML), ["not JSON", "<html><body><h1>502 Bad Gateway</h1>"]),
    "too-few": (lambda n: (200, "application/json", _predictions(max(n - 1, 0))),
                ["predictions for", "images"]),
    "error-json": (lambda n: (200, "application/json", b'{"error": "model not loaded"}'),
                   ["no 'predictions'", "model not loaded"]),
    "bad-count": (lambda n: (200, "application/json", _predictions(n, count=9)), ["count 9", "1..5"]),
}


@pytest.mark.parametrize("kind", list(ODD_ANSWERS))
def test_predict_against_an_odd_endpoint_is_one_line(kind, capsys, monkeypatch, channels):
    answer, needles = ODD_ANSWERS[kind]
    images = [str(p) for p in sorted((channels / "test").rglob("*.jpg"))[:2]]
    with _Runtime(answer) as ep:
        line = _one_error(*_main(capsys, monkeypatch, "predict", "--endpoint", "ep1", "--endpoint-url", ep.url,
                                 "--region", "us-east-1", *images)[::2])
        assert ep.calls == 1
    assert "endpoint ep1" in line, line
    for n in needles:
        assert n in line, line
    assert len(line) < 400, line  # the first ~200 characters of what came back, not all of it


@pytest.mark.parametrize("kind", ["not-json", "too-few", "error-json"])
def test_evaluate_against_an_odd_endpoint_is_one_line(kind, capsys, monkeypatch, channels, tmp_path):
    answer, needles = ODD_ANSWERS[kind]
    with _Runtime(answer) as ep:
        line = _one_error(*_main(capsys, monkeypatch, "evaluate", "--endpoint", "ep1", "--endpoint-url", ep.url,
                                 "--region", "us-east-1", "--data", str(channels / "test"),
                                 "--out", str(tmp_path))[::2])
    for n in needles:
        assert n in line, line


def test_predict_and_evaluate_against_a_good_endpoint(capsys, monkeypatch, channels, tmp_path, caplog):
    images = [str(p) for p in sorted((channels / "test").rglob("*.jpg"))[:3]]
    with _Runtime(lambda n: (200, "application/json", _predictions(n))) as ep:
        rc, out, err = _main(capsys, monkeypatch, "predict", "--endpoint", "ep1", "--endpoint-url", ep.url,
                             "--region", "us-east-1", *images)
        assert rc == 0, err
        assert [json.loads(ln)["count"] for ln in out.splitlines()] == [3, 3, 3]
        rc, out, err = _main(capsys, monkeypatch, "evaluate", "--endpoint", "ep1", "--endpoint-url", ep.url,
                             "--region", "us-east-1", "--data", str(channels / "test"), "--out", str(tmp_path))
        assert rc == 0, err
        assert "accuracy" in out
        on_test = out
        # the whole output of `data split` means its test split, as for `bincounter evaluate`
        with caplog.at_level("INFO"):
            rc, out, err = _main(capsys, monkeypatch, "evaluate", "--endpoint", "ep1", "--endpoint-url", ep.url,
                                 "--region", "us-east-1", "--data", str(channels), "--out", str(tmp_path / "whole"))
        assert rc == 0, err
        assert out == on_test and "evaluating its test split" in caplog.text


def test_train_without_skipping_the_role_check_names_the_cause(capsys, monkeypatch, moto_endpoint):  # noqa: F811
    """moto has no IAM SimulatePrincipalPolicy: the SDK's role check gets an HTML 500 it cannot parse."""
    monkeypatch.delenv("SAGEMAKER_VALIDATE_ROLE", raising=False)
    env = {k: v for k, v in ENV.items() if k != "SAGEMAKER_VALIDATE_ROLE"}
    rc, _, err = _main(capsys, monkeypatch, "train", *TRAIN, "--endpoint-url", moto_endpoint, "--instance-type",
                       "ml.m5.xlarge", env=env)
    line = _one_error(rc, err)
    assert "SimulatePrincipalPolicy" in line and "SAGEMAKER_VALIDATE_ROLE=false" in line, line


# --------------------------------------------------------------------------- near misses and help (26.9)
TUNE = ["tune", *TRAIN, *NOWHERE]


@pytest.mark.parametrize("args, needles, absent", [
    (["train", *TRAIN, *NOWHERE, "--hp", "arch=efficientnet_bo"], ["--hp arch=efficientnet_bo",
                                                                   "did you mean efficientnet_b0?"],
     ["efficientnet_b8", "efficientnet_b7"]),
    (["train", *TRAIN, *NOWHERE, "--instance-type", "ml.g5.xlarg"], ["--instance-type 'ml.g5.xlarg'",
                                                                     "did you mean 'ml.g5.xlarge'?"], []),
    ([*TUNE, "--instance-type", "ml.g5.xlarg"], ["did you mean 'ml.g5.xlarge'?"], []),
    (["deploy", "--role", ROLE, "--model-data", "s3://b/m.tar.gz", "--image", "img", *NOWHERE, "--instance-type",
      "ml.m5.xlarg"], ["did you mean 'ml.m5.xlarge'?"], []),
    (["batch", "--model", "m", "--input", "s3://b/in/", "--output", "s3://b/o/", *NOWHERE, "--instance-type",
      "ml.g4dn.xlrge"], ["did you mean 'ml.g4dn.xlarge'?"], []),
    ([*TUNE, "--max-jobs", "0"], ["--max-jobs 0: at least 1"], []),
    ([*TUNE, "--max-parallel", "0"], ["--max-parallel 0: at least 1"], []),
    ([*TUNE, "--max-jobs", "2", "--max-parallel", "3"], ["--max-parallel 3 cannot exceed --max-jobs 2"], []),
    (["train", *TRAIN, *NOWHERE, "--hp", "epochs=3", "--hp", "epochs=5"],
     ["--hp epochs=5: epochs is given twice (--hp epochs=3 before)"], []),
    ([*TUNE, "--hp", "lr=0.1", "--hp", "lr=0.1"], ["lr is given twice"], []),
], ids=["arch-o-for-0", "itype-train", "itype-tune", "itype-deploy", "itype-batch", "max-jobs", "max-parallel",
        "parallel-over-jobs", "hp-twice", "tune-hp-twice"])
def test_near_misses_are_refused_with_the_close_value(capsys, monkeypatch, args, needles, absent):
    rc, _, err = _main(capsys, monkeypatch, *args)
    line = _one_error(rc, err)
    for n in needles:
        assert n in line, line
    for a in absent:
        assert a not in line, line
    assert "estimated cost" not in err, err  # refused before the cost line


def test_an_unpriced_but_well_formed_instance_type_is_priced_by_the_user(capsys, monkeypatch):
    """ml.p5.48xlarge is a real type the table lacks: a warning and 'cost unknown', not a refusal."""
    rc, out, err = _main(capsys, monkeypatch, "train", *TRAIN, "--instance-type", "ml.p5.48xlarge", "--dry-run",
                         *NOWHERE)
    assert rc == 0, err
    assert "estimated cost: unknown (ml.p5.48xlarge is not in the price table" in err


def _help(capsys, *argv) -> str:
    from bincounter.cli import main

    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_says_each_thing_once_and_only_what_is_true(capsys):
    from bincounter.sm import cost

    types = cost.instance_types()
    sm = _help(capsys, "sm")
    assert all(t in sm for t in types), sm  # the priced types, listed once, in `sm --help`
    for action in ("tune", "train", "deploy", "predict", "evaluate", "batch", "delete", "pipeline", "status",
                   "logs", "report", "collect"):
        assert action in sm
    for cmd in ("train", "tune", "deploy", "batch"):
        text = _help(capsys, "sm", cmd)
        assert sum(t in text for t in types) <= 1, (cmd, text)  # the default type at most, not the table
        assert "bincounter sm --help" in text, text
    batch = _help(capsys, "sm", "batch")
    assert "Start a SageMaker batch transform job" in batch, batch
    for cmd in ("delete", "predict", "evaluate"):
        text = _help(capsys, "sm", cmd)
        assert "cost" not in text.split("--dry-run", 1)[1].split("--", 1)[0], text


# --------------------------------------------------------------------------- pretrained channel vs arch (26.6)
LITE0 = "tf_efficientnet_lite0"


def _weights_channel(endpoint, prefix: str, arch: str = LITE0, provenance: bool = True) -> str:
    """A pretrained channel as `bincounter weights fetch` + `data upload` leave it: OUT/<arch>.safetensors and
    OUT/<arch>.provenance.json (the weights bytes are never read on the client side)."""
    from bincounter.weights import FORMAT

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.put_object(Bucket="bkt", Key=f"{prefix}/{arch}.safetensors", Body=b"weights")
    if provenance:
        s3.put_object(Bucket="bkt", Key=f"{prefix}/{arch}.provenance.json", Body=json.dumps(
            {"format": FORMAT, "arch": arch, "source": "pypi", "sha256": "0" * 64}).encode())
    return f"s3://bkt/{prefix}/"


def _training_jobs(endpoint) -> set[str]:
    sm = boto3.client("sagemaker", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    return {j["TrainingJobName"] for j in sm.list_training_jobs()["TrainingJobSummaries"]}


@pytest.mark.parametrize("cmd", ["train", "tune"])
def test_pretrained_weights_for_another_arch_are_refused_before_any_request(cmd, capsys, monkeypatch,
                                                                            moto_endpoint):  # noqa: F811
    channel = _weights_channel(moto_endpoint, "weights/lite0")
    before = _training_jobs(moto_endpoint)
    rc, _, err = _main(capsys, monkeypatch, cmd, *TRAIN, "--pretrained", channel, "--endpoint-url", moto_endpoint,
                       "--instance-type", "ml.m5.xlarge")  # the trainer's default arch: efficientnet_b0
    line = _one_error(rc, err)
    assert f"--pretrained {channel}" in line and f"holds {LITE0} weights" in line, line
    assert f"--hp arch={LITE0}" in line and "not efficientnet_b0" in line, line
    assert _training_jobs(moto_endpoint) == before
    assert "estimated cost" not in err  # refused before the cost line, like every other input mistake


def test_pretrained_weights_for_the_arch_go_through(capsys, caplog, monkeypatch, moto_endpoint):  # noqa: F811
    caplog.set_level("INFO", logger="bincounter")
    channel = _weights_channel(moto_endpoint, "weights/lite0-ok")
    rc, out, err = _main(capsys, monkeypatch, "train", *TRAIN, "--pretrained", channel, "--hp", f"arch={LITE0}",
                         "--endpoint-url", moto_endpoint, "--instance-type", "ml.m5.xlarge", "--name", "bc-pre")
    assert rc == 0, err
    assert json.loads(out)["created"] == "training job"
    assert f"pretrained weights: {LITE0}" in caplog.text, caplog.text


B0, B2 = "efficientnet_b0", "efficientnet_b2"


def _tuning_jobs(endpoint) -> set[str]:
    sm = boto3.client("sagemaker", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    return {j["HyperParameterTuningJobName"] for j in sm.list_hyper_parameter_tuning_jobs()
            ["HyperParameterTuningJobSummaries"]}


def test_tune_over_two_archs_checks_each_arch_s_own_weights(capsys, caplog, monkeypatch,
                                                             moto_endpoint):  # noqa: F811
    """`weights fetch --arch b0` and `--arch b2` into one folder: the container picks each trial's own
    <arch>.safetensors, so the channel serves both (it was refused: every arch was compared with b0's provenance)."""
    caplog.set_level("INFO", logger="bincounter")
    channel = _weights_channel(moto_endpoint, "weights/both", arch=B0)
    _weights_channel(moto_endpoint, "weights/both", arch=B2)
    rc, out, err = _main(capsys, monkeypatch, "tune", *TRAIN, "--pretrained", channel, "--archs", f"{B0},{B2}",
                         "--endpoint-url", moto_endpoint, "--instance-type", "ml.m5.xlarge", "--name", "bc-two-archs")
    assert rc == 0, err
    assert "bc-two-archs" in _tuning_jobs(moto_endpoint)
    for arch in (B0, B2):
        assert f"pretrained weights: {arch} ({channel}{arch}.safetensors)" in caplog.text, caplog.text


@pytest.mark.parametrize("case", ["missing", "mismatched"])
def test_tune_refuses_an_arch_whose_own_weights_are_missing_or_another_s(case, capsys, monkeypatch,
                                                                         moto_endpoint):  # noqa: F811
    """b0 and b2 searched, the channel holds b0's and (missing) lite0's, or (mismatched) a b2.safetensors whose
    provenance says lite0: one line naming b2, before any request."""
    prefix = f"weights/{case}"
    channel = _weights_channel(moto_endpoint, prefix, arch=B0)
    _weights_channel(moto_endpoint, prefix, arch=LITE0)
    if case == "mismatched":
        s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
        for suffix in ("safetensors", "provenance.json"):  # lite0's files renamed b2's
            s3.copy_object(Bucket="bkt", Key=f"{prefix}/{B2}.{suffix}",
                           CopySource={"Bucket": "bkt", "Key": f"{prefix}/{LITE0}.{suffix}"})
    before = _tuning_jobs(moto_endpoint)
    rc, _, err = _main(capsys, monkeypatch, "tune", *TRAIN, "--pretrained", channel, "--archs", f"{B0},{B2}",
                       "--endpoint-url", moto_endpoint, "--instance-type", "ml.m5.xlarge", "--name", f"bc-{case}")
    line = _one_error(rc, err)
    assert f"--pretrained {channel}" in line and B2 in line and f"--arch {B2}" in line, line
    if case == "missing":
        assert f"none named {B2}.safetensors" in line, line
    else:
        assert f"{B2}.safetensors holds {LITE0} weights" in line and f"not {B2}: drop {B2} from --archs" in line, line
    assert _tuning_jobs(moto_endpoint) == before and "estimated cost" not in err


def test_a_pretrained_channel_without_provenance_is_warned_about(capsys, caplog, monkeypatch,
                                                                moto_endpoint):  # noqa: F811
    channel = _weights_channel(moto_endpoint, "weights/bare", arch="efficientnet_b0", provenance=False)
    rc, _, err = _main(capsys, monkeypatch, "train", *TRAIN, "--pretrained", channel, "--endpoint-url",
                       moto_endpoint, "--instance-type", "ml.m5.xlarge", "--name", "bc-bare")
    assert rc == 0, err
    assert "no provenance JSON" in caplog.text, caplog.text


# --------------------------------------------------------------------------- what sm prints (26.10)
def test_a_serverless_deploy_prints_its_dollar_line():
    proc = run_cli("sm", "deploy", "--role", ROLE, "--model-data", "s3://b/m.tar.gz", "--cpu-image", "img",
                   "--serverless", "3072,10", "--dry-run", *NOWHERE, env=ENV)
    assert proc.returncode == 0, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("estimated cost:")]
    # 3 GB x $0.00002 per GB-second; 10 concurrent requests busy for an hour: 10 x 3600 x $0.00006
    assert "$0.000060 per second of inference" in line and "$2.16/h with 10 requests always in flight" in line
    assert "nothing while idle" in line and "us-east-1 prices of" in line, line
    depth = 0  # its parentheses pair up (a stray ")" once closed nothing)
    for c in line:
        depth += {"(": 1, ")": -1}.get(c, 0)
        assert depth >= 0, line
    assert depth == 0, line


def test_delete_dry_run_shows_the_autoscaling_deregistration():
    proc = run_cli("sm", "delete", "--endpoint", "ep1", "--dry-run", *NOWHERE, env=ENV)
    assert proc.returncode == 0, proc.stderr
    docs = _docs(proc.stdout)
    assert [d["api"] for d in docs] == ["DeregisterScalableTarget", "DeleteEndpoint", "DeleteEndpointConfig",
                                        "DeleteModel", "DeleteAlarms", "DeleteMetricFilter"], proc.stdout
    assert docs[0]["request"] == {"ServiceNamespace": "sagemaker", "ResourceId": "endpoint/ep1/variant/AllTraffic",
                                  "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"}
    assert "if one is registered" in proc.stderr


DEPLOY = ["deploy", "--role", ROLE, "--model-data", "s3://bkt/m.tar.gz", "--image", "123456789012.dkr.ecr.us-east-1"
          ".amazonaws.com/b:1", "--no-wait", "--instance-type", "ml.m5.xlarge"]


def test_sm_output_has_no_sdk_chatter_and_no_telemetry(moto_endpoint, tmp_path):  # noqa: F811
    """The SDK's INFO/DEBUG lines only with -v; telemetry opted out as in local mode, unless the user's own SDK
    config says otherwise (their choice is kept, with their other settings)."""
    env = {**ENV, "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)}
    env.pop("SAGEMAKER_USER_CONFIG_OVERRIDE", None)
    quiet = run_cli("sm", *DEPLOY, "--name", "ep-quiet", "--endpoint-url", moto_endpoint, env=env)
    assert quiet.returncode == 0, quiet.stderr
    for chatter in ("Not applying SDK defaults", "Creating model with name", "telemetry", "DEBUG"):
        assert chatter not in quiet.stderr, quiet.stderr
    assert "undo:" in quiet.stderr  # bincounter's own lines stay

    loud = run_cli("sm", *DEPLOY, "--name", "ep-loud", "--endpoint-url", moto_endpoint, "-v", env=env)
    assert loud.returncode == 0, loud.stderr
    assert "Creating model with name" in loud.stderr
    assert "will collect telemetry" not in loud.stderr  # opted out

    cfg = tmp_path / "xdg" / "sagemaker" / "config.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: false\n")
    theirs = run_cli("sm", *DEPLOY, "--name", "ep-theirs", "--endpoint-url", moto_endpoint, "-v", env=env)
    assert theirs.returncode == 0, theirs.stderr
    assert "will collect telemetry" in theirs.stderr  # the user's explicit choice
    assert cfg.read_text().endswith("TelemetryOptOut: false\n")  # and their file untouched


def test_telemetry_opt_out_keeps_the_users_other_settings(tmp_path, monkeypatch):
    import yaml

    from bincounter.sm import sdk

    cfg = tmp_path / "sagemaker" / "config.yaml"
    cfg.parent.mkdir()
    cfg.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      Session:\n"
                   "        DefaultS3Bucket: my-bucket\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("SAGEMAKER_USER_CONFIG_OVERRIDE", raising=False)
    from contextlib import ExitStack

    with ExitStack() as stack:
        sdk.opt_out_of_telemetry(stack)
        used = yaml.safe_load(open(__import__("os").environ["SAGEMAKER_USER_CONFIG_OVERRIDE"]))
    modules = used["SageMaker"]["PythonSDK"]["Modules"]
    assert modules == {"Session": {"DefaultS3Bucket": "my-bucket"}, "TelemetryOptOut": True}
    assert "SAGEMAKER_USER_CONFIG_OVERRIDE" not in __import__("os").environ  # restored after the command
    assert "TelemetryOptOut" not in cfg.read_text()


def test_the_tuners_lr_range_is_one_fact_in_code_help_and_docs(capsys):
    from bincounter.sm.hyperparameters import DEFAULT_RANGES
    from tests.conftest import REPO

    lo, hi = DEFAULT_RANGES["lr"].split(",")
    assert f"lr {lo}..{hi}" in " ".join((REPO / "docs" / "QUALITY.md").read_text().split())
    assert f"default {lo},{hi}" in _help(capsys, "sm", "tune")
    assert f"default {lo},{hi}" in _help(capsys, "sm", "pipeline", "upsert")


def test_the_readme_says_where_file_list_json_comes_from():
    from tests.conftest import REPO

    readme = " ".join((REPO / "README.md").read_text().split())
    assert '{"1": ["data/metadata/00009.json"' in readme  # the format
    assert "holds no file list" in readme and "--sample" in readme
