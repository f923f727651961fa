"""What `docker run IMAGE serve` runs: multi-model-server (via sagemaker-inference) behind a small
health-gated front, an aiohttp event-loop server.

    client --:8080--> front (this process, aiohttp) --pooled connections, 127.0.0.1:8081--> MMS frontend (Java)
                                                                                  --> Python worker(s): HandlerService

The front's own job, nothing else:
* the health gate: MMS answers /ping 200 even when every worker failed to load the model, and keeps calling a
  worker READY after it was killed. The front's /ping is 200 only after a real test prediction succeeded, and
  it re-runs that prediction whenever a request to MMS fails or times out, and whenever no worker has answered
  for a while. When the worker stops answering, /ping is 503; when it has not recovered within
  BINCOUNTER_RECOVER_S, the front stops MMS and exits 1, so the platform replaces the container.
* the limits: the body is read by the front (Content-Length or chunked) and refused with 413 past
  SAGEMAKER_MAX_PAYLOAD_IN_MB, 411 for a POST that declares no length; malformed framing (negative or non-numeric
  Content-Length) is a 400 from the HTTP parser, and the connection is closed. Connections are capped
  (BINCOUNTER_MAX_CONNECTIONS, refused with a 503) and a client that sends nothing for BINCOUNTER_IDLE_TIMEOUT_S
  is disconnected (idle keep-alive, stalled headers, stalled body).
* the error shape: every error, the front's or MMS's (`{"code": 500, "message": "Worker died."}`, plain text),
  leaves as JSON {"error": "<one line>", "status": <code>}.
* MMS's lifecycle: one process group (Java *and* its Python workers, which MMS alone leaves behind). On SIGTERM
  the front stops accepting, lets in-flight requests finish for at most BINCOUNTER_DRAIN_S, then stops MMS.
A request is sent to MMS once: only a connection that could not be opened (nothing sent) is retried, so a slow
request never runs twice; an MMS answer later than SAGEMAKER_MODEL_SERVER_TIMEOUT is a 504.

Environment (SageMaker's usual names first):
  SAGEMAKER_BIND_TO_PORT (8080)           SAGEMAKER_MODEL_SERVER_WORKERS (GPUs, else 1; onnx: CPUs)
  SAGEMAKER_MAX_PAYLOAD_IN_MB (6)         SAGEMAKER_MODEL_SERVER_TIMEOUT (60 s)
  SM_MODEL_DIR / SAGEMAKER_BASE_DIR (/opt/ml/model)
  BINCOUNTER_BATCH_SIZE (8 on a GPU, else 4; 1 = no batching)
  BINCOUNTER_MAX_BATCH_DELAY_MS (1)       dynamic batching, see register_query
  BINCOUNTER_DRAIN_S (5)                  SIGTERM: how long in-flight requests may still run
  BINCOUNTER_HEALTH_INTERVAL_S (5)        management-API check; test prediction when no worker answered that long
  BINCOUNTER_PROBE_TIMEOUT_S (20)         a test prediction slower than this counts as failed
  BINCOUNTER_RECOVER_S (120)              a worker lost for longer than this: exit 1
  BINCOUNTER_IDLE_TIMEOUT_S (120)         BINCOUNTER_MAX_CONNECTIONS (1000)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import aiohttp
from aiohttp import web, web_protocol, web_server

from .protocol import RequestError, error_body, precheck

log = logging.getLogger("bincounter.serving")
MODEL_NAME = "model"


def model_dir() -> Path:
    base = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))
    return Path(os.environ.get("SM_MODEL_DIR", base / "model"))


def check_artifact(path: Path, runtime: str = "torch") -> str | None:
    """A cheap check before MMS starts: config.json is ours (artifact.read_config) and the file the runtime
    loads is usable: for torch, a safetensors header with tensors in it; for onnx, model.onnx present, exported
    from these weights and intact (onnx_runtime.check_onnx). Returns the problem, or None."""
    import struct

    from ..artifact import ONNX, WEIGHTS, read_config
    from ..errors import UserError
    from .onnx_runtime import check_onnx

    try:
        if runtime == "onnx":
            check_onnx(path)
            # the session the workers will make: an opset or operator this ONNX Runtime lacks fails here, once
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            ort.InferenceSession(str(path / ONNX), opts, providers=["CPUExecutionProvider"])
            return None
        read_config(path)
        # the safetensors layout: u64 header length, then a JSON header naming the tensors (read without torch)
        with open(path / WEIGHTS, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n)) if 0 < n < 100 * 2**20 else None
        if not isinstance(header, dict):
            return f"{path}/{WEIGHTS}: not a safetensors file"
        tensors = [v for k, v in header.items() if k != "__metadata__"]
        if not tensors:
            return f"{path}/{WEIGHTS}: holds no tensors"
        end = 8 + n + max(int(t["data_offsets"][1]) for t in tensors)
        size = (path / WEIGHTS).stat().st_size
        if size != end:
            return f"{path}/{WEIGHTS}: {size} bytes, its header describes {end} (a partial copy?)"
    except UserError as e:
        return str(e)
    except FileNotFoundError as e:
        return f"model file missing: {e.filename}"
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: any error = unusable
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return f"cannot read the model in {path}: {first}"
    return None


def _warmup_image() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (128, 100, 70)).save(buf, format="JPEG")
    return buf.getvalue()


@dataclass
class Settings:
    port: int = 8080
    mms_port: int = 8081
    workers: int = 1
    max_bytes: int = 6 * 2**20
    timeout_s: float = 60.0  # one request to MMS (SAGEMAKER_MODEL_SERVER_TIMEOUT)
    batch_size: int = 4
    max_delay_ms: int = 1
    drain_s: float = 5.0
    health_interval_s: float = 5.0
    probe_timeout_s: float = 20.0
    runtime: str = "torch"  # or "onnx" (the CPU image): onnx_runtime.runtime_name
    recover_s: float = 120.0
    idle_timeout_s: float = 120.0
    max_connections: int = 1000


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


def default_workers(gpus: int, runtime: str) -> int:
    """One worker per GPU (PyTorch); on CPUs, one PyTorch worker using every core, but one ONNX Runtime worker
    per core, each single-threaded: on 2 cores that served 164-175 req/s against 138-154 for one worker with
    2 threads (bench/serve.py settings, 2026-11-27), at the price of a slower single request."""
    if runtime == "onnx":
        from .onnx_runtime import available_cpus

        return available_cpus()
    return max(1, gpus)


def settings_from_env(gpus: int, runtime: str = "torch") -> Settings:
    """Every number the server takes from its environment, checked once; ValueError names the bad one."""
    port = _env_number("SAGEMAKER_BIND_TO_PORT", 8080)
    return Settings(
        port=port,
        mms_port=_env_number("BINCOUNTER_MMS_PORT", port + 1),
        workers=_env_number("SAGEMAKER_MODEL_SERVER_WORKERS", default_workers(gpus, runtime)),
        runtime=runtime,
        max_bytes=payload_limit_bytes(),
        timeout_s=_env_number("SAGEMAKER_MODEL_SERVER_TIMEOUT", 60),
        # measured on 2 CPU cores (bench/serve.py, docs/PERFORMANCE.md): batches of 4 within 1 ms raise
        # throughput at concurrency >= 4 and cost < 1 ms alone; 8 is no better there. The GPU default is a guess.
        batch_size=_env_number("BINCOUNTER_BATCH_SIZE", 8 if gpus else 4),
        max_delay_ms=_env_number("BINCOUNTER_MAX_BATCH_DELAY_MS", 1, minimum=0),
        drain_s=_env_number("BINCOUNTER_DRAIN_S", 5.0, float, minimum=0),
        health_interval_s=_env_number("BINCOUNTER_HEALTH_INTERVAL_S", 5.0, float, minimum=0.1),
        probe_timeout_s=_env_number("BINCOUNTER_PROBE_TIMEOUT_S", 20.0, float, minimum=0.1),
        recover_s=_env_number("BINCOUNTER_RECOVER_S", 120.0, float, minimum=0),
        idle_timeout_s=_env_number("BINCOUNTER_IDLE_TIMEOUT_S", 120.0, float, minimum=0.1),
        max_connections=_env_number("BINCOUNTER_MAX_CONNECTIONS", 1000),
    )


def contract_error(status: int, data: bytes, reason: str = "") -> bytes:
    """Any error body (ours, MMS's `{"code", "type", "message"}`, plain text, HTML) -> {"error", "status"}."""
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc.get("status") == status:
        return data
    if isinstance(doc, dict) and (doc.get("message") or doc.get("error")):
        message = str(doc.get("message") or doc.get("error"))
    else:
        lines = data.decode("utf-8", "replace").strip().splitlines()
        message = lines[0] if lines else (reason or HTTPStatus(status).phrase)
    return error_body(status, message.strip()[:500])


class Health:
    """Is the model really serving? MMS's own word is not enough: its management API reports a worker
    READY (and its /ping says 200) even after `model_fn` raised, and after the worker was killed. So:
    * once MMS reports a READY worker, one real prediction on a small generated JPEG must succeed before
      /ping is 200, and again whenever the READY workers change;
    * afterwards the management API is re-checked every `health_interval_s`, and the test prediction is
      re-run when a request to MMS failed or timed out (`suspect`) or when no worker has answered anything
      for `health_interval_s` (a worker serving traffic proves itself);
    * a test prediction that fails or takes longer than `probe_timeout_s` makes /ping 503; once the model has
      served, `lost` is set when it has not recovered within `recover_s`, and `serve` then exits 1.
    `fatal` is a broken artifact found before MMS started: /ping stays 503, there is nothing to recover."""

    def __init__(self, mms_url: str, s: Settings, register_query: str = ""):
        self.mms_url = mms_url
        self.s = s
        self.register_query = register_query  # POST /models?<this> when MMS has no model yet
        self.ready = False
        self.reason = "model server starting"
        self.fatal: str | None = None
        self.lost: str | None = None
        self.was_ready = False
        self.failing_since: float | None = None
        self.verified: list[str] | None = None
        self.last_answer = 0.0
        self.probes = 0
        self._kick = asyncio.Event()
        self._warmup = _warmup_image()

    def worker_answered(self) -> None:
        self.last_answer = time.monotonic()

    def suspect(self, why: str) -> None:
        """A request to MMS failed: run the test prediction now."""
        if not self._kick.is_set():
            log.warning("health: %s; re-running the test prediction", why)
        self._kick.set()

    async def _call(self, session, method, path, body=None, ctype=None) -> tuple[int, bytes]:
        timeout = aiohttp.ClientTimeout(total=self.s.probe_timeout_s)
        headers = {"Content-Type": ctype} if ctype else {}
        async with session.request(method, self.mms_url + path, data=body, headers=headers, timeout=timeout) as r:
            return r.status, await r.read()

    def _up(self) -> None:
        self.ready, self.reason, self.was_ready, self.failing_since = True, "ok", True, None

    def _down(self, reason: str) -> None:
        self.ready, self.reason, self.verified = False, reason, None
        if not self.was_ready:
            return  # never served: /ping stays 503 (SageMaker fails the deployment), nothing to replace
        now = time.monotonic()
        self.failing_since = self.failing_since or now
        if now - self.failing_since >= self.s.recover_s:
            self.lost = (f"the model has not answered a test prediction for {now - self.failing_since:.0f} s "
                         f"(BINCOUNTER_RECOVER_S={self.s.recover_s:g}; last: {reason}); exiting so that the "
                         f"platform replaces this container")

    async def poll_once(self, session: aiohttp.ClientSession) -> None:
        kicked = self._kick.is_set()
        self._kick.clear()
        try:
            status, body = await self._call(session, "GET", f"/models/{MODEL_NAME}")
            if status == 404 and self.register_query:
                status, body = await self._call(session, "POST", f"/models?{self.register_query}")
                if status >= 300:
                    self.fatal = f"MMS refused to register the model: {body.decode('utf-8', 'replace')[:300]}"
                    log.error("%s", self.fatal)
                    return
                log.info("registered the model with MMS (%s)", self.register_query)
                self.register_query = ""
                return
            if status != 200:
                return self._down(f"model not registered yet (MMS {status})")
            desc = json.loads(body)
            desc = desc[0] if isinstance(desc, list) else desc
            workers = desc.get("workers", [])
            ids = sorted(w.get("id", "") for w in workers if w.get("status") == "READY")
            if not ids:
                return self._down(f"no READY worker (workers: {[w.get('status') for w in workers] or 'none'})")
            stale = time.monotonic() - self.last_answer >= self.s.health_interval_s
            if self.verified != ids or kicked or stale:
                self.probes += 1
                status, body = await self._call(session, "POST", f"/predictions/{MODEL_NAME}", self._warmup,
                                                "image/jpeg")
                if status != 200:
                    msg = json.loads(contract_error(status, body))["error"]
                    what = "test prediction failed" if self.was_ready else "the model does not load"
                    return self._down(f"{what}: {msg}")
                self.verified = ids
                self.worker_answered()
            self._up()
        except TimeoutError:
            self._down(f"the model server did not answer within {self.s.probe_timeout_s:g} s "
                       f"(BINCOUNTER_PROBE_TIMEOUT_S)")
        except (aiohttp.ClientError, OSError, ValueError, AttributeError) as e:
            self._down(f"model server not answering ({type(e).__name__})")

    async def run(self, session: aiohttp.ClientSession) -> None:
        last = None
        while self.fatal is None and self.lost is None:
            await self.poll_once(session)
            if (self.ready, self.reason) != last:
                if self.ready:
                    log.info("health: model loaded and answered a test prediction; /ping is 200")
                else:
                    log.warning("health: /ping is 503: %s", self.reason)
                last = (self.ready, self.reason)
            if self.lost:
                log.error("health: %s", self.lost)
                return
            wait = self.s.health_interval_s if self.ready else (10.0 if "does not load" in self.reason else 0.5)
            try:
                await asyncio.wait_for(self._kick.wait(), wait)
            except TimeoutError:
                pass


class _Connection(web_protocol.RequestHandler):
    """aiohttp's connection handler plus: errors of the HTTP parser in the contract's JSON shape, the time of
    the last byte received (idle/slow clients), a flag while the model works for this connection."""

    busy = False
    last_activity = 0.0

    def connection_made(self, transport) -> None:
        self.last_activity = self._loop.time()
        super().connection_made(transport)
        manager = self._manager
        if manager is not None and len(manager.connections) > manager.max_connections:
            body = error_body(503, f"too many connections (BINCOUNTER_MAX_CONNECTIONS={manager.max_connections})")
            transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            self.force_close()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self._loop.time()
        super().data_received(data)

    def handle_error(self, request, status: int = 500, exc=None, message=None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        if status >= 500:
            log.error("error handling a request", exc_info=exc)
            message = "internal error in the front (see the endpoint log)"
        else:
            log.info("refused a malformed request: %s", message or exc)
        text = (str(message or exc or HTTPStatus(status).phrase).strip().splitlines() or ["bad request"])[0]
        resp = web.Response(status=status, body=error_body(status, text[:300]), content_type="application/json")
        resp.force_close()
        return resp


class _Server(web_server.Server):
    def __init__(self, handler, max_connections: int, **kwargs):
        super().__init__(handler, **kwargs)
        self.max_connections = max_connections

    def __call__(self) -> _Connection:
        return _Connection(self, loop=self._loop, **self._kwargs)


class Front:
    """/ping and /invocations on :port; everything the model computes comes from MMS at `mms_url`."""

    def __init__(self, s: Settings, health: Health, session: aiohttp.ClientSession, mms_url: str):
        self.s, self.health, self.session, self.mms_url = s, health, session, mms_url
        self.draining = False
        self._server: _Server | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task | None = None

    async def start(self, host: str = "0.0.0.0") -> int:
        loop = asyncio.get_running_loop()
        self._server = _Server(self.handle, self.s.max_connections, access_log=None,
                               keepalive_timeout=self.s.idle_timeout_s,
                               lingering_time=min(10.0, self.s.idle_timeout_s))
        self._listener = await loop.create_server(self._server, host, self.s.port, backlog=1024, reuse_address=True)
        self._sweeper = asyncio.create_task(self._sweep())
        return self._listener.sockets[0].getsockname()[1]

    async def _sweep(self) -> None:
        """Close connections that sent nothing for idle_timeout_s while the model was not working for them:
        idle keep-alive, headers or a body that stopped arriving."""
        loop = asyncio.get_running_loop()
        period = min(5.0, self.s.idle_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for conn in self._server.connections:
                if not conn.busy and now - conn.last_activity > self.s.idle_timeout_s:
                    conn.force_close()

    async def stop(self, drain_s: float) -> None:
        """Stop accepting, let in-flight requests finish within drain_s, close every connection."""
        self.draining = True
        if self._listener is not None:
            self._listener.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            await self._server.shutdown(max(drain_s, 0.01))  # aiohttp: 0 would mean "no limit"
        if self._listener is not None:
            await self._listener.wait_closed()

    @staticmethod
    def _json(status: int, body: bytes, close: bool = False) -> web.Response:
        resp = web.Response(status=status, body=body, content_type="application/json")
        if close:
            resp.force_close()
        return resp

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/invocations" and request.method == "POST":
            resp = await self.invocations(request)
        elif request.path == "/ping" and request.method in ("GET", "HEAD"):
            resp = self.ping()
        else:
            use = "GET /ping or POST /invocations"
            resp = self._json(404, error_body(404, f"no such path {request.method} {request.path}; use {use}"))
        if self.draining:
            resp.force_close()
        return resp

    def ping(self) -> web.Response:
        h = self.health
        if h.ready and not (h.fatal or h.lost):
            return self._json(200, b'{"status": "healthy"}')
        return self._json(503, json.dumps({"status": "unhealthy", "reason": h.fatal or h.lost or h.reason}).encode())

    async def _read_body(self, request: web.BaseRequest) -> bytes | web.Response:
        limit = self.s.max_bytes
        too_big = error_body(413, f"request body over the {limit / 2**20:g} MB limit (SAGEMAKER_MAX_PAYLOAD_IN_MB)")
        length = request.content_length
        if length is not None and length > limit:
            # past 4x the limit just close; below it, aiohttp reads and drops the rest (lingering close) so the
            # client sees the 413 rather than a reset
            return self._json(413, too_big, close=length > 4 * limit or "Expect" in request.headers)
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = bytearray()
        while chunk := await request.content.readany():
            body += chunk
            if len(body) > limit:
                return self._json(413, too_big)
        return bytes(body)

    async def invocations(self, request: web.BaseRequest) -> web.Response:
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        if request.content_length is None and not chunked:
            return self._json(411, error_body(411, "POST /invocations needs a Content-Length or a chunked body"),
                              close=True)
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            precheck(body, request.headers.get("Content-Type"))
        except RequestError as e:
            return self._json(e.status, e.body())
        h = self.health
        if h.fatal or h.lost or not h.ready:
            return self._json(503, error_body(503, f"model not ready: {h.fatal or h.lost or h.reason}"))
        conn = request.protocol
        conn.busy = True
        try:
            return await self._forward(body, request.headers)
        finally:
            conn.busy = False
            conn.last_activity = asyncio.get_running_loop().time()

    async def _forward(self, body: bytes, headers) -> web.Response:
        out = {"Content-Type": headers.get("Content-Type", ""), "Accept": headers.get("Accept", "application/json")}
        timeout = aiohttp.ClientTimeout(total=self.s.timeout_s)
        for attempt in (1, 2):
            try:
                async with self.session.post(f"{self.mms_url}/predictions/{MODEL_NAME}", data=body, headers=out,
                                             timeout=timeout) as resp:
                    data = await resp.read()
                    status, ctype, reason = resp.status, resp.headers.get("Content-Type", ""), resp.reason or ""
                break
            except aiohttp.ClientConnectorError as e:
                # the connection could not be opened: nothing was sent, so trying once more cannot run it twice
                if attempt == 2:
                    self.health.suspect(f"cannot connect to the model server ({type(e).__name__})")
                    return self._json(502, error_body(502, f"model server unreachable ({type(e).__name__})"))
                await asyncio.sleep(0.05)
            except TimeoutError:
                self.health.suspect(f"a request got no answer within {self.s.timeout_s:g} s")
                return self._json(504, error_body(504, f"the model did not answer within {self.s.timeout_s:g} s "
                                                       f"(SAGEMAKER_MODEL_SERVER_TIMEOUT)"))
            except (aiohttp.ClientError, OSError) as e:
                # sent (at least partly): never re-sent, the model may be working on it
                self.health.suspect(f"the model server dropped a request ({type(e).__name__})")
                return self._json(502, error_body(502, f"the model server dropped the request ({type(e).__name__})"))
        if status >= 500:
            self.health.suspect(f"the model server answered {status}")
        else:
            self.health.worker_answered()
        if status >= 400:
            return self._json(status, contract_error(status, data, reason))
        resp = web.Response(status=status, body=data)
        resp.content_type = ctype.split(";")[0] or "application/json"
        return resp


def mms_config(mms_port: int, workers: int, max_bytes: int, timeout_s: int) -> str:
    """MMS properties: sagemaker-inference's defaults, our handler, loopback-only ports, and no model at
    start-up (its `load_models=ALL` would scan the model store, "/"): the model is registered through the
    management API, the only way to give MMS a batch size (`register_query`). The JVM sizes its heap from the
    container's memory limit (container support is on by default; a quarter of it at most: the model workers,
    not Java, need the memory)."""
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
        f"vmargs={JAVA_VMARGS}",
        "",
    ])


JAVA_VMARGS = "-XX:+UseContainerSupport -XX:MaxRAMPercentage=25 -XX:InitialRAMPercentage=2 -XX:+UseG1GC"


def register_query(mdir: Path, workers: int, batch_size: int, max_delay_ms: int) -> str:
    """MMS management API parameters: with batch_size > 1 a worker receives up to that many queued requests
    at once (waiting at most max_delay_ms for them) and answers them with one forward pass."""
    from urllib.parse import urlencode

    return urlencode({"url": str(mdir), "model_name": MODEL_NAME, "initial_workers": workers,
                      "batch_size": batch_size, "max_batch_delay": max_delay_ms, "synchronous": "false"})


def stop_process_group(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
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


async def serve(s: Settings, mdir: Path, gpus: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    mms_url = f"http://127.0.0.1:{s.mms_port}"
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=s.max_connections), auto_decompress=False)
    health = Health(mms_url, s, register_query(mdir, s.workers, s.batch_size, s.max_delay_ms))
    front = Front(s, health, session, mms_url)
    await front.start()
    log.info("front listening on :%d (model %s, %s runtime, %d worker(s), %d GPU(s), batches of up to %d within "
             "%d ms, payload limit %g MB)", s.port, mdir, s.runtime, s.workers, gpus, s.batch_size, s.max_delay_ms,
             s.max_bytes / 2**20)

    problem = check_artifact(mdir, s.runtime)
    proc, checker = None, None
    if problem:
        health.fatal = problem
        log.error("not starting the model server: %s (/ping answers 503)", problem)
    else:
        cfg = Path(os.environ.get("BINCOUNTER_MMS_CONFIG", "/tmp/bincounter-mms.properties"))
        cfg.write_text(mms_config(s.mms_port, s.workers, s.max_bytes, int(s.timeout_s)))
        # model store "/" + an absolute model path, as sagemaker-inference itself does
        cmd = ["multi-model-server", "--start", "--foreground", "--model-store", "/", "--mms-config",
               str(cfg), "--log-config", str(Path(__file__).with_name("log4j2.xml"))]
        proc = subprocess.Popen(cmd, start_new_session=True)
        checker = asyncio.create_task(health.run(session))

    rc = 0
    while True:
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
            log.info("SIGTERM: no new connections; in-flight requests have %g s (BINCOUNTER_DRAIN_S)", s.drain_s)
            break
        except TimeoutError:
            pass
        if proc is not None and proc.poll() is not None:
            log.error("model server exited with code %s", proc.returncode)
            rc = 1
            break
        if health.lost:
            rc = 1
            break
    await front.stop(s.drain_s)
    if checker is not None:
        checker.cancel()
    await session.close()
    if proc is not None:
        await asyncio.to_thread(stop_process_group, proc)
    log.info("stopped (exit code %d)", rc)
    return rc


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    from ..errors import UserError
    from .onnx_runtime import runtime_name

    try:
        runtime = runtime_name()
    except UserError as e:
        log.error("%s", e)
        return 2
    gpus = 0
    if runtime == "torch":
        import torch

        gpus = torch.cuda.device_count()
    try:
        s = settings_from_env(gpus, runtime)
    except ValueError as e:
        log.error("%s", e)
        return 2
    os.environ["SAGEMAKER_MODEL_SERVER_WORKERS"] = str(s.workers)
    return asyncio.run(serve(s, model_dir(), gpus))


if __name__ == "__main__":
    sys.exit(main())
