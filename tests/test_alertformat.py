"""What an alert says: the versioned payload, severities and the human text lines."""

from __future__ import annotations

from pimon.alertformat import (
    Alert,
    Event,
    Severity,
    flapping_text,
    make_test_alert,
    node_text,
    with_monitor,
)

DEGRADED = Alert(
    Event.NODE_DEGRADED, "pi1", "up", "degraded", "disk / 95% full", 5.0,
    "pi1 is degraded: disk / 95% full", problems=("disk / 95% full",),
)  # fmt: skip


def test_payload_is_versioned_and_round_trips() -> None:
    payload = DEGRADED.payload()
    assert payload["version"] == 1
    assert {"event", "severity", "node", "old", "new", "reason", "at", "text"} <= set(payload)
    assert payload["problems"] == ["disk / 95% full"] and payload["severity"] == "warning"
    assert Alert.from_payload(payload) == DEGRADED


def test_a_resolution_is_filtered_as_what_it_resolves() -> None:
    back = Alert(
        Event.NODE_RECOVERED, "pi1", "down", "up", "ok", 9.0, "x", resolves=Event.NODE_DOWN
    )
    assert back.severity is Severity.INFO and back.filter_severity is Severity.CRITICAL
    assert make_test_alert(1.0, "m").filter_severity is Severity.INFO


def test_with_monitor_stamps_every_alert_and_keeps_its_id() -> None:
    [stamped] = with_monitor([DEGRADED], "watcher")
    assert stamped.monitor == "watcher" and stamped.id == DEGRADED.id


def test_text_lines_read_as_sentences() -> None:
    assert node_text(Event.NODE_DOWN, "pi1", "down", "refused") == "pi1 is down: refused"
    assert node_text(Event.NODE_LEFT, "pi1", "left", "bye") == "pi1 left: bye"
    assert node_text(Event.NODE_RECOVERED, "pi1", "up", "ok") == "pi1 recovered: up (ok)"
    stable = node_text(Event.NODE_RECOVERED, "pi1", "up", "ok", stable=True)
    assert stable == "pi1 is stable again: up (ok)"
    assert flapping_text("pi1", 6, 600.0).startswith("pi1 is flapping: 6 up/down changes in 10 min")
    assert flapping_text("pi1", 6, 90.0).endswith("until it is stable for 90 s")
