"""The front: /ping and /invocations on :8080, an aiohttp low-level server (`web.Server`, public API only) in
front of multi-model-server. Its own job, nothing else (about 420 lines: the five jobs below share one request's
life cycle and its connection state; split, each would reach into the others' state):

* the health gate: /ping is 200 while the health model (health.py) says the container can serve; a request is
  admitted only then, and its outcome (answered, shed, timed out, worker died...) is reported back to it;
* load shedding: at most `max_inflight` requests are with the model server at once; the excess gets a JSON 503
  with `Retry-After` at once (never queued behind the backlog, never a reason to fail /ping);
* the limits: the body is read here (Content-Length or chunked), 413 past SAGEMAKER_MAX_PAYLOAD_IN_MB, 411 for a
  POST with no length; a request must arrive whole (headers and body) within `read_deadline_s` of its first
  byte (slow clients, slowloris), a connection silent for `idle_timeout_s` is closed, and connections are capped
  at `max_connections` (the one over the cap gets a 503 and is closed);
* the error shape: every error the front or MMS gives leaves as JSON {"error": "<one line>", "status": <code>},
  malformed HTTP framing too (a bad request line, header or Content-Length: a 400 from aiohttp's parser,
  through `_JsonErrors.handle_error`, then closed; a body whose chunking breaks midway is cut off at the read
  deadline);
* drain: `stop(drain_s)` refuses new connections, lets running requests (uploads included) finish for drain_s,
  serving those that arrive on open connections meanwhile (then closing them), answers any still running with a
  JSON 503, and returns within drain_s plus a second.

A request is sent to the model server once: only a connection that could not be opened (nothing sent) is
retried, so a slow request never runs twice; an answer later than `timeout_s` is a 504.

Connections: `web.Server` manages aiohttp's connection handlers (`web.RequestHandler`, exported by aiohttp.web
and built here with the keyword arguments `web.Server` documents; only its public `handle_error` hook is
overridden, and no private attribute is read: the one place an aiohttp upgrade could bite). Each is wrapped in
`_Conn`, a plain asyncio.Protocol that forwards every call and notes the time of the last byte and of a
request's first byte (the sweeper's deadlines), or refused over the cap.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from http import HTTPStatus

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from . import health as H
from .protocol import RequestError, check_accept, error_body, precheck

log = logging.getLogger("bincounter.serving")
MODEL_NAME = "model"


@dataclass
class Limits:
    max_bytes: int = 6 * 2**20
    timeout_s: float = 60.0  # one request to the model server (SAGEMAKER_MODEL_SERVER_TIMEOUT)
    max_inflight: int = 16  # requests with the model server at once; more are shed with a 503
    read_deadline_s: float = 60.0  # headers + body of one request, from its first byte
    idle_timeout_s: float = 120.0
    max_connections: int = 1000
    retry_after_s: int = 1


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


def outcome_of(status: int, body: bytes) -> str:
    """What an answer of the model server says about its health (health.OUTCOMES)."""
    if status < 500:
        return H.OK
    if status == 503:
        return H.QUEUE_FULL  # MMS: "No worker is available" / job queue full
    text = body[:300].decode("utf-8", "replace").lower()
    return H.WORKER_DIED if "worker died" in text else H.MODEL_ERROR


HTTP_LOG = logging.getLogger("bincounter.serving.http")  # aiohttp's own messages


class _JsonErrors(web.RequestHandler):
    """aiohttp's public connection handler (`aiohttp.web.RequestHandler`) with its one public error hook,
    `handle_error`, answering in the contract's JSON shape: what aiohttp's HTTP parser refuses (a negative
    Content-Length, broken chunking) and any error outside our handler. Nothing else is overridden and no private
    attribute is read; tests/test_serving_front.py fails if aiohttp stops calling the hook."""

    def handle_error(self, request, status: int = 500, exc=None, message=None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            log.error("error after the response started (status %d); closing the connection", status, exc_info=exc)
            raise ConnectionError("response already started; cannot send the error")
        if status >= 500:
            log.error("error in the front", exc_info=exc)
            message = "internal error in the front (see the endpoint log)"
        else:
            first = (str(message or exc or HTTPStatus(status).phrase).strip().splitlines() or ["bad request"])[0]
            log.info("refused a malformed request: %s", first)
            message = first
        resp = web.Response(status=status, body=error_body(status, str(message)[:300]), content_type="application/json")
        resp.force_close()
        return resp


class _Conn(asyncio.Protocol):
    """One client connection: aiohttp's protocol does the HTTP; this wrapper forwards every asyncio callback to it
    and keeps the times the front's sweeper needs (last byte; first byte of the request being read)."""

    def __init__(self, front: Front, inner: asyncio.Protocol):
        self.front, self.inner = front, inner
        self.transport: asyncio.Transport | None = None
        self.last_activity = self.request_start = None
        self.reading = False  # between a request's first byte and the end of its body
        self.working = False  # the model server works for this connection: never idle

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.last_activity = asyncio.get_running_loop().time()
        self.front.conns[transport] = self
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        now = asyncio.get_running_loop().time()
        self.last_activity = now
        if not self.reading and not self.working:
            self.reading, self.request_start = True, now
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def connection_lost(self, exc) -> None:
        self.front.conns.pop(self.transport, None)
        self.front.nconn -= 1
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _Refuse(asyncio.Protocol):
    """A connection over max_connections: one 503, then closed; aiohttp never sees it."""

    def __init__(self, limit: int):
        self.limit = limit

    def connection_made(self, transport) -> None:
        body = error_body(503, f"too many connections (BINCOUNTER_MAX_CONNECTIONS={self.limit})")
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        transport.close()


class Front:
    """/ping and /invocations; everything the model computes comes from the model server at `mms_url`.
    `health` is the pure health model; `now()` is the loop's clock."""

    def __init__(self, limits: Limits, health: H.HealthModel, session: aiohttp.ClientSession, mms_url: str):
        self.limits, self.health, self.session, self.mms_url = limits, health, session, mms_url
        self.inflight = 0  # requests with the model server (the shedding limit)
        self.active = 0  # /invocations handlers running, uploads included (what the drain waits for)
        self.nconn = 0  # connections accepted and not yet lost (counted at accept: the cap holds in a burst)
        self.draining = False
        self.conns: dict[asyncio.BaseTransport, _Conn] = {}
        self._refused: dict[int, tuple[float, int]] = {}  # status -> (last logged, answered since)
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()  # drain time is over: answer what is still running with a 503
        self._server: web.Server | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task | None = None

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    # --------------------------------------------------------------------------------------- lifecycle
    async def start(self, host: str = "0.0.0.0", port: int = 8080) -> int:
        loop = asyncio.get_running_loop()
        self._handler_args = dict(access_log=None, logger=HTTP_LOG, keepalive_timeout=self.limits.idle_timeout_s,
                                  lingering_time=min(10.0, self.limits.idle_timeout_s))
        self._server = web.Server(self.handle, **self._handler_args)
        self._listener = await loop.create_server(self._connection, host, port, backlog=1024, reuse_address=True)
        self._sweeper = asyncio.create_task(self._sweep())
        return self._listener.sockets[0].getsockname()[1]

    def _connection(self) -> asyncio.Protocol:
        if self.draining or self.nconn >= self.limits.max_connections:
            return _Refuse(self.limits.max_connections)
        self.nconn += 1
        return _Conn(self, _JsonErrors(self._server, loop=asyncio.get_running_loop(), **self._handler_args))

    async def _sweep(self) -> None:
        """Close connections silent for idle_timeout_s (idle keep-alive, stalled headers or body) and those whose
        request did not arrive whole within read_deadline_s of its first byte (a slow drip of bytes)."""
        period = min(1.0, self.limits.idle_timeout_s / 4, self.limits.read_deadline_s / 4)
        while True:
            await asyncio.sleep(period)
            now = self.now()
            for conn in list(self.conns.values()):
                if conn.working:
                    continue
                if now - conn.last_activity > self.limits.idle_timeout_s:
                    log.info("closed a connection silent for %.0f s", now - conn.last_activity)
                    conn.transport.close()
                elif conn.reading and now - conn.request_start > self.limits.read_deadline_s:
                    log.info("closed a connection whose request did not arrive within %g s "
                             "(BINCOUNTER_READ_DEADLINE_S)", self.limits.read_deadline_s)
                    conn.transport.close()

    async def stop(self, drain_s: float) -> None:
        """No new connections; in-flight requests finish within drain_s, later ones are answered 503; then every
        connection is closed. Returns within drain_s + ~1 s (aiohttp's own shutdown is only given a short grace:
        it applies its timeout twice)."""
        self.draining = True
        if self._listener is not None:
            self._listener.close()
        try:
            if not self._idle.is_set():
                await asyncio.wait_for(self._idle.wait(), max(drain_s, 0.0))
        except TimeoutError:
            log.warning("drain: %d request(s) still running after %g s (BINCOUNTER_DRAIN_S); answering them 503",
                        self.active, drain_s)
            self._stopping.set()
            try:
                await asyncio.wait_for(self._idle.wait(), 0.5)
            except TimeoutError:
                pass
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            await self._server.shutdown(0.25)
        for conn in list(self.conns.values()):
            conn.transport.close()
        if self._listener is not None:
            await self._listener.wait_closed()

    # ------------------------------------------------------------------------------------------ routes
    @staticmethod
    def _json(status: int, body: bytes, close: bool = False, retry_after: int | None = None) -> web.Response:
        resp = web.Response(status=status, body=body, content_type="application/json")
        if retry_after is not None:
            resp.headers["Retry-After"] = str(retry_after)
        if close:
            resp.force_close()
        return resp

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        conn = self.conns.get(request.transport)
        try:
            if request.path == "/invocations" and request.method == "POST":
                self.active += 1
                self._idle.clear()
                try:
                    resp = await self.invocations(request, conn)
                finally:
                    self.active -= 1
                    if self.active == 0:
                        self._idle.set()
            elif request.path == "/ping" and request.method in ("GET", "HEAD"):
                resp = self.ping()
            else:
                use = "GET /ping or POST /invocations"
                resp = self._json(404, error_body(404, f"no such path {request.method} {request.path}; use {use}"))
        except ConnectionError as e:
            log.info("a client left before its request was read (%s)", e)
            resp = self._json(400, error_body(400, "request body incomplete"), close=True)
        except HttpProcessingError as e:  # a malformed chunked body, ...
            resp = self._json(400, error_body(400, f"malformed request body: {e.message}"), close=True)
        finally:
            if conn is not None:
                conn.reading = False
        if resp.status >= 400 and request.path != "/ping":
            self._note(resp.status, resp.body)
        if self.draining:
            resp.force_close()
        return resp

    def _note(self, status: int, body) -> None:
        """One INFO line per error status per 10 s, with how many more were answered meanwhile: refusals and
        shedding are visible in the log without one line per request under a flood."""
        now = self.now()
        last, more = self._refused.get(status, (float("-inf"), 0))
        if now - last < 10.0:
            self._refused[status] = (last, more + 1)
            return
        try:
            message = json.loads(body)["error"]
        except (TypeError, ValueError, KeyError):
            message = ""
        extra = f" (and {more} more {status}s in the {now - last:.0f} s before)" if more else ""
        log.info("answered %d: %s%s", status, message, extra)
        self._refused[status] = (now, 0)

    def ping(self) -> web.Response:
        state, reason = self.health.state(self.now())
        doc = {"status": "healthy" if state.ping_ok else "unhealthy", "state": state.value}
        if reason != "ok":
            doc["reason"] = reason
        return self._json(200 if state.ping_ok else 503, json.dumps(doc).encode())

    async def _read_body(self, request: web.BaseRequest) -> bytes | web.Response:
        limit = self.limits.max_bytes
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

    def _shed(self, close: bool = False) -> web.Response | None:
        """The 503 for a request the model server cannot take now (not ready, or max_inflight reached), else None.
        close: end the connection after it (a body that was not read and may never come: Expect: 100-continue)."""
        state, reason = self.health.state(self.now())
        if not state.admits:
            return self._json(503, error_body(503, f"model not ready: {reason}"), close=close, retry_after=5)
        if self.inflight >= self.limits.max_inflight:
            self.health.outcome(self.now(), H.SHED)
            return self._json(503, error_body(503, f"over capacity: {self.inflight} requests in flight "
                                                   f"(BINCOUNTER_MAX_INFLIGHT); retry later"),
                              close=close, retry_after=self.limits.retry_after_s)
        return None

    async def invocations(self, request: web.BaseRequest, conn: _Conn | None) -> web.Response:
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        if request.content_length is None and not chunked:
            return self._json(411, error_body(411, "POST /invocations needs a Content-Length or a chunked body"),
                              close=True)
        if request.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
            return self._json(415, error_body(415, f"Content-Encoding {request.headers['Content-Encoding']!r} is "
                                                   f"not supported; send the body unencoded"), close=True)
        # before the body: a flood is refused for the price of its headers; a client waiting for "100 Continue"
        # never sends the body, so that connection is closed (aiohttp would read its next request as the body)
        if (shed := self._shed(close="Expect" in request.headers)) is not None:
            return shed
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        if conn is not None:
            conn.reading = False
        try:
            precheck(body, request.headers.get("Content-Type"))
            check_accept(request.headers.get("Accept"))
        except RequestError as e:
            return self._json(e.status, e.body())
        if (shed := self._shed()) is not None:  # again: others were admitted while this body was read
            return shed
        if self._stopping.is_set():
            return self._json(503, error_body(503, "the server is shutting down"), close=True)
        self.inflight += 1
        if conn is not None:
            conn.working = True
        try:
            return await self._forward_or_stop(body, request.headers)
        finally:
            self.inflight -= 1
            if conn is not None:
                conn.working = False
                conn.last_activity = self.now()

    async def _forward_or_stop(self, body: bytes, headers) -> web.Response:
        forward = asyncio.ensure_future(self._forward(body, headers))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({forward, stopping}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            forward.cancel()
            raise
        finally:
            stopping.cancel()
        if forward.done():
            return forward.result()
        forward.cancel()
        return self._json(503, error_body(503, "the server is shutting down; the request was not finished"),
                          close=True)

    async def _forward(self, body: bytes, headers) -> web.Response:
        out = {"Content-Type": headers.get("Content-Type", ""), "Accept": headers.get("Accept", "application/json")}
        timeout = aiohttp.ClientTimeout(total=self.limits.timeout_s)
        h = self.health
        sent = self.now()
        for attempt in (1, 2):
            try:
                async with self.session.post(f"{self.mms_url}/predictions/{MODEL_NAME}", data=body, headers=out,
                                             timeout=timeout) as resp:
                    data = await resp.read()
                    status, reason = resp.status, resp.reason or ""
                break
            except aiohttp.ClientConnectorError as e:
                # the connection could not be opened: nothing was sent, so trying once more cannot run it twice
                if attempt == 2:
                    h.outcome(self.now(), H.UNREACHABLE, sent)
                    return self._json(502, error_body(502, f"model server unreachable ({type(e).__name__})"))
                await asyncio.sleep(0.05)
            except TimeoutError:
                h.outcome(self.now(), H.TIMEOUT, sent)
                return self._json(504, error_body(504, f"the model did not answer within {self.limits.timeout_s:g} "
                                                       f"s (SAGEMAKER_MODEL_SERVER_TIMEOUT)"))
            except (aiohttp.ClientError, OSError) as e:
                # sent (at least partly): never re-sent, the model may be working on it
                h.outcome(self.now(), H.WORKER_DIED, sent)
                return self._json(502, error_body(502, f"the model server dropped the request ({type(e).__name__})"))
        kind = outcome_of(status, data)
        h.outcome(self.now(), kind, sent)
        if status >= 400:
            retry = self.limits.retry_after_s if kind == H.QUEUE_FULL else None
            return self._json(status, contract_error(status, data, reason), retry_after=retry)
        # every answer is JSON (protocol.py); the worker sets no header (inference.JsonTransformer._answer: MMS
        # 1.1 mis-decodes header maps under load), so the content type is the front's to give
        return web.Response(status=status, body=data, content_type="application/json")
