"""The serving health model: a pure state machine, events in, a state out. No I/O, no clock of its own (every
event carries `now`), so it is tested on sequences of events (tests/test_serving_health.py); the polling and
probing that feed it live in server.py.

Liveness is not load. SageMaker replaces an instance whose /ping fails, so /ping says "this container can still
serve" and nothing else; overload is answered where it happens (the front sheds the excess with a fast 503 +
Retry-After) and never turns /ping red.

States (`ping_ok`: /ping 200; `admits`: /invocations go to the model server)
  STARTING  never answered a test prediction yet (model loading, or it does not load)   ping 503, refused
  READY     the model answers                                                           ping 200, admitted
  BUSY      requests are being shed (the front's limit or MMS's queue is full)          ping 200, admitted
  DEGRADED  fewer live workers than configured: capacity lost, the rest still serves    ping 200, admitted
  DEAD      no worker alive, or no answer to anything for a probe's length               ping 503, refused
  FAILED    a broken artifact (`fatal`), or DEAD for longer than recover_s after serving ping 503; exit
Events
  workers(now, live, expected)  worker processes counted by the poller (None: unknown, e.g. no process table)
  outcome(now, kind, started)   how a request to the model server ended: ok (2xx/4xx) | model_error (a 5xx:
                                neither life nor death; only a probe tells) | queue_full | shed | timeout |
                                worker_died | unreachable;
                                the last three make it probe unless something answered since `started`
  probe(now, started, ok, why)  a test prediction; a failure counts only if nothing answered since `started`
                                (a probe queued behind real traffic that is being answered proves nothing)
  fatal(why)
Queries: `state(now)` -> (State, reason), `wants_probe(now)`, `exit_reason(now)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

OK, MODEL_ERROR, QUEUE_FULL, SHED, TIMEOUT, WORKER_DIED, UNREACHABLE = (
    "ok", "model_error", "queue_full", "shed", "timeout", "worker_died", "unreachable")
OUTCOMES = (OK, MODEL_ERROR, QUEUE_FULL, SHED, TIMEOUT, WORKER_DIED, UNREACHABLE)
ALIVE = (OK,)  # a 2xx/4xx answer: proof of life (a model answering 500 to everything is not alive)
LOAD = (QUEUE_FULL, SHED)  # too much work, not too little life
SUSPECT = (TIMEOUT, WORKER_DIED, UNREACHABLE)  # maybe dead: probe unless something else answered lately


class State(StrEnum):
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    DEGRADED = "degraded"
    DEAD = "dead"
    FAILED = "failed"

    @property
    def ping_ok(self) -> bool:
        return self in (State.READY, State.BUSY, State.DEGRADED)

    admits = ping_ok


@dataclass
class HealthModel:
    stale_s: float = 5.0  # no answer for this long: probe (a worker serving traffic proves itself)
    recover_s: float = 120.0  # DEAD this long after having served: exit so the platform replaces us
    busy_hold_s: float = 2.0  # BUSY lasts this long after the last shed/queue-full event
    served: bool = False  # a test prediction has succeeded once
    verified: bool = False  # ... and nothing since says the model may be gone
    fatal_reason: str | None = None
    dead_since: float | None = None
    dead_reason: str = ""
    last_alive: float = float("-inf")  # last proof of life (an answer, a probe)
    busy_until: float = float("-inf")
    suspect: str | None = None
    live: int | None = None
    expected: int | None = None
    load_reason: str = ""
    counts: dict = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))

    # ----------------------------------------------------------------------------------------- events
    def fatal(self, why: str) -> None:
        self.fatal_reason = why

    def workers(self, now: float, live: int | None, expected: int | None) -> None:
        self.live, self.expected = live, expected
        if live == 0:
            self._dead(now, "no model server worker is alive")
            self.verified = False

    def outcome(self, now: float, kind: str, started: float | None = None) -> None:
        """`started`: when the request was sent; a timeout or a dropped request is suspicious only if nothing
        answered since then (without it: within stale_s)."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind in ALIVE:
            self._alive(now)
        elif kind in LOAD:
            self.busy_until = now + self.busy_hold_s
            self.load_reason = ("requests over the front's in-flight limit are shed" if kind == SHED
                                else "the model server's queue is full")
        elif kind in SUSPECT and self.last_alive < (started if started is not None else now - self.stale_s):
            self.suspect = kind.replace("_", " ")

    def probe(self, now: float, started: float, ok: bool, why: str = "") -> None:
        if ok:
            self.served = self.verified = True
            self._alive(now)
        elif why == QUEUE_FULL:
            self.outcome(now, QUEUE_FULL)
        elif self.last_alive < started:
            self.verified = False
            self.suspect = None
            self._dead(now, why or "test prediction failed")

    # ---------------------------------------------------------------------------------------- queries
    def state(self, now: float) -> tuple[State, str]:
        if self.fatal_reason:
            return State.FAILED, self.fatal_reason
        if (lost := self.exit_reason(now)) is not None:
            return State.FAILED, lost
        if not self.served:
            return State.STARTING, self.dead_reason or "model server starting"
        if self.dead_since is not None:
            return State.DEAD, self.dead_reason
        if self.live is not None and self.expected and self.live < self.expected:
            return State.DEGRADED, f"{self.live} of {self.expected} model server workers alive"
        if now < self.busy_until:
            return State.BUSY, self.load_reason
        return State.READY, "ok"

    def wants_probe(self, now: float) -> bool:
        if self.fatal_reason or self.live == 0:
            return False
        return not self.verified or self.suspect is not None or now - self.last_alive >= self.stale_s

    def exit_reason(self, now: float) -> str | None:
        """Set once the model has served and then been DEAD for recover_s: `serve` exits 1 on it."""
        if not self.served or self.dead_since is None or now - self.dead_since < self.recover_s:
            return None
        return (f"the model has not answered for {now - self.dead_since:.0f} s (BINCOUNTER_RECOVER_S="
                f"{self.recover_s:g}; last: {self.dead_reason}); exiting so that the platform replaces this container")

    # -------------------------------------------------------------------------------------- internals
    def _alive(self, now: float) -> None:
        self.last_alive = now
        self.suspect = None
        if self.served:
            self.dead_since, self.dead_reason = None, ""

    def _dead(self, now: float, why: str) -> None:
        self.dead_reason = why
        if self.served and self.dead_since is None:
            self.dead_since = now
