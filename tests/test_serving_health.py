"""The health model (serving/health.py) on sequences of events: no I/O, no clock, no sleeps."""

from __future__ import annotations

from bincounter.serving import health as H
from bincounter.serving.health import HealthModel, State


def served(**kw) -> HealthModel:
    m = HealthModel(stale_s=5.0, recover_s=60.0, busy_hold_s=2.0, **kw)
    m.workers(0.0, 2, 2)
    m.probe(1.0, 0.5, True)
    assert m.state(1.0)[0] is State.READY
    return m


def test_starting_until_a_test_prediction_succeeds():
    m = HealthModel()
    assert m.state(0)[0] is State.STARTING and not m.state(0)[0].ping_ok
    m.probe(1, 1, False, "the model does not load: cannot load weights")
    state, reason = m.state(2)
    assert state is State.STARTING and "does not load" in reason
    assert m.exit_reason(1000) is None  # never served: nothing to replace, SageMaker fails the deployment
    m.probe(3, 3, True)
    assert m.state(3) == (State.READY, "ok")


def test_overload_is_busy_and_ping_stays_200():
    """Issue 21, item 1: MMS's 503 "No worker is available" and the front's own shedding made /ping 503."""
    m = served()
    for t in (2.0, 2.1, 2.2):
        m.outcome(t, H.QUEUE_FULL)
        m.outcome(t, H.SHED)
    state, reason = m.state(2.3)
    assert state is State.BUSY and state.ping_ok and state.admits and "shed" in reason
    assert m.suspect is None and not m.wants_probe(2.3)
    m.outcome(3.0, H.OK)
    assert m.state(4.3)[0] is State.READY  # busy_hold_s after the last shed


def test_a_probe_stuck_behind_traffic_that_is_answered_is_not_death():
    m = served()
    m.outcome(12.0, H.OK)  # answered while the probe waited
    m.probe(20.0, started=10.0, ok=False, why="no answer within 20 s")
    assert m.state(20.0)[0] is State.READY


def test_a_timeout_with_nothing_answered_since_is_a_probe_then_death():
    m = served()
    m.outcome(30.0, H.TIMEOUT, started=20.0)
    assert m.wants_probe(30.0) and m.state(30.0)[0] is State.READY  # suspect, not yet dead
    m.probe(31.0, started=30.5, ok=False, why="test prediction failed: Worker died.")
    state, reason = m.state(31.0)
    assert state is State.DEAD and not state.ping_ok and "Worker died" in reason
    assert m.exit_reason(31.0 + 59) is None
    assert "replaces this container" in m.exit_reason(31.0 + 60)
    assert m.state(31.0 + 60)[0] is State.FAILED


def test_a_timeout_while_other_requests_are_answered_is_load():
    m = served()
    m.outcome(25.0, H.OK)
    m.outcome(30.0, H.TIMEOUT, started=20.0)
    assert m.suspect is None and m.state(30.0)[0] is State.READY


def test_a_dead_server_that_answers_again_recovers():
    m = served()
    m.probe(10.0, 10.0, False, "no answer")
    assert m.state(10.0)[0] is State.DEAD
    m.probe(15.0, 15.0, True)
    assert m.state(15.0)[0] is State.READY and m.dead_since is None


def test_losing_one_of_two_workers_is_degraded_not_dead():
    """Issue 21, item 2: the test prediction proves only that *some* worker answers."""
    m = served()
    m.workers(5.0, 1, 2)
    state, reason = m.state(5.0)
    assert state is State.DEGRADED and state.ping_ok and reason == "1 of 2 model server workers alive"
    m.workers(9.0, 2, 2)
    assert m.state(9.0)[0] is State.READY


def test_no_live_worker_is_dead_at_once_and_asks_no_probe():
    """Killing every worker left 21-25 s of /ping 200 while requests hung."""
    m = served()
    m.workers(5.0, 0, 2)
    assert m.state(5.0)[0] is State.DEAD and not m.wants_probe(5.0)
    m.workers(6.0, 2, 2)  # MMS restarted them: alive only once a test prediction says so
    assert m.state(6.0)[0] is State.DEAD and m.wants_probe(6.0)
    m.probe(7.0, 6.5, True)
    assert m.state(7.0)[0] is State.READY


def test_model_errors_do_not_prove_life():
    """Review of issue 21: a model answering 500 to every request (a sticky CUDA error) kept /ping 200."""
    m = served()
    for t in range(2, 40):
        m.outcome(float(t), H.MODEL_ERROR, started=t - 0.1)
    assert m.wants_probe(40.0)  # nothing 2xx/4xx for stale_s: probe
    m.probe(41.0, 40.0, False, "test prediction failed: internal error during inference")
    assert m.state(41.0)[0] is State.DEAD


def test_fatal_is_failed_and_never_probed():
    m = HealthModel()
    m.fatal("model file missing: model.safetensors")
    assert m.state(0) == (State.FAILED, "model file missing: model.safetensors") and not m.wants_probe(0)
