"""Tests for the hand-written Prometheus text exposition."""

from __future__ import annotations

import gc
import math
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pimon import __version__
from pimon.exposition import (
    CONTENT_TYPE,
    Family,
    agent_families,
    escape_help,
    escape_label_value,
    format_value,
    render,
)
from pimon.membership import State
from pimon.monitormetrics import STAT_HELP, monitor_families, render_monitor
from pimon.wire import Heartbeat, Metrics
from tests.interop import require_tool

GOLDEN = Path(__file__).parent / "golden"
NOW = 1796039110.0
# Written independently of pimon.exposition, from the exposition format spec.
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?(e[+-][0-9]+)?")
ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


# --- a small strict parser, independent of render ---------------------------------


@dataclass
class Parsed:
    help: str
    type: str = ""
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)


def parse_value(text: str) -> float:
    special = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}
    if text in special:
        return special[text]
    assert NUMBER.fullmatch(text), f"bad value spelling {text!r}"
    return float(text)


def parse_labels(text: str, pos: int) -> tuple[dict[str, str], int]:
    """Parse ``{k="v",...}`` starting at the ``{``; return labels and the index after ``}``."""
    labels: dict[str, str] = {}
    pos += 1
    while True:
        match = LABEL_NAME.match(text, pos)
        assert match, f"bad label name at {text[pos:]!r}"
        name = match.group()
        assert name not in labels, f"label {name} repeated"
        assert text[match.end() : match.end() + 2] == '="', f'expected =" in {text!r}'
        pos = match.end() + 2
        chars: list[str] = []
        while text[pos] != '"':
            if text[pos] == "\\":
                assert text[pos + 1] in ESCAPES, f"bad escape in {text!r}"
                chars.append(ESCAPES[text[pos + 1]])
                pos += 2
            else:
                chars.append(text[pos])
                pos += 1
        labels[name] = "".join(chars)
        pos += 1
        if text[pos] == "}":
            return labels, pos + 1
        assert text[pos] == ",", f"expected , or }} in {text!r}"
        pos += 1


def unescape_help(text: str) -> str:
    out, pos = [], 0
    while pos < len(text):
        if text[pos] == "\\":
            assert text[pos + 1] in "\\n", f"bad HELP escape in {text!r}"
            out.append("\\" if text[pos + 1] == "\\" else "\n")
            pos += 2
        else:
            out.append(text[pos])
            pos += 1
    return "".join(out)


def parse(text: str) -> dict[str, Parsed]:
    """Parse exposition text strictly: HELP then TYPE once per family, then its samples."""
    assert text.endswith("\n") and not text.endswith("\n\n"), "exactly one trailing newline"
    families: dict[str, Parsed] = {}
    current: tuple[str, Parsed] | None = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[len("# HELP ") :].partition(" ")
            assert METRIC_NAME.fullmatch(name), f"bad metric name {name!r}"
            assert name not in families, f"HELP for {name} twice"
            current = (name, Parsed(unescape_help(help_text)))
            families[name] = current[1]
        elif line.startswith("# TYPE "):
            name, kind = line[len("# TYPE ") :].split(" ")
            assert current is not None and current[0] == name, f"TYPE {name} without its HELP"
            assert not current[1].type and not current[1].samples, f"TYPE {name} misplaced"
            assert kind in {"gauge", "counter", "untyped"}
            current[1].type = kind
        else:
            assert not line.startswith("#") and line, f"unexpected line {line!r}"
            assert current is not None and current[1].type, f"sample before TYPE: {line!r}"
            name_match = METRIC_NAME.match(line)
            assert name_match and name_match.group() == current[0], f"stray sample {line!r}"
            pos = name_match.end()
            labels: dict[str, str] = {}
            if line[pos] == "{":
                labels, pos = parse_labels(line, pos)
            assert line[pos] == " ", f"expected one space before the value in {line!r}"
            current[1].samples.append((labels, parse_value(line[pos + 1 :])))
    return families


def check_well_formed(text: str) -> dict[str, Parsed]:
    """Parse and check the conventions every pimon exposition must keep."""
    families = parse(text)
    for name, family in families.items():
        assert family.help, f"{name} has empty HELP"
        assert (family.type == "counter") == name.endswith("_total"), name
        series = [tuple(labels.items()) for labels, _ in family.samples]
        assert len(series) == len(set(series)), f"duplicate series in {name}"
    return families


def values(families: dict[str, Parsed], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(labels.items()): value for labels, value in families[name].samples}


# --- fixtures -----------------------------------------------------------------------


def fixed_heartbeat() -> Heartbeat:
    metrics = Metrics(
        cpu_percent=12.5,
        load1=0.31,
        load5=0.2,
        load15=0.1,
        mem_percent=40.1,
        mem_total_bytes=8245825536,
        swap_percent=0.0,
        disk_percent=22.0,
        temp_c=48.2,
        throttled=["under-voltage", "throttled", "under-voltage"],
        uptime_s=12345.0,
        net_rx_bytes=1234,
        net_tx_bytes=5678,
        model="Raspberry Pi 4 Model B Rev 1.4",
        disks={"/srv/data": 95.25, "/boot/firmware": 18.0},
    )
    return Heartbeat(
        v=1,
        name="pi-01",
        id="7b0c5e2a-0d3f-4c3e-9a43-5d8f0a1c2b3d",
        seq=812,
        sent_at=1796039109.01,
        interval=1.0,
        ok=False,
        problems=["under-voltage", "disk /srv/data 95% full"],
        metrics=metrics,
    )


def fixed_views() -> list[dict[str, Any]]:
    up = {
        "name": "pi-01",
        "state": "up",
        "since": 1796030000.0,
        "last_seen": NOW - 0.375,
        "phi": 0.31,
        "rtt_ms": 1.8,
        "clock_offset_s": 0.0042,
        "mode": "pull",
        "source": "10.0.0.11:7071",
        "ok": True,
        "problems": [],
        "metrics": {
            "cpu_percent": 12.5,
            "load1": 0.31,
            "load5": 0.2,
            "load15": 0.1,
            "mem_percent": 40.1,
            "mem_total_bytes": 8245825536,
            "swap_percent": 0.0,
            "disk_percent": 22.0,
            "temp_c": 48.2,
            "throttled": [],
            "uptime_s": 12345.0,
            "net_rx_bytes": 1234,
            "net_tx_bytes": 5678,
            "model": "Raspberry Pi 4 Model B Rev 1.4",
            "disks": {"/boot/firmware": 18.0},
        },
        "uptime_1h": 1.0,
        "uptime_24h": 0.99875,
        "uptime_7d": 0.9991,
        "uptime_30d": 0.9875,
    }
    never_seen = {
        "name": "pi-02",
        "state": "down",
        "since": 1796039000.0,
        "last_seen": None,
        "phi": None,
        "rtt_ms": None,
        "clock_offset_s": None,
        "mode": "pull",
        "source": "10.0.0.12:7071",
        "ok": True,
        "problems": [],
        "metrics": None,
        "uptime_1h": 0.0,
    }
    degraded = {
        "name": "pi-03",
        "state": "degraded",
        "since": 1796039050.5,
        "last_seen": NOW - 1.25,
        "phi": 1.7,
        "rtt_ms": None,
        "clock_offset_s": -0.25,
        "mode": "push",
        "source": "10.0.0.13",
        "ok": False,
        "problems": ["under-voltage", "throttled"],
        "metrics": {
            "cpu_percent": 99.5,
            "load1": 4.5,
            "mem_percent": 87.5,
            "disk_percent": 50.0,
            "temp_c": None,
            "throttled": ["under-voltage", "throttled"],
            "model": 'Custom "board"\nrev\\2',
            "disks": {'/media/pi/My "Backup" C:\\data': 97.0},
        },
    }
    return [up, never_seen, degraded]


FIXED_STATS = {
    "pimon_monitor_start_time_seconds": 1796030000.0,
    "pimon_monitor_heartbeats_received_total": 1234,
    "pimon_monitor_polls_total": 5678,
    "pimon_monitor_poll_errors_total": 3,
    "pimon_monitor_transitions_total": 7,
    "pimon_monitor_event_loop_lag_seconds": 0.0021,
    "pimon_monitor_db_write_errors_total": 0,
}


def agent_text() -> str:
    text = render(agent_families(fixed_heartbeat(), scrape_errors=2))
    # The golden file must not change with every release.
    return text.replace(f'version="{__version__}"', 'version="VERSION"')


def monitor_text() -> str:
    return render(monitor_families(fixed_views(), FIXED_STATS, now=NOW))


def synthetic_views(count: int) -> Iterator[dict[str, Any]]:
    states = [s.value for s in State]
    for i in range(count):
        view = dict(fixed_views()[i % 3])
        view["name"] = f"node-{i:05d}"
        view["state"] = states[i % len(states)]
        yield view


# --- golden files ------------------------------------------------------------------


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("PIMON_UPDATE_GOLDEN") == "1":
        path.write_bytes(text.encode())
    assert text == path.read_bytes().decode(), f"regenerate with PIMON_UPDATE_GOLDEN=1: {path}"


def test_agent_output_matches_golden_file() -> None:
    check_golden("agent.prom", agent_text())


def test_monitor_output_matches_golden_file() -> None:
    check_golden("monitor.prom", monitor_text())


@pytest.mark.interop
@pytest.mark.parametrize("golden", ["agent.prom", "monitor.prom"])
def test_promtool_accepts_golden_outputs(golden: str) -> None:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=(GOLDEN / golden).read_bytes(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


# --- format ------------------------------------------------------------------------


def test_content_type_is_text_format_0_0_4() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_label_values_escape_backslash_quote_and_newline() -> None:
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escape_label_value("plain /mnt") == "plain /mnt"
    family = Family("x", "gauge", "h")
    family.add(1, path='C:\\ "x"\n')
    assert render([family]).splitlines()[2] == 'x{path="C:\\\\ \\"x\\"\\n"} 1'


def test_help_escapes_backslash_and_newline_but_not_quotes() -> None:
    assert escape_help('a\\b\n"c"') == 'a\\\\b\\n"c"'
    assert render([Family("x", "gauge", 'two\nlines "q" \\')]).splitlines()[0] == (
        '# HELP x two\\nlines "q" \\\\'
    )


@pytest.mark.parametrize(
    ("value", "spelled"),
    [
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
        (1.0, "1"),
        (-3.0, "-3"),
        (0.0, "0"),
        (7, "7"),
        (True, "1"),
        (False, "0"),
        (0.1, "0.1"),
        (-2.5, "-2.5"),
        (8245825536, "8245825536"),
        (8245825536.0, "8245825536"),
        (2**64 + 1, "18446744073709551617"),
        (1e16, "1e+16"),
        (1.5e-07, "1.5e-07"),
    ],
)
def test_values_are_spelled_as_prometheus_does(value: float, spelled: str) -> None:
    assert format_value(value) == spelled
    family = Family("x", "gauge", "h")
    family.add(value)
    assert render([family]) == f"# HELP x h\n# TYPE x gauge\nx {spelled}\n"


def test_empty_family_still_has_help_and_type() -> None:
    assert (
        render([Family("pimon_x", "untyped", "h")]) == "# HELP pimon_x h\n# TYPE pimon_x untyped\n"
    )


def test_families_render_in_given_order_with_one_trailing_newline() -> None:
    names = ["zeta", "alpha", "mid"]
    text = render(Family(n, "gauge", "h") for n in names)
    assert [line.split()[2] for line in text.splitlines()[::2]] == names
    assert text.endswith("\n") and not text.endswith("\n\n")
    assert render([]) == ""


@pytest.mark.parametrize(
    ("name", "kind"),
    [("1abc", "gauge"), ("a-b", "gauge"), ("", "gauge"), ("ok", "summary"), ("ok", "Gauge")],
)
def test_family_rejects_bad_name_or_type(name: str, kind: str) -> None:
    with pytest.raises(ValueError):
        Family(name, kind, "h")


def test_counters_and_only_counters_end_in_total() -> None:
    with pytest.raises(ValueError, match="_total"):
        Family("pimon_bytes", "counter", "h")
    with pytest.raises(ValueError, match="_total"):
        Family("pimon_bytes_total", "gauge", "h")
    assert Family("ns:pimon_bytes_total", "counter", "h").type == "counter"


@pytest.mark.parametrize("label", ["1a", "a-b", "__reserved", "ünicode", ""])
def test_bad_label_names_are_rejected(label: str) -> None:
    with pytest.raises(ValueError, match="label name"):
        Family("x", "gauge", "h").add(1, **{label: "v"})
    family = Family("x", "gauge", "h")
    family.samples.append(({label: "v"}, 1))  # bypassing add() is caught at render
    with pytest.raises(ValueError, match="label name"):
        render([family])


def test_a_family_name_rendered_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="twice"):
        render([Family("x", "gauge", "h"), Family("x", "gauge", "h")])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(max_size=20), st.floats(allow_nan=True, allow_infinity=True)),
        max_size=8,
        unique_by=lambda pair: pair[0],
    ),
    st.text(max_size=40),
)
def test_parsing_the_output_gives_back_labels_values_and_help(
    samples: list[tuple[str, float]], help_text: str
) -> None:
    family = Family("pimon_roundtrip", "gauge", help_text)
    for index, (label_value, value) in enumerate(samples):
        family.add(value, path=label_value, index=str(index))
    parsed = parse(render([family]))["pimon_roundtrip"]
    assert parsed.help == help_text
    assert len(parsed.samples) == len(samples)
    for (labels, got), (label_value, want) in zip(parsed.samples, samples, strict=True):
        assert labels["path"] == label_value
        assert got == want or (math.isnan(got) and math.isnan(want))


def test_both_golden_outputs_keep_the_exposition_conventions() -> None:
    for text in (agent_text(), monitor_text()):
        check_well_formed(text)


# --- agent families ------------------------------------------------------------------


def test_agent_converts_percentages_to_ratios_and_keeps_units() -> None:
    families = check_well_formed(agent_text())
    assert values(families, "pimon_cpu_usage_ratio") == {(): 0.125}
    assert values(families, "pimon_memory_used_ratio") == {(): 0.401}
    assert values(families, "pimon_memory_total_bytes") == {(): 8245825536}
    assert values(families, "pimon_filesystem_used_ratio") == {
        (("mountpoint", "/"),): 0.22,
        (("mountpoint", "/boot/firmware"),): 0.18,
        (("mountpoint", "/srv/data"),): 0.9525,
    }
    assert families["pimon_network_receive_bytes_total"].type == "counter"
    assert values(families, "pimon_agent_info") == {
        (
            ("name", "pi-01"),
            ("id", "7b0c5e2a-0d3f-4c3e-9a43-5d8f0a1c2b3d"),
            ("model", "Raspberry Pi 4 Model B Rev 1.4"),
            ("version", "VERSION"),
        ): 1
    }


def test_agent_exports_one_sample_per_active_throttle_flag_and_a_problem_count() -> None:
    families = check_well_formed(agent_text())
    assert values(families, "pimon_throttled") == {
        (("flag", "throttled"),): 1,
        (("flag", "under-voltage"),): 1,
    }
    assert values(families, "pimon_problems") == {(): 2}
    assert values(families, "pimon_health_ok") == {(): 0}


def test_agent_omits_missing_figures_but_keeps_their_help_and_type() -> None:
    bare = Heartbeat(v=1, name="bare", id="x", seq=1, sent_at=1.0)
    families = check_well_formed(render(agent_families(bare)))
    for name in ("pimon_temperature_celsius", "pimon_cpu_usage_ratio", "pimon_throttled"):
        assert families[name].samples == [], name
    assert families["pimon_filesystem_used_ratio"].samples == []
    assert (
        values(families, "pimon_agent_info")[
            (("name", "bare"), ("id", "x"), ("model", ""), ("version", __version__))
        ]
        == 1
    )


def test_agent_root_filesystem_comes_from_disk_percent_only_once() -> None:
    metrics = Metrics(disk_percent=10.0, disks={"/": 99.0, "/data": 50.0})
    hb = Heartbeat(v=1, name="a", id="x", seq=1, sent_at=1.0, metrics=metrics)
    families = check_well_formed(render(agent_families(hb)))
    assert values(families, "pimon_filesystem_used_ratio") == {
        (("mountpoint", "/"),): 0.1,
        (("mountpoint", "/data"),): 0.5,
    }


# --- monitor families ----------------------------------------------------------------


@pytest.mark.parametrize("state", list(State))
def test_node_state_is_one_hot_over_all_six_states(state: State) -> None:
    view = {"name": "n1", "state": state.value, "metrics": None}
    families = check_well_formed(render(monitor_families([view], {}, now=NOW)))
    one_hot = values(families, "pimon_node_state")
    assert {key[1][1] for key in one_hot} == {s.value for s in State}
    assert {key[1][1] for key, value in one_hot.items() if value == 1} == {state.value}
    up = state in (State.UP, State.DEGRADED)
    assert values(families, "pimon_node_up") == {(("node", "n1"),): int(up)}


def test_monitor_converts_rtt_and_ages_and_skips_what_is_unknown() -> None:
    families = check_well_formed(monitor_text())
    assert values(families, "pimon_node_rtt_seconds") == {(("node", "pi-01"),): 0.0018}
    assert values(families, "pimon_node_last_seen_age_seconds") == {
        (("node", "pi-01"),): 0.375,
        (("node", "pi-03"),): 1.25,
    }
    # The never-seen node has liveness but no reported figures or health.
    assert values(families, "pimon_node_health_ok") == {
        (("node", "pi-01"),): 1,
        (("node", "pi-03"),): 0,
    }
    assert (("node", "pi-02"),) not in values(families, "pimon_node_cpu_usage_ratio")
    assert values(families, "pimon_node_uptime_ratio")[(("node", "pi-02"), ("window", "1h"))] == 0
    assert values(families, "pimon_node_problems")[(("node", "pi-03"),)] == 2


def test_monitor_keeps_label_values_that_need_escaping_intact() -> None:
    families = check_well_formed(monitor_text())
    assert (
        values(families, "pimon_node_filesystem_used_ratio")[
            (("node", "pi-03"), ("mountpoint", '/media/pi/My "Backup" C:\\data'))
        ]
        == 0.97
    )
    info = values(families, "pimon_node_info")
    assert info[(("node", "pi-03"), ("mode", "push"), ("model", 'Custom "board"\nrev\\2'))] == 1


def test_monitor_self_metrics_cover_every_stat_and_count_nodes() -> None:
    families = check_well_formed(monitor_text())
    assert set(STAT_HELP) <= set(families)
    assert values(families, "pimon_monitor_nodes") == {(): 3}
    assert values(families, "pimon_monitor_polls_total") == {(): 5678}
    assert families["pimon_monitor_alerts_sent_total"].samples == []


def test_monitor_rejects_stats_missing_from_stat_help() -> None:
    with pytest.raises(ValueError, match="pimon_monitor_typo"):
        monitor_families([], {"pimon_monitor_typo": 1}, now=NOW)


def test_a_thousand_nodes_give_well_formed_distinct_series() -> None:
    views = list(synthetic_views(1000))
    families = check_well_formed(render(monitor_families(views, FIXED_STATS, now=NOW)))
    assert len(families["pimon_node_up"].samples) == 1000
    assert len(families["pimon_node_state"].samples) == 6000
    # Views cycle through the fixtures: a third never reported, a third has no rtt.
    assert len(families["pimon_node_cpu_usage_ratio"].samples) == 667
    assert len(families["pimon_node_rtt_seconds"].samples) == 334


@pytest.mark.parametrize("enabled", [True, False])
def test_render_monitor_matches_render_and_restores_the_collector(enabled: bool) -> None:
    views = list(synthetic_views(30))
    expected = render(monitor_families(views, FIXED_STATS, now=NOW))
    was_enabled = gc.isenabled()
    if not enabled:
        gc.disable()
    try:
        assert render_monitor(views, FIXED_STATS, now=NOW) == expected
        assert gc.isenabled() is enabled
    finally:
        if was_enabled:
            gc.enable()


# --- the interop helper --------------------------------------------------------------


def test_require_tool_returns_the_path_of_an_installed_tool() -> None:
    assert Path(require_tool("sh")).name == "sh"


def test_require_tool_fails_for_a_missing_tool_when_interop_is_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PIMON_REQUIRE_INTEROP", "1")
    with pytest.raises(pytest.fail.Exception, match="pimon-no-such-tool"):
        require_tool("pimon-no-such-tool")


def test_require_tool_skips_a_missing_tool_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIMON_REQUIRE_INTEROP", raising=False)
    with pytest.raises(pytest.skip.Exception, match="pimon-no-such-tool"):
        require_tool("pimon-no-such-tool")
