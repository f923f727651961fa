"""What `docker run IMAGE serve` runs: multi-model-server (via sagemaker-inference) behind a small front.

    client --:8080--> front (front.py, aiohttp) --pooled connections, 127.0.0.1:8081--> MMS frontend (Java)
                                                                                  --> Python worker(s): HandlerService

This module: the settings (environment, checked once), the artifact check before MMS starts, MMS's config and
lifecycle (one process group: Java *and* its Python workers, which MMS alone leaves behind), and `serve`, which
starts the front and `monitor.Monitor`, the I/O that feeds the health model (health.py): it registers the model,
counts the live worker processes (MMS's management API keeps calling a killed worker READY) and runs a real test
prediction when the model asks for one (not yet verified, a request failed in a way that may mean death, or
nothing answered for BINCOUNTER_HEALTH_INTERVAL_S: a worker serving traffic proves itself, so a busy server is
never probed).
Overload is not death: requests over the front's in-flight limit get a fast JSON 503 with Retry-After while
/ping stays 200; a lost worker shows as DEGRADED in the log and a metric line; no live worker, or no answer to a
test prediction, makes /ping 503; DEAD for BINCOUNTER_RECOVER_S after having served: MMS is stopped and `serve`
exits 1, so the platform replaces the container. On SIGTERM the front drains (front.Front.stop), then MMS stops.

Environment (SageMaker's usual names first):
  SAGEMAKER_BIND_TO_PORT (8080)           SAGEMAKER_MODEL_SERVER_WORKERS (GPUs, else 1; onnx: CPUs)
  SAGEMAKER_MAX_PAYLOAD_IN_MB (6)         SAGEMAKER_MODEL_SERVER_TIMEOUT (60 s)
  SM_MODEL_DIR / SAGEMAKER_BASE_DIR (/opt/ml/model)
  BINCOUNTER_BATCH_SIZE (8 on a GPU, else 4; 1 = no batching)
  BINCOUNTER_MAX_BATCH_DELAY_MS (1)       dynamic batching, see register_query
  BINCOUNTER_MAX_INFLIGHT (workers x max(batch, 4) x 4)  requests with MMS at once; the excess: 503 + Retry-After
  BINCOUNTER_DRAIN_S (5)                  SIGTERM: how long in-flight requests may still run (then a 503)
  BINCOUNTER_HEALTH_INTERVAL_S (5)        no answer for this long: run a test prediction
  BINCOUNTER_PROBE_TIMEOUT_S (20)         a test prediction slower than this counts as failed
  BINCOUNTER_RECOVER_S (120)              dead for longer than this after having served: exit 1
  BINCOUNTER_READ_DEADLINE_S (60)         one request's headers + body must arrive within this
  BINCOUNTER_IDLE_TIMEOUT_S (120)         BINCOUNTER_MAX_CONNECTIONS (1000)
  BINCOUNTER_MMS_NICE (5)                 MMS and its workers this much below the front (0: same priority)
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
from pathlib import Path

import aiohttp

from . import health as H
from .front import MODEL_NAME, Front, Limits
from .monitor import Monitor, count_workers

log = logging.getLogger("bincounter.serving")


def model_dir() -> Path:
    base = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))
    return Path(os.environ.get("SM_MODEL_DIR", base / "model"))


def check_artifact(path: Path, runtime: str = "torch") -> str | None:
    """A cheap check before MMS starts: config.json is ours (artifact.read_config) and the file the runtime
    loads is usable: for torch, a safetensors header with tensors in it; for onnx, the file served (model.onnx, or
    model.int8.onnx when config.json marks it servable) present, made from these weights and intact
    (onnx_runtime.served_onnx). Returns the problem, or None."""
    import struct

    from ..artifact import WEIGHTS, check_weights, read_config
    from ..errors import UserError
    from .onnx_runtime import served_onnx

    try:
        if runtime == "onnx":
            _, name, why = served_onnx(path)  # model.onnx, or model.int8.onnx when config.json marks it servable
            log.info("ONNX Runtime serves %s/%s (%s)", path, name, why)
            # the session the workers will make: an opset or operator this ONNX Runtime lacks fails here, once
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            ort.InferenceSession(str(path / name), opts, providers=["CPUExecutionProvider"])
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
        check_weights(path)  # the weights config.json describes (weights_sha256), not a swapped file
    except UserError as e:
        return str(e)
    except FileNotFoundError as e:
        return f"model file missing: {e.filename}"
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: any error = unusable
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return f"cannot read the model in {path}: {first}"
    return None


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
    max_inflight: int = 0  # 0: workers x max(batch_size, 4) x 4
    read_deadline_s: float = 60.0

    def limits(self) -> Limits:
        inflight = self.max_inflight or self.workers * max(self.batch_size, 4) * 4
        return Limits(max_bytes=self.max_bytes, timeout_s=self.timeout_s, max_inflight=inflight,
                      read_deadline_s=self.read_deadline_s, idle_timeout_s=self.idle_timeout_s,
                      max_connections=self.max_connections)


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
        max_inflight=_env_number("BINCOUNTER_MAX_INFLIGHT", 0, minimum=0),
        read_deadline_s=_env_number("BINCOUNTER_READ_DEADLINE_S", 60.0, float, minimum=0.1),
    )


def mms_config(mms_port: int, workers: int, max_bytes: int, timeout_s: int, max_inflight: int = 100) -> str:
    """MMS properties: sagemaker-inference's defaults, our handler, loopback-only ports, and no model at
    start-up (its `load_models=ALL` would scan the model store, "/"): the model is registered through the
    management API, the only way to give MMS a batch size (`register_query`). The JVM sizes its heap from the
    container's memory limit (container support is on by default; a quarter of it at most: the model workers,
    not Java, need the memory). The job queue holds twice what the front lets in flight."""
    from sagemaker_inference import model_server

    text = Path(model_server.DEFAULT_MMS_CONFIG_FILE).read_text()
    return text + "\n".join([
        "load_models=",
        f"inference_address=http://127.0.0.1:{mms_port}",
        f"management_address=http://127.0.0.1:{mms_port}",
        f"default_workers_per_model={workers}",
        f"default_response_timeout={timeout_s}",
        f"max_request_size={max_bytes + 65536}",
        # the front sheds load before this queue fills: MMS's own "queue full" 503 is for a misconfiguration
        f"job_queue_size={max(100, 2 * max_inflight)}",
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
    limits = s.limits()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limits.max_inflight + 4),
                                    auto_decompress=False)
    model = H.HealthModel(stale_s=s.health_interval_s, recover_s=s.recover_s)
    front = Front(limits, model, session, mms_url)
    await front.start(port=s.port)
    log.info("front listening on :%d (model %s, %s runtime, %d worker(s), %d GPU(s), batches of up to %d within "
             "%d ms, %d requests in flight at most, payload limit %g MB)", s.port, mdir, s.runtime, s.workers, gpus,
             s.batch_size, s.max_delay_ms, limits.max_inflight, s.max_bytes / 2**20)

    problem = check_artifact(mdir, s.runtime)
    proc, checker = None, None
    if problem:
        model.fatal(problem)
        log.error("not starting the model server: %s (/ping answers 503)", problem)
    else:
        cfg = Path(os.environ.get("BINCOUNTER_MMS_CONFIG", "/tmp/bincounter-mms.properties"))
        cfg.write_text(mms_config(s.mms_port, s.workers, s.max_bytes, int(s.timeout_s), limits.max_inflight))
        # model store "/" + an absolute model path, as sagemaker-inference itself does
        cmd = ["multi-model-server", "--start", "--foreground", "--model-store", "/", "--mms-config",
               str(cfg), "--log-config", str(Path(__file__).with_name("log4j2.xml"))]
        # MMS and its workers one step below the front (nice +BINCOUNTER_MMS_NICE, default 5): under overload the
        # front's event loop, which sheds the excess and answers /ping, is not starved by the model's forward passes
        nice = _env_number("BINCOUNTER_MMS_NICE", 5, minimum=0)
        proc = subprocess.Popen((["nice", "-n", str(nice)] if nice else []) + cmd, start_new_session=True)
        monitor = Monitor(model, s, mms_url, register_query(mdir, s.workers, s.batch_size, s.max_delay_ms),
                          workers=lambda: count_workers(proc.pid))
        checker = asyncio.create_task(monitor.run(session))

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
        if (lost := model.exit_reason(loop.time())) is not None:
            log.error("health: %s", lost)
            rc = 1
            break
    await front.stop(s.drain_s)
    if checker is not None:
        checker.cancel()
    await session.close()
    if proc is not None:
        # short grace: the drain is over, what a worker still computes has been answered 503 already; the whole
        # stop must fit docker stop's 10 s (drain 5 + ~1 + this)
        await asyncio.to_thread(stop_process_group, proc, 1.0)
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
