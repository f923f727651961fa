"""The serving front (serving/server.py) in-process against a fake multi-model-server on loopback: HTTP framing
(Content-Length, chunked, 411/413, keep-alive after an error), the request path to MMS (no re-send on a timeout,
MMS's errors in the contract shape), the health gate noticing a dead worker, graceful shutdown, idle clients and
the connection cap. Nothing here measures time: waits are bounded conditions."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

from bincounter.serving import health as H  # noqa: E402
from bincounter.serving import monitor, server  # noqa: E402
from bincounter.serving.front import Front  # noqa: E402

from . import helpers  # noqa: E402
from .helpers import wait_for  # noqa: E402

WARMUP = monitor._warmup_image()
MMS_WORKER_DIED = b'{"code": 500, "type": "InternalServerException", "message": "Worker died."}'


class FakeMMS:
    """The parts of MMS the front uses: the management API (one READY worker) and /predictions/model.
    `mode` decides how predictions are answered; the health gate's test image is told apart from requests."""

    def __init__(self):
        self.mode = "ok"
        self.requests: list[bytes] = []  # bodies of /predictions calls other than the test image
        self.probes = 0
        self.received = threading.Event()
        self.answered: list[bytes] = []  # bodies of the requests answered (not the test image)
        self.mgmt_down = False
        self.live: int | None = None  # live worker processes, as the monitor counts them (None: unknown)
        self.hang = asyncio.Event()  # never set: "dead" requests wait on it

    async def models(self, request):
        if self.mgmt_down:
            return web.Response(status=503, text="management API unavailable")
        return web.json_response([{"modelName": "model", "workers": [{"id": "9000", "status": "READY"}]}])

    async def predict(self, request):
        body = await request.read()
        if body == WARMUP:
            self.probes += 1
        else:
            self.requests.append(body)
            self.received.set()
        if self.mode == "dead":
            await self.hang.wait()
        if body != WARMUP and self.mode == "slow":
            await asyncio.sleep(1.5)
        if body != WARMUP and self.mode == "died":
            return web.Response(status=500, body=MMS_WORKER_DIED, content_type="application/json")
        if body != WARMUP and self.mode == "text":
            return web.Response(status=503, text="Service Unavailable\nqueue full", content_type="text/plain")
        if self.mode == "full":  # MMS's job queue is full: everything, the test image too, gets its 503
            return web.Response(status=503, body=b'{"code": 503, "type": "ServiceUnavailableException", '
                                                 b'"message": "No worker is available to serve request: model"}',
                                content_type="application/json")
        if body != WARMUP:
            self.answered.append(body)
        return web.json_response({"count": 3, "n": len(body)})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get("/models/model", self.models)
        app.router.add_post("/predictions/model", self.predict)
        return app


class Running:
    """A front + fake MMS on an event loop in a background thread."""

    def __init__(self, **settings):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.fake = FakeMMS()
        self.call(self._start(settings))

    def call(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self, settings):
        self.mms_runner = web.AppRunner(self.fake.app(), access_log=None)
        await self.mms_runner.setup()
        site = web.TCPSite(self.mms_runner, "127.0.0.1", 0)
        await site.start()
        mms_port = site._server.sockets[0].getsockname()[1]
        defaults = dict(port=0, mms_port=mms_port, max_bytes=2**20, timeout_s=1.0, health_interval_s=0.2,
                        probe_timeout_s=0.5, recover_s=60.0, idle_timeout_s=60.0)
        self.s = server.Settings(**{**defaults, **settings})
        self.session = aiohttp.ClientSession()
        url = f"http://127.0.0.1:{mms_port}"
        self.model = H.HealthModel(stale_s=self.s.health_interval_s, recover_s=self.s.recover_s)
        self.monitor = monitor.Monitor(self.model, self.s, url, workers=lambda: self.fake.live)
        self.front = Front(self.s.limits(), self.model, self.session, url)
        self.port = await self.front.start("127.0.0.1", 0)
        self.checker = asyncio.create_task(self.monitor.run(self.session))

    async def _stop(self):
        await self.front.stop(0)
        self.checker.cancel()
        self.fake.hang.set()
        await self.session.close()
        await self.mms_runner.cleanup()

    def close(self):
        self.call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def request(self, method, path, body=None, ctype="image/jpeg", timeout=30):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": ctype} if body is not None else {})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def ping(self) -> int:
        return self.request("GET", "/ping")[0]


@pytest.fixture()
def front():
    made = []

    def start(**settings) -> Running:
        run = Running(**settings)
        made.append(run)
        wait_for(lambda: run.ping() == 200, 20, 0.05, "the front's /ping 200")
        return run

    yield start
    for run in made:
        run.close()


def raw_exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    return helpers.raw_exchange("127.0.0.1", port, data, timeout)


def responses(raw: bytes) -> list[tuple[int, dict]]:
    """(status, JSON body) of every HTTP response in a raw byte stream (bodies with Content-Length)."""
    out = []
    while raw.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")):
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        n = int(headers.get("content-length", 0))
        body, raw = rest[:n], rest[n:]
        out.append((int(lines[0].split()[1]), json.loads(body) if body else {}))
    return out


def contract(doc: dict, status: int) -> bool:
    return set(doc) == {"error", "status"} and doc["status"] == status and isinstance(doc["error"], str)


# --------------------------------------------------------------------------------------------- framing
@pytest.mark.parametrize("length", ["-1", "abc", "1, 2"])
def test_a_malformed_content_length_is_400_and_the_body_is_never_read(front, length, caplog):
    """Issue 12, item 3: `Content-Length: -1` once meant "read until the client closes", past the limit. The
    parser's 400 is in the contract's shape too, and logged as one INFO line, not an ERROR with a traceback."""
    run = front()
    head = (f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()
    with caplog.at_level("INFO"):
        raw = raw_exchange(run.port, head + b"\xff" * (2 * 2**20))  # twice the 1 MB limit
    answers = responses(raw)
    assert len(answers) == 1 and answers[0][0] == 400 and contract(answers[0][1], 400), raw[:500]
    assert run.fake.requests == []
    assert not [r for r in caplog.records if r.levelno >= 40], [r.getMessage() for r in caplog.records]
    assert any("refused a malformed request" in r.getMessage() for r in caplog.records)


def test_a_post_without_length_is_411_and_the_connection_closes(front):
    run = front()
    raw = raw_exchange(run.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n\r\n"
                                 b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
    answers = responses(raw)
    assert [s for s, _ in answers] == [411] and contract(answers[0][1], 411), raw[:500]


def _chunked(body: bytes, size: int = 4096) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def test_a_chunked_upload_is_served_within_the_same_limit(front):
    """Issue 12, item 13: chunked bodies were a 400 and their chunks were parsed as the next request."""
    run = front()
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n"
    body = b"\xff\xd8" + b"j" * 100_000
    raw = raw_exchange(run.port, head + b"Connection: close\r\n\r\n" + _chunked(body))
    answers = responses(raw)
    assert [s for s, _ in answers] == [200] and answers[0][1]["n"] == len(body), raw[:500]
    assert run.fake.requests == [body]
    raw = raw_exchange(run.port, head + b"Connection: close\r\n\r\n" + _chunked(b"x" * (2**20 + 1)))
    answers = responses(raw)
    assert [s for s, _ in answers] == [413] and contract(answers[0][1], 413), raw[:500]
    assert len(run.fake.requests) == 1


def test_an_error_answered_before_the_body_does_not_desync_keep_alive(front):
    """Minor item: a 404 answered without reading the body made the body the connection's next request."""
    run = front()
    hidden = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = raw_exchange(run.port, b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                                 b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (len(hidden), hidden))
    answers = responses(raw)
    assert [s for s, _ in answers] in ([404, 200], [404]), raw[:800]  # never a second /ping answer
    assert contract(answers[0][1], 404)


def test_a_body_over_the_limit_is_413_in_the_contract_shape(front):
    run = front()
    status, body = run.request("POST", "/invocations", b"\0" * (2**20 + 10))
    assert status == 413 and contract(json.loads(body), 413)
    assert run.fake.requests == []


# ------------------------------------------------------------------------------------------- MMS path
def test_a_request_mms_does_not_answer_in_time_is_sent_once(front):
    """Issue 12, item 4: a read timeout counted as a stale keep-alive connection and the request ran twice."""
    run = front()
    run.fake.mode = "slow"  # 1.5 s against the front's 1 s
    status, body = run.request("POST", "/invocations", b"\xff\xd8slow")
    time.sleep(2)  # a re-sent request would have reached the fake MMS by now
    assert run.fake.requests == [b"\xff\xd8slow"]
    assert status == 504 and contract(json.loads(body), 504), body


@pytest.mark.parametrize("mode, status, message", [("died", 500, "Worker died."),
                                                   ("text", 503, "Service Unavailable")])
def test_mms_errors_leave_in_the_contract_shape(front, mode, status, message):
    """Issue 12, item 10: MMS's own {"code", "type", "message"} (a dying worker) reached the client."""
    run = front()
    run.fake.mode = mode
    got, body = run.request("POST", "/invocations", b"\xff\xd8x")
    assert got == status and json.loads(body) == {"error": message, "status": status}


def test_a_dead_worker_turns_ping_503_and_is_given_up_after_the_bound(front):
    """Issue 12, item 9: MMS keeps calling a killed worker READY; only a test prediction shows it is gone.
    A failed request makes the front re-run it: /ping goes 503, and after recover_s the front gives up (`lost`,
    which makes `serve` stop MMS and exit 1)."""
    run = front(recover_s=1.0, health_interval_s=30.0)  # no periodic probe: the failed request must trigger it
    probes = run.fake.probes
    run.fake.mode = "dead"
    status, body = run.request("POST", "/invocations", b"\xff\xd8x")
    assert status == 504 and contract(json.loads(body), 504)
    wait_for(lambda: run.ping() == 503, 10, 0.05, "/ping 503")
    assert run.fake.probes > probes
    wait_for(lambda: run.call(_exit_reason(run.model)), 20, 0.1, "the front to give the worker up")
    status, body = run.request("GET", "/ping")
    assert status == 503 and "replaces this container" in json.loads(body)["reason"]
    status, body = run.request("POST", "/invocations", b"\xff\xd8x")
    assert status == 503 and contract(json.loads(body), 503)


def test_an_idle_worker_is_probed_periodically(front):
    run = front(health_interval_s=0.2)
    run.fake.mode = "dead"
    wait_for(lambda: run.ping() == 503, 10, 0.05, "/ping 503 without any request")
    assert run.fake.requests == []
    assert run.call(_exit_reason(run.model)) is None  # recover_s=60: not given up yet


def test_a_worker_that_comes_back_makes_ping_200_again(front):
    run = front(health_interval_s=0.2)
    run.fake.mode = "dead"
    wait_for(lambda: run.ping() == 503, 10, 0.05, "/ping 503")
    run.fake.mode = "ok"
    run.call(_set(run.fake.hang))
    wait_for(lambda: run.ping() == 200, 10, 0.05, "/ping 200 again")
    assert run.model.dead_since is None


async def _set(event):
    event.set()


async def _exit_reason(model):
    return model.exit_reason(asyncio.get_running_loop().time())


# ----------------------------------------------------------------------------------- connections, stop
def test_stop_lets_in_flight_requests_finish_and_refuses_new_ones(front):
    """Issue 12, item 12: on SIGTERM the front kept taking requests while MMS was killed under them. Issue 21,
    item 12: this test once passed with the drain deleted, as its stand-in MMS is never stopped; so stop() must
    not return before the in-flight request has been answered by the model server (serve() stops MMS right
    after it)."""
    run = front(timeout_s=10.0)
    run.fake.mode = "slow"
    result = {}
    t = threading.Thread(target=lambda: result.update(r=run.request("POST", "/invocations", b"\xff\xd8inflight")))
    t.start()
    assert run.fake.received.wait(10)
    run.call(run.front.stop(10.0))
    assert run.fake.answered == [b"\xff\xd8inflight"]  # answered before stop() returned
    t.join(10)
    assert result["r"][0] == 200, result
    with pytest.raises(OSError):
        run.request("GET", "/ping", timeout=5)


def test_a_client_that_sends_nothing_is_disconnected(front):
    """Minor item: idle or slow clients held a thread each, forever."""
    run = front(idle_timeout_s=0.5)
    with socket.create_connection(("127.0.0.1", run.port), timeout=15) as stalled:
        stalled.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")  # headers that never end
        with socket.create_connection(("127.0.0.1", run.port), timeout=15) as idle:
            assert idle.recv(100) == b""  # closed by the server, not by our 15 s timeout
        try:
            assert stalled.recv(100) == b""
        except ConnectionResetError:
            pass


def test_connections_are_capped(front):
    run = front(max_connections=2)
    count = lambda: len(run.front.conns)  # noqa: E731
    wait_for(lambda: count() == 0, 10, 0.05, "the fixture's connections to go")
    a = socket.create_connection(("127.0.0.1", run.port), timeout=10)
    wait_for(lambda: count() == 1, 10, 0.05, "one connection")
    b = socket.create_connection(("127.0.0.1", run.port), timeout=10)
    try:
        wait_for(lambda: count() == 2, 10, 0.05, "two connections")
        raw = raw_exchange(run.port, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        answers = responses(raw)
        assert [s for s, _ in answers] == [503] and "too many connections" in answers[0][1]["error"], raw
    finally:
        a.close()
        b.close()
    wait_for(lambda: run.ping() == 200, 10, 0.05, "a free slot again")


def test_expect_100_continue(front):
    run = front()
    body = b"\xff\xd8" + b"e" * 1000
    with socket.create_connection(("127.0.0.1", run.port), timeout=10) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nExpect: 100-continue\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    assert [s for s, _ in responses(raw)] == [200]


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("BINCOUNTER_RECOVER_S", "30")
    monkeypatch.setenv("BINCOUNTER_MAX_CONNECTIONS", "5")
    s = server.settings_from_env(gpus=0)
    assert (s.recover_s, s.max_connections, s.batch_size, s.workers) == (30.0, 5, 4, 1)
    assert s.limits().max_inflight == 16  # workers x max(batch size, 4) x 4 unless BINCOUNTER_MAX_INFLIGHT
    monkeypatch.setenv("BINCOUNTER_BATCH_SIZE", "1")  # no batching still admits bench/serve.py's concurrency 16
    assert server.settings_from_env(gpus=0).limits().max_inflight == 16
    monkeypatch.setenv("BINCOUNTER_DRAIN_S", "soon")
    with pytest.raises(ValueError, match="BINCOUNTER_DRAIN_S='soon' is not a number"):
        server.settings_from_env(gpus=0)


def test_default_workers_per_runtime(monkeypatch):
    """PyTorch: one worker per GPU, one on CPUs (it uses every core); ONNX Runtime: one single-threaded worker
    per core; SAGEMAKER_MODEL_SERVER_WORKERS wins over both."""
    from bincounter.serving import onnx_runtime
    from bincounter.serving.onnx_runtime import session_threads

    monkeypatch.setattr(onnx_runtime, "available_cpus", lambda: 4)
    monkeypatch.delenv("SAGEMAKER_MODEL_SERVER_WORKERS", raising=False)
    assert [server.settings_from_env(g, r).workers for g, r in [(0, "torch"), (4, "torch"), (0, "onnx")]] == [1, 4, 4]
    assert server.settings_from_env(0, "onnx").runtime == "onnx"
    assert session_threads(4) == 1 and session_threads(1) == 4
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "2")
    assert server.settings_from_env(0, "onnx").workers == 2


def test_cpu_quota_caps_the_onnx_workers(tmp_path, monkeypatch):
    """`docker run --cpus 1.5` on a 4-CPU host: cgroup v2 says "150000 100000" -> 2 CPUs, not 4."""
    from bincounter.serving.onnx_runtime import available_cpus

    monkeypatch.setattr(server.os, "sched_getaffinity", lambda _: {0, 1, 2, 3}, raising=False)
    cpu_max = tmp_path / "cpu.max"
    for text, want in (("150000 100000\n", 2), ("max 100000\n", 4), ("50000 100000", 1), ("garbage", 4)):
        cpu_max.write_text(text)
        assert available_cpus(str(cpu_max)) == want, text
    assert available_cpus(str(tmp_path / "none")) == 4


def test_java_heap_follows_the_container_memory_limit():
    assert "-UseContainerSupport" not in server.JAVA_VMARGS and "MaxRAMPercentage" in server.JAVA_VMARGS


# ------------------------------------------------------------------------ issue 21: load, workers, clients
def test_mms_queue_full_is_shed_with_retry_after_and_ping_stays_200(front, caplog):
    """Issue 21, item 1: MMS's own 503 (job queue full) made the front re-run its test prediction, which waited
    behind the same backlog and failed: /ping 503 and every request refused. Overload is not death: here MMS
    answers 503 to everything, the test prediction too, for many health intervals."""
    run = front(health_interval_s=0.2)
    run.fake.mode = "full"
    probes = run.fake.probes
    pings = []
    for _ in range(5):
        conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=10)
        conn.request("POST", "/invocations", body=b"\xff\xd8x", headers={"Content-Type": "image/jpeg"})
        r = conn.getresponse()
        body = r.read()
        conn.close()
        assert r.status == 503 and contract(json.loads(body), 503) and r.getheader("Retry-After") == "1"
    wait_for(lambda: pings.append(run.ping()) or run.fake.probes >= probes + 3, 20, 0.05,
             "test predictions during the overload")
    assert set(pings) == {200}, pings
    status, body = run.request("GET", "/ping")
    assert status == 200 and json.loads(body)["state"] == "busy", body
    with caplog.at_level("INFO", logger="bincounter.serving"):
        run.fake.mode = "ok"
        status, _ = run.request("POST", "/invocations", b"\xff\xd8y")
        assert status == 200
        assert run.ping() == 200
        wait_for(lambda: any("requests shed with a 503" in r.getMessage() for r in caplog.records), 10, 0.05,
                 "the busy episode's summary in the log")


def test_a_management_api_hiccup_under_traffic_is_not_death(front):
    """Review of issue 21: a failed GET /models counted as a failed test prediction."""
    run = front(health_interval_s=0.2, timeout_s=10.0)
    run.fake.mode = "slow"
    run.fake.mgmt_down = True
    statuses, polls = [], []
    t = threading.Thread(target=lambda: [statuses.append(run.request("POST", "/invocations", b"\xff\xd8x")[0])
                                         for _ in range(2)])  # 1.5 s each: many monitor polls meanwhile
    t.start()
    while t.is_alive():
        polls.append(run.ping())
        time.sleep(0.05)
    assert statuses == [200, 200] and set(polls) == {200}, (statuses, polls)


def test_requests_over_the_inflight_limit_get_a_fast_503_and_the_rest_are_served(front):
    """The front lets at most max_inflight requests reach the model server; the excess is refused at once with
    Retry-After (never queued), the admitted ones are answered, and /ping stays 200 throughout."""
    run = front(max_inflight=2, timeout_s=10.0)
    run.fake.mode = "slow"  # 1.5 s per request: two of them hold both slots
    results = []
    threads = [threading.Thread(target=lambda: results.append(run.request("POST", "/invocations", b"\xff\xd8s")))
               for _ in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: len(run.fake.requests) == 2, 10, 0.02, "two requests in flight")
    conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=10)
    conn.request("POST", "/invocations", body=b"\xff\xd8over", headers={"Content-Type": "image/jpeg"})
    r = conn.getresponse()
    body = json.loads(r.read())
    conn.close()
    assert r.status == 503 and "over capacity" in body["error"] and r.getheader("Retry-After") == "1"
    assert len(results) == 0  # refused while both were still running: not queued behind them
    status, ping = run.request("GET", "/ping")
    assert status == 200 and json.loads(ping)["state"] == "busy"
    for t in threads:
        t.join(20)
    assert [s for s, _ in results] == [200, 200]
    assert b"\xff\xd8over" not in run.fake.requests


def test_over_the_inflight_limit_the_503_comes_before_the_body_is_read(front):
    """Shedding costs the front a request's headers, not its upload: over the limit the 503 is sent without waiting
    for a body that has not arrived (a flood of large uploads is refused as cheaply as small ones)."""
    run = front(max_inflight=1, timeout_s=10.0)
    run.fake.mode = "slow"
    busy = threading.Thread(target=lambda: run.request("POST", "/invocations", b"\xff\xd8s"))
    busy.start()
    wait_for(lambda: len(run.fake.requests) == 1, 10, 0.02, "one request in flight")
    with socket.create_connection(("127.0.0.1", run.port), timeout=10) as s:
        s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                  b"Content-Length: 1000000\r\n\r\n\xff\xd8")  # 2 of 1,000,000 bytes, and no more
        s.settimeout(8.0)  # (the old order waited for the rest of the body until the read deadline, 60 s)
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 503") and b"over capacity" in head and b"Retry-After: 1" in head, head
    # a client that waits for "100 Continue" never sends the body: the 503 ends the connection (Connection: close),
    # so the client's next request goes on a new one instead of being read as this request's body
    with socket.create_connection(("127.0.0.1", run.port), timeout=10) as s:
        s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                  b"Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n")
        s.settimeout(8.0)
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 503") and b"over capacity" in answer, answer
    assert b"connection: close" in answer.lower(), answer
    busy.join(20)


def test_a_lost_worker_is_degraded_capacity_in_ping_and_log(front, caplog):
    """Issue 21, item 2: one dead worker of two halved capacity with nothing said anywhere."""
    run = front(workers=2)
    run.fake.live = 2
    wait_for(lambda: json.loads(run.request("GET", "/ping")[1])["state"] == "ready", 10, 0.05, "both workers")
    with caplog.at_level("INFO", logger="bincounter.serving"):
        run.fake.live = 1
        wait_for(lambda: json.loads(run.request("GET", "/ping")[1])["state"] == "degraded", 10, 0.05, "degraded")
        status, body = run.request("GET", "/ping")
        assert status == 200 and json.loads(body)["reason"] == "1 of 2 model server workers alive"
        assert run.request("POST", "/invocations", b"\xff\xd8x")[0] == 200  # the other one still serves
        wait_for(lambda: any("serving_workers=1 expected=2" in r.getMessage() for r in caplog.records), 10, 0.05,
                 "the metric line")
        run.fake.live = 0
        wait_for(lambda: run.ping() == 503, 10, 0.05, "/ping 503 with no live worker")
        status, body = run.request("POST", "/invocations", b"\xff\xd8x")
        assert status == 503 and "no model server worker is alive" in json.loads(body)["error"]
        run.fake.live = 2
        wait_for(lambda: run.ping() == 200, 10, 0.05, "/ping 200 once the workers are back and answer")


def test_a_slow_drip_of_bytes_is_cut_at_the_read_deadline(front, caplog):
    """Issue 21, item 9: every byte reset the idle timer, so one byte per 0.5 s held a connection forever."""
    run = front(read_deadline_s=1.0, idle_timeout_s=60.0, max_connections=3)
    with caplog.at_level("INFO", logger="bincounter.serving"):
        sock = socket.create_connection(("127.0.0.1", run.port), timeout=10)
        closed = False
        head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n"
        try:
            for i in range(200):  # a byte every 0.05 s: 10 s of drip, ten times the deadline
                sock.sendall(head[i:i + 1] if i < len(head) else b"x")
                time.sleep(0.05)
        except OSError:
            closed = True
        finally:
            sock.close()
    assert closed, "the dripping client was never cut off"
    assert any("did not arrive within" in r.getMessage() for r in caplog.records)
    assert run.ping() == 200


def test_a_client_that_leaves_mid_upload_is_one_info_line(front, caplog):
    run = front()
    with caplog.at_level("INFO"):
        with socket.create_connection(("127.0.0.1", run.port), timeout=10) as sock:
            sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                         b"Content-Length: 100000\r\n\r\n" + b"x" * 1000)
            wait_for(lambda: run.front.conns and any(c.reading for c in run.front.conns.values()), 10, 0.02,
                     "the upload to start")
        wait_for(lambda: any("left before its request was read" in r.getMessage() for r in caplog.records), 10,
                 0.05, "the INFO line")
    assert not [r for r in caplog.records if r.levelno >= 30], [r.getMessage() for r in caplog.records]
    assert run.fake.requests == []


def test_a_request_still_running_when_the_drain_ends_gets_a_json_503(front):
    """Issue 21, item 10: aiohttp's shutdown applied its timeout twice and cut requests off with a bare
    disconnect. After drain_s the request is answered 503 in the contract's shape and stop() returns."""
    run = front(timeout_s=30.0)
    run.fake.mode = "dead"  # never answers
    result = {}
    t = threading.Thread(target=lambda: result.update(r=run.request("POST", "/invocations", b"\xff\xd8stuck")))
    t.start()
    assert run.fake.received.wait(10)
    run.call(run.front.stop(0.3), timeout=5)  # well before the 30 s request timeout
    t.join(10)
    status, body = result["r"]
    assert status == 503 and contract(json.loads(body), 503) and "shutting down" in json.loads(body)["error"]


@pytest.mark.parametrize("headers, status", [({"Content-Encoding": "gzip"}, 415), ({"Accept": "text/csv"}, 406)])
def test_encodings_and_answers_the_front_cannot_honour(front, headers, status, caplog):
    """Issue 21, item 8b: `Content-Encoding: gzip` on a body that is not gzip was "internal error in the front";
    issue 26, item 10: `Accept: text/csv` got JSON 200."""
    run = front()
    conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=10)
    with caplog.at_level("INFO", logger="bincounter.serving"):
        conn.request("POST", "/invocations", body=b"\xff\xd8 not gzip",
                     headers={"Content-Type": "image/jpeg", **headers})
        r = conn.getresponse()
    body = json.loads(r.read())
    conn.close()
    assert r.status == status and contract(body, status), body
    assert run.fake.requests == []
    assert run.ping() == 200
    assert any(f"answered {status}: " in r.getMessage() for r in caplog.records)  # refusals show in the log


def test_count_workers_counts_the_forked_workers_not_their_parent():
    """Review of issue 21: MMS 1.1 runs one model_service_worker.py per model (child of Java) that forks one child
    per worker with the same command line; counting every match said N+1."""
    java = {"pid": 10, "ppid": 1, "sid": 10, "cmdline": ["java", "com.amazonaws.ml.mms.ModelServer"], "zombie": False}
    msw = ["python", "/venv/lib/mms/model_service_worker.py", "--sock-type", "unix"]
    parent = {"pid": 20, "ppid": 10, "sid": 10, "cmdline": msw, "zombie": False}
    kids = [{"pid": 21 + i, "ppid": 20, "sid": 10, "cmdline": msw, "zombie": False} for i in range(2)]
    other = {"pid": 99, "ppid": 1, "sid": 99, "cmdline": msw, "zombie": False}  # another session
    assert monitor.count_workers(10, [java, parent, *kids, other]) == 2
    assert monitor.count_workers(10, [java, parent, kids[0]]) == 1
    assert monitor.count_workers(10, [java, parent]) == 0
    assert monitor.count_workers(10, [java, parent, kids[0], {**kids[1], "zombie": True}]) == 1
    orphans = [{**k, "ppid": 1} for k in kids]  # the forking parent was killed: its children still serve
    assert monitor.count_workers(10, [java, *orphans]) == 2


def test_the_connection_cap_holds_in_a_burst(front):
    """Review of issue 21: the cap was checked against connections already made, so a burst accepted in one pass
    of the event loop got in whole."""
    run = front(max_connections=2)
    wait_for(lambda: run.front.nconn == 0, 10, 0.05, "the fixture's connections to go")
    blocked, release = threading.Event(), threading.Event()

    def block():
        blocked.set()
        release.wait(10)  # the loop is stuck here while the kernel queues the burst

    run.loop.call_soon_threadsafe(block)
    assert blocked.wait(10)
    socks = [socket.create_connection(("127.0.0.1", run.port), timeout=10) for _ in range(6)]
    release.set()
    try:
        refused = 0
        for sock in socks:
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            data = sock.recv(4096)
            refused += b"too many connections" in data
        assert refused == 4 and run.front.nconn <= 2, (refused, run.front.nconn)
    finally:
        for sock in socks:
            sock.close()


def test_an_upload_under_way_when_the_drain_starts_is_served(front):
    """Review of issue 21: the drain waited only for requests already with the model server, so an upload still
    arriving was cut off with a bare disconnect."""
    run = front(timeout_s=10.0)
    body = b"\xff\xd8" + b"u" * 5000
    sock = socket.create_connection(("127.0.0.1", run.port), timeout=15)
    sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                 % len(body) + body[:100])
    wait_for(lambda: run.front.active == 1, 10, 0.02, "the upload to reach the handler")
    stopped = asyncio.run_coroutine_threadsafe(run.front.stop(5.0), run.loop)
    sock.sendall(body[100:])
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    sock.close()
    stopped.result(15)
    answers = responses(raw)
    assert [s for s, _ in answers] == [200], raw[:300]
    assert run.fake.requests == [body]
