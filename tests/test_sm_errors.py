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

from .conftest import assert_one_line_error, run_cli
from .test_sm_jobs import ENV, ROLE, TRAIN, moto_endpoint  # noqa: F401 - the module's moto fixture

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


def test_predict_and_evaluate_against_a_good_endpoint(capsys, monkeypatch, channels, tmp_path):
    images = [str(p) for p in sorted((channels / "test").rglob("*.jpg"))[:3]]
    with _Runtime(lambda n: (200, "application/json", _predictions(n))) as ep:
        rc, out, err = _main(capsys, monkeypatch, "predict", "--endpoint", "ep1", "--endpoint-url", ep.url,
                             "--region", "us-east-1", *images)
        assert rc == 0, err
        assert [json.loads(ln)["count"] for ln in out.splitlines()] == [3, 3, 3]
        rc, out, err = _main(capsys, monkeypatch, "evaluate", "--endpoint", "ep1", "--endpoint-url", ep.url,
                             "--region", "us-east-1", "--data", str(channels / "test"), "--out", str(tmp_path))
        assert rc == 0, err and "accuracy" in out


def test_train_without_skipping_the_role_check_names_the_cause(capsys, monkeypatch, moto_endpoint):  # noqa: F811
    """moto has no IAM SimulatePrincipalPolicy: the SDK's role check gets an HTML 500 it cannot parse."""
    monkeypatch.delenv("SAGEMAKER_VALIDATE_ROLE", raising=False)
    env = {k: v for k, v in ENV.items() if k != "SAGEMAKER_VALIDATE_ROLE"}
    rc, _, err = _main(capsys, monkeypatch, "train", *TRAIN, "--endpoint-url", moto_endpoint, "--instance-type",
                       "ml.m5.xlarge", env=env)
    line = _one_error(rc, err)
    assert "SimulatePrincipalPolicy" in line and "SAGEMAKER_VALIDATE_ROLE=false" in line, line
