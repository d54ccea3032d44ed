"""Parse and validate setting values; each parser raises ValueError with a plain reason."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pimon.wire import check_name

LOG_LEVELS = ("debug", "info", "warning", "error")
# Host names, IPv4 and IPv6 literals (with an optional zone): no spaces, no URL parts.
HOST_RE = re.compile(r"^[A-Za-z0-9._:%-]{1,253}$")


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A statically configured pull node."""

    name: str
    host: str
    port: int

    @property
    def address(self) -> str:
        """Return ``host:port``, bracketing IPv6 literals."""
        return join_host_port(self.host, self.port)


def join_host_port(host: str, port: int) -> str:
    """Join a host and port, bracketing IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(text: str, default_port: int | None) -> tuple[str, int]:
    """Split ``HOST[:PORT]`` (IPv6 as ``[::1]:PORT``) into host and port."""
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"unclosed '[' in {text!r}")
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and not rest.startswith(":"):
            raise ValueError(f"junk after ']' in {text!r}")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        host, port_text = text, None  # a bare IPv6 literal
    else:
        host, port_text = text, None
    if not host and not text.startswith(":"):
        raise ValueError(f"missing host in {text!r}")
    if host and not HOST_RE.match(host):
        raise ValueError(f"bad host {host!r}")
    if port_text is None:
        if default_port is None:
            raise ValueError(f"missing port in {text!r}")
        return host, default_port
    return host, port(port_text)


def port(text: str) -> int:
    """Parse a TCP port (0 means any free port, for listening)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"bad port {text!r}") from None
    if not 0 <= value <= 65535:
        raise ValueError(f"port {value} out of range 0-65535")
    return value


def listen(default_port: int) -> Callable[[Any], tuple[str, int]]:
    """Return a parser for a listen address; an empty host means all interfaces."""

    def parse_listen(raw: Any) -> tuple[str, int]:
        host, p = split_host_port(str(raw), default_port)
        return host or "0.0.0.0", p

    return parse_listen


def address(default_port: int) -> Callable[[Any], str]:
    """Return a parser that normalises ``HOST[:PORT]`` to ``host:port``."""

    def parse_address(raw: Any) -> str:
        host, p = split_host_port(str(raw), default_port)
        if not host or p == 0:
            raise ValueError("need a host and a non-zero port")
        return join_host_port(host, p)

    return parse_address


def node_spec(raw: Any) -> NodeSpec:
    """Parse ``[NAME=]HOST[:PORT]``; the name defaults to the host."""
    text = str(raw).strip()
    name, sep, addr = text.partition("=")
    if not sep:
        name, addr = "", text
    host, p = split_host_port(addr, 7071)
    if p == 0:
        raise ValueError("port 0 is not a node's port")
    if not host:
        raise ValueError(f"missing host in {text!r}")
    return NodeSpec(check_name(name or host.replace(":", "-")), host, p)


def node_name(raw: Any) -> str:
    """Parse a node name."""
    return check_name(str(raw))


def interval(raw: Any) -> float:
    """Parse a positive interval in seconds."""
    value = _number(raw)
    if not 0.05 <= value <= 3600:
        raise ValueError("must be between 0.05 and 3600 seconds")
    return value


def positive(raw: Any) -> float:
    """Parse a positive number."""
    value = _number(raw)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def non_negative(raw: Any) -> float:
    """Parse a number >= 0."""
    value = _number(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def positive_int(raw: Any) -> int:
    """Parse a positive whole number."""
    if isinstance(raw, bool):
        raise ValueError("must be a whole number")
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ValueError("must be a whole number") from None
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def percent(raw: Any) -> float:
    """Parse a percentage between 0 and 100."""
    value = _number(raw)
    if not 0 < value <= 100:
        raise ValueError("must be a percentage in (0, 100]")
    return value


def _number(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError("must be a number")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError("must be a number") from None
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def url(raw: Any, schemes: tuple[str, ...] = ("http", "https")) -> str:
    """Parse an http(s) URL and drop a trailing slash."""
    text = str(raw).strip()
    parts = urlsplit(text)
    if parts.scheme not in schemes or not parts.hostname:
        names = [f"{s}://" for s in schemes]
        listed = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
        raise ValueError(f"must be an {listed} URL")
    try:
        _ = parts.port
    except ValueError as e:
        raise ValueError(f"bad port in URL: {e}") from None
    return text.rstrip("/")


def push_url(raw: Any) -> str:
    """Parse a monitor URL to push to: http(s)://, or udp:// for signed datagrams."""
    return url(raw, ("http", "https", "udp"))


def path(raw: Any) -> str:
    """Parse a file system path."""
    text = str(raw)
    if not text or "\0" in text:
        raise ValueError("must be a path")
    return text


def mount(raw: Any) -> str:
    """Parse an absolute mount point."""
    text = path(raw)
    if not text.startswith("/"):
        raise ValueError("must be an absolute path")
    return text


def token(raw: Any) -> str:
    """Parse a token: at least 8 printable characters."""
    text = str(raw).strip()
    if len(text) < 8 or not text.isprintable():
        raise ValueError("a token needs at least 8 printable characters")
    return text


def boolean(raw: Any) -> bool:
    """Parse a boolean from TOML or text."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def log_level(raw: Any) -> str:
    """Parse a log level name."""
    text = str(raw).strip().lower()
    if text not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return text


def duration(raw: Any) -> float:
    """Parse a duration like ``90``, ``30s``, ``15m``, ``24h`` or ``7d`` into seconds."""
    text = str(raw).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    factor = units.get(text[-1:])
    number = text[:-1] if factor else text
    value = _number(number)
    if value <= 0:
        raise ValueError("must be > 0")
    return value * (factor or 1)
