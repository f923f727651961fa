"""The I/O that feeds the health model (health.py): `Monitor` registers the model with MMS, counts its live
worker processes (`count_workers`: MMS's own management API keeps calling a killed worker READY) and runs a real
test prediction on a small generated JPEG when the model asks for one; it logs every state change, a metric line
when the live worker count changes, and one line per busy episode. server.serve starts it next to the front."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable

import aiohttp

from . import health as H
from .front import MODEL_NAME, contract_error

log = logging.getLogger("bincounter.serving")


def _warmup_image() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (128, 100, 70)).save(buf, format="JPEG")
    return buf.getvalue()



def count_workers(session_id: int, table: list[dict] | None = None) -> int:
    """Live MMS Python workers in the model server's session. MMS's management API keeps calling a killed worker
    READY, so the process table is the witness. MMS 1.1 starts one `model_service_worker.py` per model (its
    parent is the Java frontend), which forks one child per worker with the same command line: a worker is a
    matching process whose parent is not Java (a forked child, or one orphaned when that parent died).
    `table`: [{"pid", "ppid", "sid", "cmdline", "zombie"}] (tests); default: the live process table."""
    if table is None:
        table = _process_table()
    cmd = {p["pid"]: " ".join(p["cmdline"] or []) for p in table}
    return sum(1 for p in table
               if p["sid"] == session_id and not p["zombie"] and "model_service_worker" in cmd[p["pid"]]
               and "java" not in cmd.get(p["ppid"], "").lower())


def _process_table() -> list[dict]:
    import psutil

    rows = []
    for p in psutil.process_iter(["ppid", "cmdline", "status"]):
        try:
            rows.append({"pid": p.pid, "ppid": p.info["ppid"], "sid": os.getsid(p.pid), "cmdline": p.info["cmdline"],
                         "zombie": p.info["status"] == psutil.STATUS_ZOMBIE})
        except (OSError, psutil.Error):
            continue
    return rows


class Monitor:
    """The I/O around the health model: registers the model with MMS, counts its live workers, and runs the
    test prediction (a small generated JPEG) when the model asks for one. Logs every state change and, when the
    live worker count changes, a metric line `#bincounter serving_workers=<live> expected=<n> state=<state>`."""

    def __init__(self, model: H.HealthModel, s, mms_url: str, register_query: str = "",
                 workers: Callable[[], int | None] = lambda: None):
        self.model, self.s, self.mms_url = model, s, mms_url
        self.register_query = register_query  # POST /models?<this> when MMS has no model yet
        self.count_workers = workers
        self.probes = 0
        self._warmup = _warmup_image()
        self._last: tuple | None = None
        self._last_workers: int | None = None
        self._busy: tuple[float, int] | None = None  # (since, shed count before) while BUSY
        self._shed_seen = 0

    async def _call(self, session, method, path, body=None, ctype=None) -> tuple[int, bytes]:
        timeout = aiohttp.ClientTimeout(total=self.s.probe_timeout_s)
        headers = {"Content-Type": ctype} if ctype else {}
        async with session.request(method, self.mms_url + path, data=body, headers=headers, timeout=timeout) as r:
            return r.status, await r.read()

    async def poll_once(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        m = self.model
        statuses = None  # MMS's word on its workers; None: the management API did not answer
        try:
            status, body = await self._call(session, "GET", f"/models/{MODEL_NAME}")
            if status == 404 and self.register_query:
                status, body = await self._call(session, "POST", f"/models?{self.register_query}")
                if status >= 300:
                    m.fatal(f"MMS refused to register the model: {body.decode('utf-8', 'replace')[:300]}")
                    return
                log.info("registered the model with MMS (%s)", self.register_query)
                self.register_query = ""
                return
            if status == 200:
                desc = json.loads(body)
                desc = desc[0] if isinstance(desc, list) and desc else desc
                statuses = [w.get("status") for w in (desc.get("workers") or [])]
            else:
                problem = f"model not registered yet (MMS {status})"
        except TimeoutError:
            problem = f"the management API did not answer within {self.s.probe_timeout_s:g} s"
        except (aiohttp.ClientError, OSError, ValueError, AttributeError) as e:
            problem = f"model server not answering ({type(e).__name__})"
        if statuses is None:
            if not m.served:  # still starting: say why /ping is 503
                return m.probe(loop.time(), loop.time(), False, problem)
            log.debug("health: %s", problem)  # unknown, not dead: a test prediction decides, if one is due
        else:
            live = self.count_workers()
            m.workers(loop.time(), live if live is not None else statuses.count("READY"), self.s.workers)
            if "READY" not in statuses:
                if not m.served:
                    m.probe(loop.time(), loop.time(), False, f"no READY worker (workers: {statuses or 'none'})")
                return
        if m.wants_probe(loop.time()):
            await self._probe(session)

    async def _probe(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        m = self.model
        started = loop.time()
        self.probes += 1
        try:
            status, body = await self._call(session, "POST", f"/predictions/{MODEL_NAME}", self._warmup,
                                            "image/jpeg")
        except TimeoutError:
            why = f"no answer to a test prediction within {self.s.probe_timeout_s:g} s (BINCOUNTER_PROBE_TIMEOUT_S)"
            return m.probe(loop.time(), started, False, why)
        except (aiohttp.ClientError, OSError) as e:
            return m.probe(loop.time(), started, False, f"model server not answering ({type(e).__name__})")
        if status == 200:
            return m.probe(loop.time(), started, True)
        if status == 503:
            return m.probe(loop.time(), started, False, H.QUEUE_FULL)
        msg = json.loads(contract_error(status, body))["error"]
        what = "test prediction failed" if m.served else "the model does not load"
        m.probe(loop.time(), started, False, f"{what}: {msg}")

    def report(self, now: float) -> None:
        state, reason = self.model.state(now)
        if (state, reason) != self._last:
            if state.ping_ok:
                level = logging.INFO if state in (H.State.READY, H.State.BUSY) else logging.WARNING
                log.log(level, "health: %s (%s); /ping is 200", state.value, reason)
            else:
                log.log(logging.ERROR if state is H.State.FAILED else logging.WARNING,
                        "health: %s; /ping is 503: %s", state.value, reason)
            self._last = (state, reason)
        shed = self.model.counts.get(H.SHED, 0) + self.model.counts.get(H.QUEUE_FULL, 0)
        if state is H.State.BUSY and self._busy is None:
            self._busy = (now, self._shed_seen)
        elif state is not H.State.BUSY and self._busy is not None:
            log.info("health: busy for %.1f s; %d requests shed with a 503 + Retry-After", now - self._busy[0],
                     shed - self._busy[1])
            self._busy = None
        self._shed_seen = shed
        if self.model.live is not None and self.model.live != self._last_workers:
            log.info("#bincounter serving_workers=%d expected=%d state=%s", self.model.live, self.s.workers,
                     state.value)
            self._last_workers = self.model.live

    async def run(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        m = self.model
        while m.fatal_reason is None and m.exit_reason(loop.time()) is None:
            try:
                await self.poll_once(session)
            except Exception:  # noqa: BLE001 - a surprise in MMS's answers must not freeze the health state
                log.exception("health: the monitor's poll failed; polling again")
            self.report(loop.time())
            state, reason = m.state(loop.time())
            if not m.served:
                wait = 10.0 if "does not load" in reason else 0.5
            else:
                wait = 0.5 if state is H.State.DEAD else min(self.s.health_interval_s, 1.0)
            await asyncio.sleep(wait)
        self.report(loop.time())
