"""Notifiers: the ``[[alerts]]`` tables of the config file, validated, and how each kind sends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import aiohttp

from pimon import config, parse
from pimon.alerts import (
    DEFAULT_EVENTS,
    SEVERITY,
    Alert,
    AlertConfig,
    Event,
    Severity,
    make_test_alert,
)
from pimon.config import ConfigError, Resolved

DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 300.0
ERROR_BODY_CHARS = 200


class DeliveryError(Exception):
    """A notifier could not deliver; the message says why, for the stats and the log."""


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


def parse_notifiers(
    data: Mapping[str, Any], *, text: str = "", path: str | None = None
) -> list[NotifierConfig]:
    """Validate the ``[[alerts]]`` tables of a parsed config file."""
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


def _parse_table(
    index: int, table: Mapping[str, Any], text: str, path: str | None
) -> NotifierConfig:
    kind = table.get("kind")
    if kind not in KINDS:
        got = f"unknown kind {kind!r}" if kind is not None else "missing kind"
        raise _error(path, text, index, "kind", f"{got}; one of {', '.join(KINDS)}")
    cls = KINDS[kind]
    common: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, raw in table.items():
        if key == "kind":
            continue
        parser = COMMON.get(key) or cls.options.get(key)
        if parser is None:
            known = ", ".join(["kind", *COMMON, *cls.options])
            raise _error(path, text, index, key, f"unknown key for kind {kind} (known: {known})")
        try:
            value = parser(raw)
        except (ValueError, TypeError) as e:
            raise _error(path, text, index, key, f"{e} (got {raw!r})") from e
        (common if key in COMMON else options)[key] = value
    for key in cls.required:
        if key not in options:
            raise _error(path, text, index, key, f"kind {kind} needs {key}")
    return NotifierConfig(kind, common.pop("name", kind), options, index=index, **common)


def _error(path: str | None, text: str, index: int, key: str, message: str) -> ConfigError:
    line = _line_in_table(text, index, key)
    where = f"{path}:{line}: " if path and line else f"{path}: " if path else ""
    return ConfigError(f"{where}[[alerts]] #{index}, key {key}: {message}")


def _line_in_table(text: str, index: int, key: str) -> int | None:
    seen, inside = 0, False
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(r"\s*\[", line):
            inside = bool(re.match(r"\s*\[\[\s*alerts\s*\]\]", line))
            seen += inside
            continue
        if inside and seen == index and re.match(rf"\s*{re.escape(key)}\s*=", line):
            return number
    return None


# The kinds


class Notifier:
    """Send alerts to one destination; subclasses implement ``send``."""

    kind: ClassVar[str]
    options: ClassVar[dict[str, Parser]] = {}
    required: ClassVar[tuple[str, ...]] = ()
    refresh_interval: float | None = None  # re-send alerts in force this often, if set

    def __init__(self, config: NotifierConfig, session: aiohttp.ClientSession | None) -> None:
        self.config = config
        self.session = session

    @property
    def name(self) -> str:
        """Return the notifier's name."""
        return self.config.name

    def wants(self, alert: Alert) -> bool:
        """Return whether this notifier's filters let ``alert`` through."""
        return (
            alert.event in self.config.events
            and alert.filter_severity.rank >= self.config.min_severity.rank
        )

    async def send(self, alert: Alert) -> None:
        """Deliver ``alert`` or raise DeliveryError."""
        raise NotImplementedError

    async def refresh(self, firing: Sequence[Alert], now: float) -> None:
        """Re-send the alerts still in force (only kinds with a ``refresh_interval``)."""

    async def post(self, url: str, *, body: bytes, headers: Mapping[str, str]) -> None:
        """POST ``body``; raise DeliveryError unless the answer is 2xx."""
        assert self.session is not None
        timeout = aiohttp.ClientTimeout(total=self.config.timeout)
        try:
            async with self.session.post(url, data=body, headers=headers, timeout=timeout) as r:
                if r.status >= 300:
                    detail = (await r.text(errors="replace"))[:ERROR_BODY_CHARS].strip()
                    raise DeliveryError(f"HTTP {r.status}" + (f": {detail}" if detail else ""))
        except TimeoutError:
            raise DeliveryError(f"no answer within {self.config.timeout:g}s") from None
        except aiohttp.ClientError as e:
            raise DeliveryError(f"{type(e).__name__}: {e}") from None

    async def post_json(self, url: str, data: Any, headers: Mapping[str, str] = {}) -> None:
        """POST ``data`` as JSON."""
        body = json.dumps(data).encode()
        await self.post(url, body=body, headers={"Content-Type": "application/json", **headers})


class Webhook(Notifier):
    """POST the versioned JSON payload."""

    kind = "webhook"
    options = {"url": parse.url, "headers": _string_table}
    required = ("url",)

    async def send(self, alert: Alert) -> None:
        """POST the payload."""
        await self.post_json(self.config.options["url"], alert.payload(), self.headers)

    @property
    def headers(self) -> dict[str, str]:
        """Return the extra headers configured."""
        return dict(self.config.options.get("headers", {}))


NTFY_PRIORITY = {Severity.CRITICAL: "urgent", Severity.WARNING: "high", Severity.INFO: "default"}
NTFY_TAG = {Severity.CRITICAL: "rotating_light", Severity.WARNING: "warning"}


class Ntfy(Notifier):
    """POST the text to an ntfy topic URL; priority and tags by severity."""

    kind = "ntfy"
    options = {"url": parse.url, "token": _string}
    required = ("url",)

    async def send(self, alert: Alert) -> None:
        """POST the human text with Title, Priority and Tags headers."""
        resolution = alert.event in (Event.NODE_RECOVERED, Event.MONITOR_RECOVERED)
        tag = (
            "white_check_mark" if resolution else NTFY_TAG.get(alert.severity, "information_source")
        )
        headers = {
            "Title": f"pimon: {alert.node or 'monitor'} {alert.event.replace('_', ' ')}",
            "Priority": NTFY_PRIORITY[alert.severity],
            "Tags": f"{tag},{alert.event}",
        }
        if "token" in self.config.options:
            headers["Authorization"] = f"Bearer {self.config.options['token']}"
        await self.post(self.config.options["url"], body=alert.text.encode(), headers=headers)


EMOJI = {
    Severity.CRITICAL: ":red_circle:",
    Severity.WARNING: ":warning:",
    Severity.INFO: ":large_blue_circle:",
}


def _emoji(alert: Alert) -> str:
    if alert.event in (Event.NODE_RECOVERED, Event.MONITOR_RECOVERED):
        return ":white_check_mark:"
    return EMOJI[alert.severity]


class Slack(Notifier):
    """POST to a Slack incoming webhook."""

    kind = "slack"
    options = {"url": parse.url}
    required = ("url",)

    async def send(self, alert: Alert) -> None:
        """POST ``{"text": ...}``, with Slack's control characters escaped."""
        text = alert.text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        await self.post_json(self.config.options["url"], {"text": f"{_emoji(alert)} {text}"})


DISCORD_MAX = 2000


class Discord(Notifier):
    """POST to a Discord webhook."""

    kind = "discord"
    options = {"url": parse.url}
    required = ("url",)

    async def send(self, alert: Alert) -> None:
        """POST ``{"content": ...}`` with mentions disabled."""
        content = f"{_emoji(alert)} {alert.text}"[:DISCORD_MAX]
        # A node's reason text must never ping @everyone.
        body = {"content": content, "username": "pimon", "allowed_mentions": {"parse": []}}
        await self.post_json(self.config.options["url"], body)


AM_NAMES = {
    Event.NODE_DOWN: ("PimonNodeDown", "down"),
    Event.NODE_DEGRADED: ("PimonNodeDegraded", "degraded"),
    Event.FLAPPING: ("PimonNodeFlapping", "flapping"),
    Event.MONITOR_ISOLATED: ("PimonMonitorIsolated", "isolated"),
    Event.TEST: ("PimonTest", "test"),
}
AM_RESEND = 60.0


def rfc3339(at: float) -> str:
    """Format a Unix time as RFC 3339 in UTC."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Alertmanager(Notifier):
    """POST to Prometheus Alertmanager's /api/v2/alerts; resolve on recovery."""

    kind = "alertmanager"
    options = {"url": parse.url, "labels": _labels, "resend": parse.positive}
    required = ("url",)

    def __init__(self, config: NotifierConfig, session: aiohttp.ClientSession | None) -> None:
        super().__init__(config, session)
        # Alertmanager forgets alerts not re-sent in time, as Prometheus re-sends its own.
        self.refresh_interval = float(config.options.get("resend", AM_RESEND))

    def wire(self, alert: Alert, now: float) -> list[dict[str, Any]]:
        """Return the Alertmanager alerts (firing and resolved) that ``alert`` amounts to."""
        out = []
        if alert.resolves in AM_NAMES:
            resolved = self._alert(alert, alert.resolves, alert.at)
            resolved["endsAt"] = rfc3339(alert.at)
            out.append(resolved)
        if alert.event in AM_NAMES:
            firing = self._alert(alert, alert.event, alert.at)
            firing["endsAt"] = rfc3339(now + 4 * (self.refresh_interval or AM_RESEND))
            out.append(firing)
        return out

    def _alert(self, alert: Alert, event: Event, at: float) -> dict[str, Any]:
        alertname, state = AM_NAMES[event]
        labels = {**self.config.options.get("labels", {}), "alertname": alertname}
        labels.update(state=state, severity=str(SEVERITY[event]))
        if alert.node:
            labels["node"] = alert.node
        if alert.monitor:
            labels["monitor"] = alert.monitor
        annotations = {"summary": alert.text, "description": alert.reason}
        return {"labels": labels, "annotations": annotations, "startsAt": rfc3339(at)}

    async def send(self, alert: Alert) -> None:
        """POST the firing and resolved alerts this event amounts to."""
        body = self.wire(alert, time.time())
        if body:
            await self.post_json(self.config.options["url"] + "/api/v2/alerts", body)

    async def refresh(self, firing: Sequence[Alert], now: float) -> None:
        """Re-send the alerts in force so Alertmanager keeps them firing."""
        body = [a for alert in firing if self.wants(alert) for a in self.wire(alert, now)]
        if body:
            await self.post_json(self.config.options["url"] + "/api/v2/alerts", body)


class Exec(Notifier):
    """Run a command with the event in PIMON_* environment variables; never via a shell."""

    kind = "exec"
    options = {"command": _command}
    required = ("command",)

    def environment(self, alert: Alert) -> dict[str, str]:
        """Return the environment the command runs with."""
        p = alert.payload()
        extra = {f"PIMON_{k.upper()}": "" if v is None else str(v) for k, v in p.items()}
        extra["PIMON_PROBLEMS"] = "; ".join(alert.problems)
        extra["PIMON_PAYLOAD"] = json.dumps(p)
        # Inherited PIMON_* (the token among them) must not pass for event fields.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("PIMON_")}
        return {**inherited, **extra}

    async def send(self, alert: Alert) -> None:
        """Run the command; a non-zero exit or the timeout is a failure."""
        command = self.config.options["command"]
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                env=self.environment(alert),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # so a timeout can kill its children too
            )
        except OSError as e:
            raise DeliveryError(f"cannot run {command[0]}: {e.strerror}") from None
        try:
            async with asyncio.timeout(self.config.timeout):
                output, _ = await proc.communicate()
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            raise DeliveryError(
                f"{command[0]} still running after {self.config.timeout:g}s; killed"
            ) from None
        except asyncio.CancelledError:
            _kill_group(proc.pid)
            raise
        if proc.returncode != 0:
            tail = output.decode(errors="replace").strip()[-ERROR_BODY_CHARS:]
            raise DeliveryError(
                f"{command[0]} exited with {proc.returncode}" + (f": {tail}" if tail else "")
            )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


KINDS: dict[str, type[Notifier]] = {
    cls.kind: cls for cls in (Webhook, Ntfy, Slack, Discord, Alertmanager, Exec)
}


def build(
    configs: Sequence[NotifierConfig], session: aiohttp.ClientSession | None
) -> list[Notifier]:
    """Instantiate the notifiers of validated configs."""
    return [KINDS[c.kind](c, session) for c in configs]


async def send_test(
    configs: Sequence[NotifierConfig], alert: Alert
) -> list[tuple[Notifier, str | None]]:
    """Send ``alert`` to every notifier at once, ignoring filters; return each one's error."""
    async with aiohttp.ClientSession() as session:
        notifiers = build(configs, session)

        async def one(n: Notifier) -> str | None:
            try:
                await n.send(alert)
            except DeliveryError as e:
                return str(e)
            return None

        results = await asyncio.gather(*(one(n) for n in notifiers))
    return list(zip(notifiers, results, strict=True))


def alert_config(s: Resolved, config_flag: str | None) -> AlertConfig:
    """Return the monitor's alerting settings: resolved ones plus the ``[[alerts]]`` tables."""
    path, explicit = config.config_path(config_flag, os.environ)
    data, text = config.load_file(path, explicit)
    return AlertConfig(
        notifiers=parse_notifiers(data, text=text, path=path),
        alert_after=s.alert_after,
        flap_count=s.flap_count,
        flap_window=s.flap_window,
        deadline=s.alert_deadline,
        deadman_url=s.deadman_url,
        deadman_interval=s.deadman_interval,
    )


def run_test(config_flag: str | None) -> int:
    """Send a test event to every notifier and print each result; 1 if any failed."""
    path, explicit = config.config_path(config_flag, os.environ)
    data, text = config.load_file(path, explicit)
    configs = parse_notifiers(data, text=text, path=path)
    if not configs:
        raise ConfigError(f"{path or 'no config file'}: no [[alerts]] tables to test")
    alert = make_test_alert(time.time(), socket.gethostname())
    results = asyncio.run(send_test(configs, alert))
    for notifier, error in results:
        label = f"{notifier.name} ({notifier.kind})"
        print(f"FAIL  {label}: {error}" if error else f"ok    {label}")
    return 1 if any(error for _, error in results) else 0
