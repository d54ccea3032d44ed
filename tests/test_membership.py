"""The membership state machine, driven by a fake clock."""

from __future__ import annotations

from pimon.detector import DetectorConfig
from pimon.membership import Failure, Membership, State
from pimon.wire import Heartbeat


def hb(
    seq: int, *, ok: bool = True, problems: list[str] | None = None, leaving: bool = False
) -> Heartbeat:
    return Heartbeat(
        v=1,
        name="pi",
        id="id-1",
        seq=seq,
        sent_at=1000.0 + seq,
        ok=ok,
        problems=problems or [],
        leaving=leaving,
    )


def cluster(now: float = 1000.0) -> Membership:
    m = Membership(DetectorConfig())
    m.add("pi", mode="pull", source="static", address="127.0.0.1:7071", now=now)
    return m


def run_steady(m: Membership, start: float, seconds: int) -> float:
    t = start
    for i in range(seconds * 10):
        t = start + i / 10
        if i % 10 == 0:
            m.on_heartbeat("pi", hb(i), t)
        assert m.tick(t) == [] or m.nodes["pi"].state is State.UP
    return t


def test_first_heartbeat_moves_unknown_to_up_and_records_transition() -> None:
    m = cluster()
    changes = m.on_heartbeat("pi", hb(1), 1000.5)
    assert [(c.old, c.new, c.reason) for c in changes] == [
        (State.UNKNOWN, State.UP, "heartbeat ok")
    ]
    assert m.nodes["pi"].since == 1000.5
    assert list(m.nodes["pi"].history) == changes


def test_node_that_stops_goes_suspect_then_down_then_back_up() -> None:
    m = cluster()
    t = run_steady(m, 1000.0, 30)
    last = 1000.0 + 29
    moments: dict[State, float] = {}
    while t < last + 20:
        t += 0.1
        for c in m.tick(t):
            moments[c.new] = t - last
    assert 3.0 < moments[State.SUSPECT] < 4.5, moments
    assert 4.0 < moments[State.DOWN] < 5.5, moments
    assert m.nodes["pi"].reason.startswith("no heartbeat for")
    back = m.on_heartbeat("pi", hb(99), t)
    assert [(c.old, c.new) for c in back] == [(State.DOWN, State.UP)]


def test_problems_make_degraded_and_recovery_makes_up() -> None:
    m = cluster()
    m.on_heartbeat("pi", hb(1), 1000.0)
    changes = m.on_heartbeat("pi", hb(2, ok=False, problems=["disk / 93% full"]), 1001.0)
    assert [(c.new, c.reason) for c in changes] == [(State.DEGRADED, "disk / 93% full")]
    assert m.on_heartbeat("pi", hb(3, ok=False, problems=["disk / 94% full"]), 1002.0) == []
    assert m.nodes["pi"].reason == "disk / 94% full"
    assert [c.new for c in m.on_heartbeat("pi", hb(4), 1003.0)] == [State.UP]


def test_refused_convicts_only_when_it_repeats_on_consecutive_polls() -> None:
    m = cluster()
    m.on_heartbeat("pi", hb(1), 1000.0)
    assert m.on_failure("pi", Failure.REFUSED, "connection refused", 1001.0) == []
    assert m.on_failure("pi", Failure.TIMEOUT, "timeout", 1002.0) == []
    assert m.on_failure("pi", Failure.REFUSED, "connection refused", 1003.0) == []
    changes = m.on_failure("pi", Failure.REFUSED, "connection refused", 1004.0)
    assert [(c.new, c.reason) for c in changes] == [(State.DOWN, "connection refused")]


def test_timeouts_alone_never_convict_before_the_detector() -> None:
    m = cluster()
    m.on_heartbeat("pi", hb(1), 1000.0)
    for i in range(1, 3):
        assert m.on_failure("pi", Failure.TIMEOUT, "timeout", 1000.0 + i) == []
        assert all(c.new is not State.DOWN for c in m.tick(1000.0 + i))
    assert m.nodes["pi"].last_error == "timeout"


def test_leaving_heartbeat_is_left_and_later_failures_are_ignored() -> None:
    m = cluster()
    m.on_heartbeat("pi", hb(1), 1000.0)
    assert [c.new for c in m.on_heartbeat("pi", hb(2, leaving=True), 1001.0)] == [State.LEFT]
    for i in range(5):
        assert m.on_failure("pi", Failure.REFUSED, "connection refused", 1002.0 + i) == []
    assert m.tick(1100.0) == []
    assert [c.new for c in m.on_heartbeat("pi", hb(3), 1101.0)] == [State.UP]


def test_never_seen_node_is_down_after_the_down_pause() -> None:
    m = cluster(now=1000.0)
    assert m.tick(1003.0) == []
    m.on_failure("pi", Failure.TIMEOUT, "timeout", 1003.5)
    changes = m.tick(1004.1)
    assert [(c.old, c.new, c.reason) for c in changes] == [(State.UNKNOWN, State.DOWN, "timeout")]


def test_monitor_stall_convicts_nobody() -> None:
    m = cluster()
    t = run_steady(m, 1000.0, 20)
    # The monitor's own loop stalls for 8 s: no ticks, no heartbeats processed.
    assert m.tick(t + 8.0) == []
    m.on_heartbeat("pi", hb(500), t + 8.05)
    assert m.nodes["pi"].state is State.UP


def test_removed_node_is_forgotten() -> None:
    m = cluster()
    assert m.remove("pi") is not None
    assert m.remove("pi") is None
    assert m.tick(2000.0) == []
