"""The ``[[alerts]]`` tables of the config file: the keys of each kind, validated, with lines.

Stdlib only (no aiohttp), so ``pimon config check`` validates the tables as fast
as the rest of the file, with the very messages the monitor gives at start.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pimon import config, parse
from pimon.alertformat import DEFAULT_EVENTS, Event, Severity
from pimon.config import ConfigError, Resolved

DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class NotifierConfig:
    """One validated ``[[alerts]]`` table."""

    kind: str
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    events: frozenset[Event] = DEFAULT_EVENTS
    min_severity: Severity = Severity.INFO
    timeout: float = DEFAULT_TIMEOUT
    index: int = 1  # 1-based position among the [[alerts]] tables


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """The monitor's alerting settings: notifiers, engine tuning and the dead-man's switch."""

    notifiers: Sequence[NotifierConfig] = ()
    alert_after: float = 0.0
    flap_count: int = 5
    flap_window: float = 600.0
    deadline: float = 3600.0
    deadman_url: str | None = None
    deadman_interval: float = 60.0


# Option parsers: each takes the raw TOML value and returns the clean one or raises ValueError.


def _name(raw: Any) -> str:
    if not isinstance(raw, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", raw):
        raise ValueError("use 1-63 of A-Z a-z 0-9 . _ -, starting with a letter or digit")
    return raw


def _string(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("must be a non-empty string")
    return raw.strip()


def _string_table(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise ValueError('must be a table of strings, e.g. { "X-Key" = "value" }')
    return dict(raw)


def _labels(raw: Any) -> dict[str, str]:
    labels = _string_table(raw)
    for key in labels:
        if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", key):
            raise ValueError(f"bad label name {key!r}")
    return labels


def _command(raw: Any) -> tuple[str, ...]:
    # A string is split like a shell would split words, but no shell ever runs it.
    words = shlex.split(raw) if isinstance(raw, str) else raw
    if (
        not isinstance(words, list | tuple)
        or not words
        or not all(isinstance(w, str) and w for w in words)
    ):
        raise ValueError('must be a command as a list of words, e.g. ["/usr/local/bin/page"]')
    if shutil.which(words[0]) is None:
        raise ValueError(f"{words[0]!r} is not an executable file (or not on PATH)")
    return tuple(words)


def _timeout(raw: Any) -> float:
    value = parse.positive(raw)
    if value > MAX_TIMEOUT:
        raise ValueError(f"must be at most {MAX_TIMEOUT:g} seconds")
    return value


def _events(raw: Any) -> frozenset[Event]:
    if not isinstance(raw, list) or not all(isinstance(e, str) for e in raw):
        raise ValueError("must be a list of event names")
    known = [str(e) for e in Event]
    for name in raw:
        if name not in known:
            raise ValueError(f"unknown event {name!r}; known: {', '.join(known)}")
    return frozenset(Event(e) for e in raw)


def _severity(raw: Any) -> Severity:
    if raw not in [str(s) for s in Severity]:
        raise ValueError("must be info, warning or critical")
    return Severity(raw)


Parser = Callable[[Any], Any]
COMMON: dict[str, Parser] = {
    "name": _name,
    "events": _events,
    "min_severity": _severity,
    "timeout": _timeout,
}


@dataclass(frozen=True, slots=True)
class Kind:
    """The keys of one kind of notifier, besides the common ones."""

    options: Mapping[str, Parser]
    required: tuple[str, ...] = ("url",)


# In the order the error messages list them; pimon.notifiers implements each.
KINDS: dict[str, Kind] = {
    "webhook": Kind({"url": parse.url, "headers": _string_table}),
    "ntfy": Kind({"url": parse.url, "token": _string}),
    "slack": Kind({"url": parse.url}),
    "discord": Kind({"url": parse.url}),
    "alertmanager": Kind({"url": parse.url, "labels": _labels, "resend": parse.positive}),
    "exec": Kind({"command": _command}, required=("command",)),
}


def parse_notifiers(
    data: Mapping[str, Any], *, text: str = "", path: str | None = None
) -> list[NotifierConfig]:
    """Validate the ``[[alerts]]`` tables of a parsed config file; raise the first problem."""
    tables = data.get("alerts", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{path or 'config'}: alerts must be [[alerts]] tables")
    out: list[NotifierConfig] = []
    for index, table in enumerate(tables, 1):
        out.append(_parse_table(index, table, text, path))
    kinds = [c.kind for c in out]
    names = [c.name for c in out]
    for i, c in enumerate(out):
        if "name" not in tables[i] and kinds.count(c.kind) > 1:
            # Names key the outbox, so a default must not depend on unrelated tables.
            names[i] = f"{c.kind}-{kinds[: i + 1].count(c.kind)}"
            out[i] = NotifierConfig(
                c.kind, names[i], c.options, c.events, c.min_severity, c.timeout, c.index
            )
    for i, name in enumerate(names):
        if name in names[:i]:
            raise _error(path, text, out[i].index, "name", f"duplicate notifier name {name!r}")
    return out


def notifier_errors(data: Mapping[str, Any], text: str = "", path: str | None = None) -> list[str]:
    """Return the problem of every bad ``[[alerts]]`` table, as ``parse_notifiers`` words it."""
    tables = data.get("alerts", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        return []  # config.check_tables reports the shape
    errors = []
    for index, table in enumerate(tables, 1):
        try:
            _parse_table(index, table, text, path)
        except ConfigError as e:
            errors.append(str(e))
    if not errors:  # names are compared once every table is valid, as at start
        try:
            parse_notifiers(data, text=text, path=path)
        except ConfigError as e:
            errors.append(str(e))
    return errors


def _parse_table(
    index: int, table: Mapping[str, Any], text: str, path: str | None
) -> NotifierConfig:
    kind = table.get("kind")
    if kind not in KINDS:
        got = f"unknown kind {kind!r}" if kind is not None else "missing kind"
        raise _error(path, text, index, "kind", f"{got}; one of {', '.join(KINDS)}")
    schema = KINDS[kind]
    common: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, raw in table.items():
        if key == "kind":
            continue
        parser = COMMON.get(key) or schema.options.get(key)
        if parser is None:
            known = ", ".join(["kind", *COMMON, *schema.options])
            raise _error(path, text, index, key, f"unknown key for kind {kind} (known: {known})")
        try:
            value = parser(raw)
        except (ValueError, TypeError) as e:
            raise _error(path, text, index, key, f"{e} (got {raw!r})") from e
        (common if key in COMMON else options)[key] = value
    for key in schema.required:
        if key not in options:
            raise _error(path, text, index, key, f"kind {kind} needs {key}")
    return NotifierConfig(kind, common.pop("name", kind), options, index=index, **common)


def _error(path: str | None, text: str, index: int, key: str, message: str) -> ConfigError:
    line = _line_in_table(text, index, key)
    where = f"{path}:{line}: " if path and line else f"{path}: " if path else ""
    return ConfigError(f"{where}[[alerts]] #{index}, key {key}: {message}")


def _line_in_table(text: str, index: int, key: str) -> int | None:
    # A key that is missing is reported at the table's [[alerts]] header.
    seen, inside, header = 0, False, None
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(r"\s*\[", line):
            inside = bool(re.match(r"\s*\[\[\s*alerts\s*\]\]", line))
            seen += inside
            if inside and seen == index:
                header = number
            continue
        if inside and seen == index and re.match(rf"\s*{re.escape(key)}\s*=", line):
            return number
    return header


def load_notifiers(config_flag: str | None) -> tuple[list[NotifierConfig], str | None]:
    """Read the config file named by the flag, $PIMON_CONFIG or the default; return its tables."""
    path, explicit = config.config_path(config_flag, os.environ)
    data, text = config.load_file(path, explicit)
    return parse_notifiers(data, text=text, path=path), path


def alert_config(s: Resolved, config_flag: str | None) -> AlertConfig:
    """Return the monitor's alerting settings: resolved ones plus the ``[[alerts]]`` tables."""
    notifiers, _ = load_notifiers(config_flag)
    return AlertConfig(
        notifiers=notifiers,
        alert_after=s.alert_after,
        flap_count=s.flap_count,
        flap_window=s.flap_window,
        deadline=s.alert_deadline,
        deadman_url=s.deadman_url,
        deadman_interval=s.deadman_interval,
    )
