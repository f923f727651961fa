"""What `docker run IMAGE serve` runs: multi-model-server (via sagemaker-inference) behind a small
health-gated front.

    client --:8080--> front (this process) --127.0.0.1:8081--> MMS frontend (Java) --> Python worker(s)
                                                                                     HandlerService

Why a front: MMS answers /ping 200 even when every worker failed to load the model. The front's /ping is
200 only once MMS reports a READY worker for the model (and the artifact passed a check before MMS
started); otherwise 503 with the reason. It also rejects oversized bodies (413), turns MMS's non-JSON
errors into JSON, and on SIGTERM stops the whole MMS process group (Java *and* its Python workers, which
MMS alone leaves behind), so `docker stop` returns promptly and leaves nothing.

Environment (SageMaker's usual names):
  SAGEMAKER_BIND_TO_PORT (8080)           SAGEMAKER_MODEL_SERVER_WORKERS (GPUs, else 1)
  SAGEMAKER_MAX_PAYLOAD_IN_MB (6)         SAGEMAKER_MODEL_SERVER_TIMEOUT (60 s)
  SM_MODEL_DIR / SAGEMAKER_BASE_DIR (/opt/ml/model)
  BINCOUNTER_BATCH_SIZE (8 on a GPU, else 4; 1 = no batching)
  BINCOUNTER_MAX_BATCH_DELAY_MS (1)       dynamic batching, see register_query
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .protocol import RequestError, error_body, precheck

log = logging.getLogger("bincounter.serving")
MODEL_NAME = "model"


def model_dir() -> Path:
    base = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))
    return Path(os.environ.get("SM_MODEL_DIR", base / "model"))


def check_artifact(path: Path) -> str | None:
    """A cheap check before MMS starts: config.json is ours (model.read_config) and the weights file has a
    valid safetensors header with tensors in it. Returns the problem, or None."""
    from safetensors import safe_open

    from ..errors import UserError
    from ..model import WEIGHTS, read_config

    try:
        read_config(path)
        with safe_open(str(path / WEIGHTS), framework="pt") as f:
            keys = list(f.keys())
        if not keys:
            return f"{path}/{WEIGHTS}: holds no tensors"
    except UserError as e:
        return str(e)
    except FileNotFoundError as e:
        return f"model file missing: {e.filename}"
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types; any of them = unusable
        return f"cannot read the model in {path}: {str(e).splitlines()[0][:200]}"
    return None


def _warmup_image() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (128, 100, 70)).save(buf, format="JPEG")
    return buf.getvalue()


class Health:
    """Is the model really serving? MMS's own word is not enough: its management API reports a worker
    READY (and its /ping says 200) even after `model_fn` raised. So once MMS reports a READY worker, one
    real prediction on a small generated JPEG must succeed; only then is /ping 200. Afterwards the
    management API is re-checked every few seconds, and a worker that is replaced is verified again."""

    def __init__(self, mms_port: int, register_query: str = ""):
        self.mms_port = mms_port
        self.register_query = register_query  # POST /models?<this> when MMS has no model yet
        self.ready = False
        self.verified = False
        self.reason = "model server starting"
        self.fatal: str | None = None
        self._warmup = _warmup_image()

    def _request(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.mms_port, timeout=120)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": ctype} if ctype else {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def poll_once(self) -> None:
        try:
            status, body = self._request("GET", f"/models/{MODEL_NAME}")
            if status == 404 and self.register_query:
                status, body = self._request("POST", f"/models?{self.register_query}")
                if status >= 300:
                    self.fatal = f"MMS refused to register the model: {body.decode('utf-8', 'replace')[:300]}"
                    log.error("%s", self.fatal)
                    return
                log.info("registered the model with MMS (%s)", self.register_query)
                return
            if status != 200:
                self.ready, self.verified = False, False
                self.reason = f"model not registered yet (MMS {status})"
                return
            desc = json.loads(body)
            desc = desc[0] if isinstance(desc, list) else desc
            workers = desc.get("workers", [])
            ids = sorted(w.get("id", "") for w in workers if w.get("status") == "READY")
            if not ids:
                self.ready, self.verified = False, False
                self.reason = f"no READY worker (workers: {[w.get('status') for w in workers] or 'none'})"
                return
            if not self.verified or ids != self.verified:
                status, body = self._request("POST", f"/predictions/{MODEL_NAME}", self._warmup, "image/jpeg")
                if status != 200:
                    try:
                        msg = json.loads(body).get("error", "")
                    except ValueError:
                        msg = body.decode("utf-8", "replace").strip().splitlines()[0] if body else ""
                    self.ready, self.verified = False, False
                    self.reason = f"the model does not load: {msg or f'MMS {status}'}"
                    return
                self.verified = ids
            self.ready, self.reason = True, "ok"
        except (OSError, ValueError, http.client.HTTPException) as e:
            self.ready = False
            self.reason = f"model server not answering ({type(e).__name__})"

    def run(self, stop: threading.Event) -> None:
        last = None
        while not stop.is_set():
            self.poll_once()
            if (self.ready, self.reason) != last:
                if self.ready:
                    log.info("health: model loaded and answered a test prediction; /ping is 200")
                else:
                    log.warning("health: /ping is 503: %s", self.reason)
                last = (self.ready, self.reason)
            stop.wait(5.0 if self.ready else (10.0 if "does not load" in self.reason else 0.5))


def make_front(port: int, mms_port: int, health: Health, max_bytes: int, timeout_s: float):
    local = threading.local()

    def mms() -> http.client.HTTPConnection:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", mms_port, timeout=timeout_s)
        return conn

    class Front(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "bincounter"
        # headers and body leave in separate writes; with Nagle on, a keep-alive client's delayed ACK
        # stalls each response by ~40 ms (measured: p50 88 ms -> see docs/PERFORMANCE.md)
        disable_nagle_algorithm = True

        def log_message(self, fmt, *args):  # access log off; errors are logged where they happen
            pass

        def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _drain(self, length: int) -> None:
            """Read (and drop) a refused body so the client sees our 413, not a broken pipe; past 4x the
            limit, just close the connection."""
            if length > 4 * max_bytes:
                self.close_connection = True
                return
            while length > 0:
                chunk = self.rfile.read(min(length, 1 << 20))
                if not chunk:
                    break
                length -= len(chunk)

        def do_GET(self):
            if self.path.split("?")[0] == "/ping":
                if health.fatal:
                    return self._send(503, json.dumps({"status": "unhealthy", "reason": health.fatal}).encode())
                if health.ready:
                    return self._send(200, b'{"status": "healthy"}')
                return self._send(503, json.dumps({"status": "unhealthy", "reason": health.reason}).encode())
            self._send(404, error_body(404, f"no such path {self.path}; use GET /ping or POST /invocations"))

        def do_POST(self):
            if self.path.split("?")[0] != "/invocations":
                return self._send(404, error_body(404, f"no such path {self.path}; use POST /invocations"))
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                return self._send(400, error_body(400, "bad Content-Length"))
            if length > max_bytes:
                self._drain(length)
                return self._send(413, error_body(413, f"request of {length} bytes is over the "
                                                       f"{max_bytes // 2**20} MB limit (SAGEMAKER_MAX_PAYLOAD_IN_MB)"))
            body = self.rfile.read(length) if length else b""
            try:
                precheck(body, self.headers.get("Content-Type"))
            except RequestError as e:
                return self._send(e.status, e.body())
            if health.fatal or not health.ready:
                return self._send(503, error_body(503, f"model not loaded: {health.fatal or health.reason}"))
            headers = {"Content-Type": self.headers.get("Content-Type", ""),
                       "Accept": self.headers.get("Accept", "application/json")}
            for attempt in (1, 2):  # one retry when a kept-alive connection went stale
                conn = mms()
                try:
                    conn.request("POST", f"/predictions/{MODEL_NAME}", body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    break
                except (OSError, http.client.HTTPException) as e:
                    conn.close()
                    local.conn = None
                    if attempt == 2:
                        return self._send(502, error_body(502, f"model server unreachable ({type(e).__name__})"))
            ctype = resp.getheader("Content-Type", "application/json")
            if resp.status >= 400 and not ctype.startswith("application/json"):
                msg = data.decode("utf-8", "replace").strip().splitlines()
                return self._send(resp.status, error_body(resp.status, msg[0] if msg else resp.reason))
            self._send(resp.status, data, ctype)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128  # the default listen backlog of 5 resets bursts of new connections

    return Server(("0.0.0.0", port), Front)


def mms_config(mms_port: int, workers: int, max_bytes: int, timeout_s: int) -> str:
    """MMS properties: sagemaker-inference's defaults, our handler, loopback-only ports, and no model at
    start-up (its `load_models=ALL` would scan the model store, "/"): the model is registered through the
    management API, the only way to give MMS a batch size (`register_query`)."""
    from sagemaker_inference import model_server

    text = Path(model_server.DEFAULT_MMS_CONFIG_FILE).read_text()
    return text + "\n".join([
        "load_models=",
        f"inference_address=http://127.0.0.1:{mms_port}",
        f"management_address=http://127.0.0.1:{mms_port}",
        f"default_workers_per_model={workers}",
        f"default_response_timeout={timeout_s}",
        f"max_request_size={max_bytes + 65536}",
        "default_service_handler=bincounter.serving.handler_service",
        "vmargs=-XX:-UseContainerSupport -XX:+UseG1GC -Xms256m",
        "",
    ])


def register_query(mdir: Path, workers: int, batch_size: int, max_delay_ms: int) -> str:
    """MMS management API parameters: with batch_size > 1 a worker receives up to that many queued requests
    at once (waiting at most max_delay_ms for them) and answers them with one forward pass."""
    from urllib.parse import urlencode

    return urlencode({"url": str(mdir), "model_name": MODEL_NAME, "initial_workers": workers,
                      "batch_size": batch_size, "max_batch_delay": max_delay_ms, "synchronous": "false"})


def stop_process_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the whole group (MMS CLI, Java, Python workers), SIGKILL whatever is left after grace_s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        proc.poll()
        time.sleep(0.1)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _env_number(name: str, default, cast=int, minimum=1):
    """An environment setting, or default when unset/empty; ValueError with one clear line when malformed."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be at least {minimum}")
    return value


def payload_limit_bytes() -> int:
    """SAGEMAKER_MAX_PAYLOAD_IN_MB (default 6); 0 is batch transform's "no limit", taken as SageMaker's largest
    explicit value, 100 MB."""
    return int((_env_number("SAGEMAKER_MAX_PAYLOAD_IN_MB", 6, float, minimum=0) or 100) * 2**20)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    import torch

    try:
        port = _env_number("SAGEMAKER_BIND_TO_PORT", 8080)
        mms_port = _env_number("BINCOUNTER_MMS_PORT", port + 1)
        gpus = torch.cuda.device_count()
        workers = _env_number("SAGEMAKER_MODEL_SERVER_WORKERS", max(1, gpus))
        max_bytes = payload_limit_bytes()
        timeout_s = _env_number("SAGEMAKER_MODEL_SERVER_TIMEOUT", 60)
        # measured on 2 CPU cores (bench/serve.py, docs/PERFORMANCE.md): batches of 4 within 1 ms raise
        # throughput at concurrency >= 4 and cost < 1 ms alone; 8 is no better there. The GPU default is a guess.
        batch_size = _env_number("BINCOUNTER_BATCH_SIZE", 8 if gpus else 4)
        max_delay_ms = _env_number("BINCOUNTER_MAX_BATCH_DELAY_MS", 1, minimum=0)
    except ValueError as e:
        log.error("%s", e)
        return 2
    os.environ["SAGEMAKER_MODEL_SERVER_WORKERS"] = str(workers)
    mdir = model_dir()

    health = Health(mms_port, register_query(mdir, workers, batch_size, max_delay_ms))
    stop = threading.Event()
    front = make_front(port, mms_port, health, max_bytes, timeout_s)
    threading.Thread(target=front.serve_forever, name="front", daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("front listening on :%d (model %s, %d worker(s), %d GPU(s), batches of up to %d within %d ms, "
             "payload limit %d MB)", port, mdir, workers, gpus, batch_size, max_delay_ms, max_bytes // 2**20)

    problem = check_artifact(mdir)
    proc = None
    if problem:
        health.fatal = problem
        log.error("not starting the model server: %s (/ping answers 503)", problem)
    else:
        cfg = Path(os.environ.get("BINCOUNTER_MMS_CONFIG", "/tmp/bincounter-mms.properties"))
        cfg.write_text(mms_config(mms_port, workers, max_bytes, timeout_s))
        # model store "/" + an absolute model path, as sagemaker-inference itself does
        cmd = ["multi-model-server", "--start", "--foreground", "--model-store", "/", "--mms-config",
               str(cfg), "--log-config", str(Path(__file__).with_name("log4j2.xml"))]
        proc = subprocess.Popen(cmd, start_new_session=True)
        threading.Thread(target=health.run, args=(stop,), name="health", daemon=True).start()

    rc = 0
    while not stop.wait(0.5):
        if proc is not None and proc.poll() is not None:
            log.error("model server exited with code %s", proc.returncode)
            rc = 1
            break
    log.info("shutting down")
    front.shutdown()
    if proc is not None:
        stop_process_group(proc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
