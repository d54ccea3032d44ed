"""The alert engine: pure, with a fake clock (every call takes ``now``)."""

from __future__ import annotations

from pimon.alertconfig import NotifierConfig
from pimon.alertformat import Alert, Event, Severity, make_test_alert
from pimon.alerts import AlertEngine, EngineConfig
from pimon.detector import DetectorConfig
from pimon.membership import State, Transition
from pimon.notifiers import Webhook

UP, DOWN, SUSPECT, DEGRADED, LEFT, UNKNOWN = (
    State.UP,
    State.DOWN,
    State.SUSPECT,
    State.DEGRADED,
    State.LEFT,
    State.UNKNOWN,
)


def engine(nodes: int, **kw: float) -> AlertEngine:
    """Return an engine that knows ``nodes`` nodes, pi1..piN, all up at time 0."""
    e = AlertEngine(EngineConfig(**{"window": 6.0, **kw}))  # type: ignore[arg-type]
    assert e.sync({f"pi{i}": UP for i in range(1, nodes + 1)}, 0.0) == []
    return e


def move(
    e: AlertEngine, node: str, old: State, new: State, at: float, *, reason: str = ""
) -> list[Alert]:
    return e.on_transition(Transition(node, old, new, at, reason or f"{new} reason"), at)


def events(alerts: list[Alert]) -> list[tuple[str, str | None]]:
    return [(str(a.event), a.node) for a in alerts]


def test_window_derives_from_the_detector() -> None:
    config = EngineConfig.from_detector(DetectorConfig(interval=0.5, down_pause=5.0))
    assert config.window == 3.0


def test_lone_node_down_alerts_at_once_as_no_partition_can_form() -> None:
    e = engine(1)
    [alert] = move(e, "pi1", UP, DOWN, 10.0, reason="connection refused: agent not running")
    assert alert.event is Event.NODE_DOWN and alert.severity is Severity.CRITICAL
    assert alert.text == "pi1 is down: connection refused: agent not running"
    assert (alert.old, alert.new, alert.at) == ("up", "down", 10.0)


def test_down_alert_waits_one_window_while_a_partition_could_form() -> None:
    e = engine(4)
    assert move(e, "pi1", UP, DOWN, 10.0) == []
    assert e.tick(15.9) == []
    assert events(e.tick(16.0)) == [("node_down", "pi1")]
    assert e.tick(17.0) == []  # once


def test_window_starts_when_the_node_turned_suspect() -> None:
    e = engine(4)
    assert move(e, "pi1", UP, SUSPECT, 10.0) == []
    assert move(e, "pi1", SUSPECT, DOWN, 13.0) == []
    assert events(e.tick(16.0)) == [("node_down", "pi1")]


def test_suspect_that_comes_back_is_no_alert() -> None:
    e = engine(1)
    assert move(e, "pi1", UP, SUSPECT, 10.0) == []
    assert move(e, "pi1", SUSPECT, UP, 11.0) == []
    assert e.tick(100.0) == []


def test_recovery_resolves_the_down_alert() -> None:
    e = engine(1)
    [down] = move(e, "pi1", UP, DOWN, 10.0)
    assert e.firing() == [down]
    [up] = move(e, "pi1", DOWN, UP, 20.0, reason="heartbeat ok")
    assert up.event is Event.NODE_RECOVERED and up.resolves is Event.NODE_DOWN
    assert up.text == "pi1 recovered: up (heartbeat ok)"
    assert up.severity is Severity.INFO and up.filter_severity is Severity.CRITICAL
    assert e.firing() == []


def test_recovery_within_the_hold_cancels_down_and_recovery() -> None:
    e = engine(4)
    move(e, "pi1", UP, DOWN, 10.0)
    assert move(e, "pi1", DOWN, UP, 12.0) == []
    assert e.tick(30.0) == []


def test_alert_after_holds_the_down_alert() -> None:
    e = engine(1, alert_after=30.0)
    assert move(e, "pi1", UP, DOWN, 10.0) == []
    assert e.tick(39.9) == []
    assert events(e.tick(40.0)) == [("node_down", "pi1")]


def test_alert_after_recovery_first_sends_nothing() -> None:
    e = engine(1, alert_after=30.0)
    move(e, "pi1", UP, DOWN, 10.0)
    assert move(e, "pi1", DOWN, UP, 35.0) == []
    assert e.tick(100.0) == []


def test_degraded_alerts_at_once_with_its_problems() -> None:
    e = engine(4)
    [alert] = move(e, "pi1", UP, DEGRADED, 5.0, reason="disk / 95% full; temperature 85.0 C")
    assert alert.event is Event.NODE_DEGRADED and alert.severity is Severity.WARNING
    assert alert.problems == ("disk / 95% full", "temperature 85.0 C")
    assert alert.text == "pi1 is degraded: disk / 95% full; temperature 85.0 C"
    [back] = move(e, "pi1", DEGRADED, UP, 9.0, reason="heartbeat ok")
    assert back.event is Event.NODE_RECOVERED and back.resolves is Event.NODE_DEGRADED


def test_degraded_node_going_down_resolves_degraded() -> None:
    e = engine(1)
    move(e, "pi1", UP, DEGRADED, 5.0, reason="disk / 95% full")
    [down] = move(e, "pi1", DEGRADED, DOWN, 9.0)
    assert down.event is Event.NODE_DOWN and down.resolves is Event.NODE_DEGRADED


def test_leaving_is_node_left_and_the_return_is_silent() -> None:
    e = engine(1)
    [left] = move(e, "pi1", UP, LEFT, 5.0, reason="agent shut down")
    assert left.event is Event.NODE_LEFT and left.text == "pi1 left: agent shut down"
    assert move(e, "pi1", LEFT, UP, 50.0) == []


def test_restart_to_unknown_keeps_what_was_reported() -> None:
    e = engine(1)
    move(e, "pi1", UP, DOWN, 5.0)
    assert move(e, "pi1", DOWN, UNKNOWN, 8.0) == []
    assert events(move(e, "pi1", UNKNOWN, UP, 9.0)) == [("node_recovered", "pi1")]


def flap(e: AlertEngine, node: str, start: float, flips: int, step: float = 1.0) -> list[Alert]:
    out: list[Alert] = []
    state = UP
    for i in range(flips):
        new = DOWN if state is UP else UP
        at = start + i * step
        out += move(e, node, state, new, at)
        out += e.tick(at + step / 2)
        state = new
    return out


def test_flapping_node_is_reported_once_then_silent_until_stable() -> None:
    e = engine(1, flap_count=5, flap_window=600.0)
    alerts = flap(e, "pi1", 0.0, 6)
    assert [a.event for a in alerts] == [
        Event.NODE_DOWN,
        Event.NODE_RECOVERED,
        Event.NODE_DOWN,
        Event.NODE_RECOVERED,
        Event.NODE_DOWN,
        Event.FLAPPING,
    ]
    flapping = alerts[-1]
    # It flipped back up: the open down alert ends, the flapping one stands for both.
    assert flapping.resolves is Event.NODE_DOWN and flapping.severity is Severity.WARNING
    assert flapping.text.startswith("pi1 is flapping: 6 up/down changes in 10 min")
    # Still flipping: silent. The last flip (to up) is at 6 + 9 = 15.
    assert flap(e, "pi1", 6.0, 10) == []
    assert e.tick(15.0 + 599.0) == []
    [stable] = e.tick(15.0 + 600.0)
    assert stable.event is Event.NODE_RECOVERED and stable.resolves is Event.FLAPPING
    assert stable.text.startswith("pi1 is stable again: up")


def test_flapping_resolves_an_open_down_alert() -> None:
    e = engine(1, flap_count=2, flap_window=600.0)
    alerts = flap(e, "pi1", 0.0, 3)  # down, up, down: the third flip is one too many
    assert [a.event for a in alerts] == [Event.NODE_DOWN, Event.NODE_RECOVERED, Event.FLAPPING]
    assert e.firing() == [alerts[-1]]


def test_flips_older_than_the_window_do_not_count() -> None:
    e = engine(1, flap_count=5, flap_window=60.0)
    alerts = flap(e, "pi1", 0.0, 12, step=61.0)
    assert Event.FLAPPING not in [a.event for a in alerts]
    assert len(alerts) == 12


def test_partition_sends_one_isolation_alert_and_holds_node_alerts() -> None:
    e = engine(8)
    out = []
    for i in range(1, 8):
        out += move(e, f"pi{i}", UP, DOWN, 10.0 + i * 0.3)
    assert out == [] and e.isolating  # isolated since the 4th of 8; the alert waits
    assert e.tick(16.2) == []
    # One window after the first loss: one alert that counts every node lost together.
    [isolated] = e.tick(16.3)
    assert isolated.event is Event.MONITOR_ISOLATED and isolated.severity is Severity.CRITICAL
    assert isolated.node is None and (isolated.lost, isolated.total) == (7, 8)
    assert isolated.text == "monitor isolated: lost contact with 7 of 8 nodes"
    for now in range(17, 100, 5):
        assert e.tick(float(now)) == []
    assert e.firing() == [isolated]


def test_suspect_nodes_count_as_lost() -> None:
    e = engine(8)
    for i in range(1, 4):
        move(e, f"pi{i}", UP, SUSPECT, 10.0)
    assert move(e, "pi4", UP, SUSPECT, 10.5) == []
    [isolated] = e.tick(16.0)
    assert isolated.text == "monitor isolated: lost contact with 4 of 8 nodes"


def test_contact_back_within_the_window_sends_nothing_for_the_partition() -> None:
    e = engine(4)
    move(e, "pi1", UP, DOWN, 10.0)
    move(e, "pi2", UP, DOWN, 10.0)
    assert e.isolating
    assert move(e, "pi1", DOWN, UP, 12.0) == []  # 1 of 4 lost: over, and nothing was sent
    assert not e.isolating
    # pi2 gets a window and the time a pushing agent may back off for to come back.
    assert e.tick(47.9) == []
    assert events(e.tick(48.0)) == [("node_down", "pi2")]


def test_isolation_ends_with_one_recovery_and_then_alerts_for_the_still_down() -> None:
    e = engine(5)
    out = []
    for i in range(1, 5):
        out += move(e, f"pi{i}", UP, DOWN, 10.0)
    assert out == []
    assert events(e.tick(16.0)) == [("monitor_isolated", None)]
    assert move(e, "pi1", DOWN, UP, 50.0) == []  # 3 of 5 still lost: still isolated
    [recovered] = move(e, "pi2", DOWN, UP, 51.0)
    assert recovered.event is Event.MONITOR_RECOVERED
    assert recovered.resolves is Event.MONITOR_ISOLATED
    assert recovered.text == "monitor recovered: in contact with 3 of 5 nodes"
    assert e.tick(86.9) == []  # the still-down get a window and 30 s to come back
    assert move(e, "pi3", DOWN, UP, 80.0) == []
    assert events(e.tick(87.0)) == [("node_down", "pi4")]


def test_node_down_before_isolation_and_back_during_it_recovers_after() -> None:
    e = engine(4)
    move(e, "pi1", UP, DOWN, 0.0)
    assert events(e.tick(6.0)) == [("node_down", "pi1")]
    assert move(e, "pi2", UP, DOWN, 20.0) + move(e, "pi3", UP, DOWN, 20.0) == []
    assert move(e, "pi1", DOWN, UP, 25.0) == []  # held while isolated
    assert events(e.tick(26.0)) == [("monitor_isolated", None)]
    out = move(e, "pi2", DOWN, UP, 30.0)
    assert events(out) == [("monitor_recovered", None), ("node_recovered", "pi1")]


def test_losses_further_apart_than_the_window_are_separate_alerts() -> None:
    e = engine(3)
    move(e, "pi1", UP, DOWN, 10.0)
    assert events(e.tick(16.0)) == [("node_down", "pi1")]
    move(e, "pi2", UP, DOWN, 30.0)
    assert events(e.tick(36.0)) == [("node_down", "pi2")]
    assert e.isolated is None


def test_sync_adds_unseen_nodes_and_forgets_deregistered_ones() -> None:
    e = engine(2)
    move(e, "pi1", UP, DOWN, 10.0)
    assert e.sync({"pi2": UP, "pi3": UP}, 11.0) == []
    assert sorted(e.nodes) == ["pi2", "pi3"]
    assert e.tick(100.0) == []  # pi1's held alert went with it


def test_sync_adopts_a_node_restored_as_left_silently() -> None:
    e = engine(1)
    assert e.sync({"pi1": UP, "pi2": LEFT}, 5.0) == []
    assert move(e, "pi2", LEFT, UP, 9.0) == []


def test_sync_catches_up_on_a_missed_transition() -> None:
    e = engine(1)
    assert events(e.sync({"pi1": DOWN}, 10.0)) == [("node_down", "pi1")]


def wants(alert: Alert, **kw: object) -> bool:
    return Webhook(NotifierConfig("webhook", "w", {"url": "http://x"}, **kw), None).wants(alert)  # type: ignore[arg-type]


def test_filters_by_event_list_and_default_events() -> None:
    e = engine(1)
    [down] = move(e, "pi1", UP, DOWN, 1.0)
    [back] = move(e, "pi1", DOWN, UP, 2.0)
    [left] = move(e, "pi1", UP, LEFT, 3.0)
    assert wants(down) and wants(back)
    assert not wants(left)  # node_left is off unless asked for
    assert wants(left, events=frozenset({Event.NODE_LEFT}))
    assert not wants(down, events=frozenset({Event.NODE_LEFT}))


def test_min_severity_lets_resolutions_of_what_passed_through() -> None:
    e = engine(1)
    [degraded] = move(e, "pi1", UP, DEGRADED, 1.0, reason="disk / 95% full")
    [back] = move(e, "pi1", DEGRADED, UP, 2.0)
    [down] = move(e, "pi1", UP, DOWN, 3.0)
    [up] = move(e, "pi1", DOWN, UP, 4.0)
    critical = {"min_severity": Severity.CRITICAL}
    assert [wants(a, **critical) for a in (degraded, back, down, up)] == [
        False,
        False,
        True,
        True,
    ]
    assert not wants(make_test_alert(1.0, "m"), **critical)


# Restarts: the alerts in force are restored from firing_by_node().


def restored(e: AlertEngine, roster: dict[str, State], now: float, **kw: float) -> AlertEngine:
    """Return a fresh engine restored from what ``e`` had in force, as after a restart."""
    fresh = AlertEngine(EngineConfig(**{"window": 6.0, **kw}))  # type: ignore[arg-type]
    assert fresh.restore(e.firing_by_node(), roster, now) == []
    return fresh


def test_restored_down_alert_is_not_repeated_and_gets_its_recovery() -> None:
    before = engine(1)
    [down] = move(before, "pi1", UP, DOWN, 10.0)
    e = restored(before, {"pi1": UNKNOWN}, 100.0)
    assert e.firing() == [down] and e.firing_by_node() == {"pi1": down}
    assert move(e, "pi1", UNKNOWN, DOWN, 101.0) == []
    assert e.tick(200.0) == []
    [back] = move(e, "pi1", DOWN, UP, 210.0, reason="heartbeat ok")
    assert back.event is Event.NODE_RECOVERED and back.resolves is Event.NODE_DOWN
    assert back.text == "pi1 recovered: up (heartbeat ok)"
    assert e.firing_by_node() == {}


def test_restore_catches_up_with_a_node_already_back() -> None:
    before = engine(2)
    [degraded] = move(before, "pi1", UP, DEGRADED, 5.0, reason="disk / 95% full")
    fresh = AlertEngine(EngineConfig(window=6.0))
    [back] = fresh.restore(before.firing_by_node(), {"pi1": UP, "pi2": UP}, 50.0)
    assert back.event is Event.NODE_RECOVERED and back.resolves is degraded.event


def test_restore_forgets_nodes_no_longer_listed() -> None:
    before = engine(2)
    move(before, "pi1", UP, DEGRADED, 5.0, reason="hot")
    e = restored(before, {"pi2": UNKNOWN}, 50.0)
    assert e.firing_by_node() == {} and sorted(e.nodes) == ["pi2"]


def test_nodes_reported_down_before_a_restart_are_no_partition() -> None:
    before = engine(4)
    for i, at in enumerate((10.0, 30.0, 50.0), 1):  # lost one by one, each reported
        move(before, f"pi{i}", UP, DOWN, at)
        assert events(before.tick(at + 6.0)) == [("node_down", f"pi{i}")]
    e = restored(before, {f"pi{i}": UNKNOWN for i in range(1, 5)}, 100.0)
    out = [a for i in range(1, 4) for a in move(e, f"pi{i}", UNKNOWN, DOWN, 101.0)]
    out += move(e, "pi4", UNKNOWN, UP, 101.0)
    assert out == [] and not e.isolating
    assert e.tick(200.0) == []


def test_a_restored_isolation_ends_only_once_nodes_are_heard_from() -> None:
    before = engine(4)
    for i in range(1, 4):
        move(before, f"pi{i}", UP, DOWN, 10.0)
    [isolated] = before.tick(16.0)
    e = restored(before, {f"pi{i}": UNKNOWN for i in range(1, 5)}, 100.0)
    assert e.isolating and e.firing() == [isolated]
    assert e.tick(200.0) == []  # silent, though no node is lost yet: none was heard from
    assert move(e, "pi1", UNKNOWN, UP, 201.0) + move(e, "pi2", UNKNOWN, UP, 201.0) == []
    assert move(e, "pi3", UNKNOWN, DOWN, 202.0) == []
    [recovered] = move(e, "pi4", UNKNOWN, UP, 203.0)
    assert recovered.event is Event.MONITOR_RECOVERED
    assert recovered.resolves is Event.MONITOR_ISOLATED
    assert recovered.text == "monitor recovered: in contact with 3 of 4 nodes"
    assert e.tick(238.9) == []  # pi3 gets a window and 30 s, as after any isolation
    assert events(e.tick(239.0)) == [("node_down", "pi3")]


def test_a_restored_flapping_node_must_be_stable_for_a_window_from_the_restart() -> None:
    before = engine(1, flap_count=2, flap_window=600.0)
    assert flap(before, "pi1", 0.0, 3)[-1].event is Event.FLAPPING
    e = restored(before, {"pi1": UNKNOWN}, 1000.0, flap_count=2, flap_window=600.0)
    assert move(e, "pi1", UNKNOWN, UP, 1001.0) == []
    assert e.tick(1599.0) == []
    [stable] = e.tick(1600.0)
    assert stable.event is Event.NODE_RECOVERED and stable.resolves is Event.FLAPPING
    assert stable.text.startswith("pi1 is stable again: up")
