"""Notifiers: how each kind of ``[[alerts]]`` table sends an alert, and ``pimon alert test``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import aiohttp

from pimon.alertconfig import NotifierConfig, load_notifiers
from pimon.alertformat import SEVERITY, Alert, Event, Severity, make_test_alert
from pimon.config import ConfigError

ERROR_BODY_CHARS = 200


class DeliveryError(Exception):
    """A notifier could not deliver; the message says why, for the stats and the log."""


class Notifier:
    """Send alerts to one destination; subclasses implement ``send``."""

    kind: ClassVar[str]
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

    async def send(self, alert: Alert) -> None:
        """POST ``{"text": ...}``, with Slack's control characters escaped."""
        text = alert.text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        await self.post_json(self.config.options["url"], {"text": f"{_emoji(alert)} {text}"})


DISCORD_MAX = 2000


class Discord(Notifier):
    """POST to a Discord webhook."""

    kind = "discord"

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


# One class per kind of pimon.alertconfig.KINDS, in the same order.
NOTIFIERS: dict[str, type[Notifier]] = {
    cls.kind: cls for cls in (Webhook, Ntfy, Slack, Discord, Alertmanager, Exec)
}


def build(
    configs: Sequence[NotifierConfig], session: aiohttp.ClientSession | None
) -> list[Notifier]:
    """Instantiate the notifiers of validated configs."""
    return [NOTIFIERS[c.kind](c, session) for c in configs]


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


def run_test(config_flag: str | None) -> int:
    """Send a test event to every notifier and print each result; 1 if any failed."""
    configs, path = load_notifiers(config_flag)
    if not configs:
        raise ConfigError(f"{path or 'no config file'}: no [[alerts]] tables to test")
    alert = make_test_alert(time.time(), socket.gethostname())
    results = asyncio.run(send_test(configs, alert))
    for notifier, error in results:
        label = f"{notifier.name} ({notifier.kind})"
        print(f"FAIL  {label}: {error}" if error else f"ok    {label}")
    return 1 if any(error for _, error in results) else 0
