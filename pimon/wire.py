"""Wire format v1: the one heartbeat schema shared by agent and monitor.

Stdlib dataclasses only, so the agent stays lean. The agent encodes with
``json``; the monitor decodes strictly into these same classes with msgspec,
which also runs ``__post_init__`` so both sides share one set of checks.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

WIRE_VERSION = 1
MAX_BODY_BYTES = 64 * 1024
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_PROBLEMS = 64
MAX_TEXT = 512


def check_name(name: str) -> str:
    """Return ``name`` when it is a valid node name, else raise ValueError."""
    if not NAME_RE.match(name):
        raise ValueError(f"invalid node name {name!r}: use 1-63 of A-Z a-z 0-9 . _ - ")
    return name


@dataclass(slots=True)
class Metrics:
    """Node health figures; None where the machine has no such sensor."""

    cpu_percent: float | None = None
    load1: float | None = None
    load5: float | None = None
    load15: float | None = None
    mem_percent: float | None = None
    mem_total_bytes: int | None = None
    swap_percent: float | None = None
    disk_percent: float | None = None
    temp_c: float | None = None
    throttled: list[str] = field(default_factory=list)
    uptime_s: float | None = None
    net_rx_bytes: int | None = None
    net_tx_bytes: int | None = None
    model: str | None = None
    # Percent used per configured mount point (the root disk is disk_percent).
    disks: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("cpu_percent", "load1", "load5", "load15", "mem_percent", "swap_percent"):
            _check_finite(key, getattr(self, key))
        _check_finite("disk_percent", self.disk_percent)
        _check_finite("temp_c", self.temp_c)
        _check_finite("uptime_s", self.uptime_s)
        if self.model is not None and len(self.model) > MAX_TEXT:
            raise ValueError("metrics.model is too long")


@dataclass(slots=True)
class Heartbeat:
    """One heartbeat: the agent's answer on pull, its message on push."""

    v: int
    name: str
    id: str
    seq: int
    sent_at: float
    interval: float = 1.0
    address: str | None = None
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    leaving: bool = False
    metrics: Metrics = field(default_factory=Metrics)
    # Random per agent start: a restarted agent counts seq from 1 again, and
    # this tells the monitor it is a new boot rather than a replay.
    boot: str = ""

    def __post_init__(self) -> None:
        if self.v != WIRE_VERSION:
            raise ValueError(f"unsupported wire version {self.v} (this side speaks {WIRE_VERSION})")
        check_name(self.name)
        if not 1 <= len(self.id) <= 64:
            raise ValueError("id must be 1-64 characters")
        if self.seq < 0:
            raise ValueError("seq must be >= 0")
        _check_finite("sent_at", self.sent_at)
        if not math.isfinite(self.interval) or not 0.05 <= self.interval <= 3600:
            raise ValueError("interval must be between 0.05 and 3600 seconds")
        if self.address is not None and len(self.address) > 255:
            raise ValueError("address is too long")
        if len(self.problems) > MAX_PROBLEMS or any(len(p) > MAX_TEXT for p in self.problems):
            raise ValueError("problems: too many or too long")


def _check_finite(key: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number")


def metrics_dict(metrics: Metrics) -> dict[str, Any]:
    """Return the metrics as a plain JSON-ready dict."""
    return asdict(metrics)


def encode_heartbeat(hb: Heartbeat, metrics: dict[str, Any] | None = None) -> bytes:
    """Encode a heartbeat as compact JSON; pass ``metrics`` pre-converted to save work."""
    body = {
        "v": hb.v,
        "name": hb.name,
        "id": hb.id,
        "boot": hb.boot,
        "seq": hb.seq,
        "sent_at": hb.sent_at,
        "interval": hb.interval,
        "address": hb.address,
        "ok": hb.ok,
        "problems": hb.problems,
        "leaving": hb.leaving,
        "metrics": metrics if metrics is not None else asdict(hb.metrics),
    }
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


# A heartbeat datagram: magic, HMAC-SHA256 of the body keyed with the cluster
# token, then the JSON body. The token itself never crosses the network.
DATAGRAM_MAGIC = b"PM1"
_MAC_SIZE = 32


def seal_datagram(token: str, body: bytes) -> bytes:
    """Frame a heartbeat body as an authenticated UDP datagram."""
    import hashlib  # lazily: OpenSSL's libcrypto costs the agent RSS unless UDP is used
    import hmac

    mac = hmac.new(token.encode(), body, hashlib.sha256).digest()
    return DATAGRAM_MAGIC + mac + body


def open_datagram(token: str, datagram: bytes) -> bytes | None:
    """Return the body of an authentic datagram, or None (compared in constant time)."""
    head = len(DATAGRAM_MAGIC) + _MAC_SIZE
    if len(datagram) <= head or not datagram.startswith(DATAGRAM_MAGIC):
        return None
    import hashlib
    import hmac

    body = datagram[head:]
    expected = hmac.new(token.encode(), body, hashlib.sha256).digest()
    return body if hmac.compare_digest(expected, datagram[len(DATAGRAM_MAGIC) : head]) else None


def error_body(status: int, message: str) -> dict[str, Any]:
    """Return the one error shape used by every pimon endpoint."""
    return {"error": message, "status": status}
