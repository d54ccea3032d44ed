"""The [[alerts]] tables: every bad key or value named with its table, key and line."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from pimon.alertconfig import NotifierConfig, notifier_errors, parse_notifiers
from pimon.alertformat import Event
from pimon.config import ConfigError

CONFIG = """\
[monitor]
interval = 1

[[alerts]]
kind = "webhook"
url = "http://example.internal/hook"

[[alerts]]
kind = "ntfy"
url = "https://ntfy.sh/pimon"
min_severity = "urgent"
"""


def test_bad_value_names_table_index_key_and_line() -> None:
    with pytest.raises(ConfigError) as e:
        parse_notifiers(tomllib.loads(CONFIG), text=CONFIG, path="/etc/pimon/pimon.toml")
    assert str(e.value) == (
        "/etc/pimon/pimon.toml:11: [[alerts]] #2, key min_severity:"
        " must be info, warning or critical (got 'urgent')"
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"kind": "pager"}, "#1, key kind: unknown kind 'pager'; one of webhook, ntfy"),
        ({"url": "http://x"}, "#1, key kind: missing kind"),
        ({"kind": "webhook"}, "#1, key url: kind webhook needs url"),
        ({"kind": "webhook", "url": "ftp://x"}, "key url: must be an http:// or https:// URL"),
        ({"kind": "webhook", "url": "http://x", "token": "t"}, "key token: unknown key for kind"),
        ({"kind": "slack", "url": "http://x", "events": ["down"]}, "unknown event 'down'"),
        ({"kind": "slack", "url": "http://x", "timeout": 0}, "key timeout: must be > 0"),
        ({"kind": "slack", "url": "http://x", "timeout": 301}, "must be at most 300 seconds"),
        ({"kind": "slack", "url": "http://x", "name": "a b"}, "key name: use 1-63"),
        ({"kind": "exec", "command": []}, "key command: must be a command"),
        ({"kind": "exec", "command": ["/no/such/pager"]}, "'/no/such/pager' is not an executable"),
        ({"kind": "webhook", "url": "http://x", "headers": {"a": 1}}, "table of strings"),
        ({"kind": "alertmanager", "url": "http://x", "labels": {"a-b": "c"}}, "bad label name"),
    ],
)
def test_bad_tables_are_config_errors(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_notifiers({"alerts": [table]})
    assert message in str(e.value)
    assert str(e.value).startswith("[[alerts]] #1, key ")


def test_alerts_must_be_an_array_of_tables() -> None:
    with pytest.raises(ConfigError, match=r"alerts must be \[\[alerts\]\] tables"):
        parse_notifiers({"alerts": {"kind": "webhook"}}, path="p.toml")


def test_default_names_are_the_kind_numbered_when_repeated() -> None:
    configs = parse_notifiers(
        {
            "alerts": [
                {"kind": "webhook", "url": "http://a"},
                {"kind": "ntfy", "url": "http://b"},
                {"kind": "webhook", "url": "http://c"},
            ]
        }
    )
    assert [c.name for c in configs] == ["webhook-1", "ntfy", "webhook-2"]
    assert [c.index for c in configs] == [1, 2, 3]


def test_duplicate_names_are_rejected() -> None:
    tables = [{"kind": "slack", "url": "http://a", "name": "x"}] * 2
    with pytest.raises(ConfigError, match="#2, key name: duplicate notifier name 'x'"):
        parse_notifiers({"alerts": tables})


def test_defaults_and_common_keys() -> None:
    [c] = parse_notifiers(
        {
            "alerts": [
                {
                    "kind": "webhook",
                    "url": "https://hooks.example/x/",
                    "events": ["node_down", "node_left"],
                    "min_severity": "warning",
                    "timeout": 2.5,
                }
            ]
        }
    )
    assert c == NotifierConfig(
        "webhook",
        "webhook",
        {"url": "https://hooks.example/x"},
        frozenset({Event.NODE_DOWN, Event.NODE_LEFT}),
        c.min_severity,
        2.5,
        1,
    )
    assert str(c.min_severity) == "warning"


def test_a_missing_key_is_reported_at_its_table() -> None:
    text = "[[alerts]]\nkind = 'slack'\nurl = 'http://a'\n\n[[alerts]]  # pager\nkind = 'ntfy'\n"
    with pytest.raises(ConfigError) as e:
        parse_notifiers(tomllib.loads(text), text=text, path="p.toml")
    assert str(e.value) == "p.toml:5: [[alerts]] #2, key url: kind ntfy needs url"


def test_notifier_errors_names_every_bad_table_as_parse_notifiers_does() -> None:
    text = (
        "[[alerts]]\n"  # 1
        "kind = 'webhook'\n"  # 2
        "url = 'ftp://x'\n"  # 3
        "[[alerts]]\n"  # 4
        "kind = 'slack'\n"  # 5
        "url = 'http://ok'\n"  # 6
        "[[alerts]]\n"  # 7
        "kind = 'ntfy'\n"  # 8
        "url = 'http://ok'\n"  # 9
        "colour = 'red'\n"  # 10
    )
    data = tomllib.loads(text)
    errors = notifier_errors(data, text, "p.toml")
    with pytest.raises(ConfigError) as first:
        parse_notifiers(data, text=text, path="p.toml")
    assert errors[0] == str(first.value)
    assert [e.split(": ", 2)[:2] for e in errors] == [
        ["p.toml:3", "[[alerts]] #1, key url"],
        ["p.toml:10", "[[alerts]] #3, key colour"],
    ]


def test_notifier_errors_checks_names_once_the_tables_are_valid() -> None:
    tables = [{"kind": "slack", "url": "http://a", "name": "x"}] * 2
    assert notifier_errors({"alerts": tables}) == [
        "[[alerts]] #2, key name: duplicate notifier name 'x'"
    ]
    assert notifier_errors({"alerts": tables[:1]}) == []
    assert notifier_errors({}) == []
    assert notifier_errors({"alerts": {"kind": "slack"}}) == []  # the config reports the shape
