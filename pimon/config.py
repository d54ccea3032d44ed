"""The settings table: every setting declared once, resolved flag > env > file > default."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pimon import parse

DEFAULT_CONFIG = "/etc/pimon/pimon.toml"


class ConfigError(ValueError):
    """A setting has a bad value; the message names the setting and where it came from."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its name, section, parser, default and help."""

    name: str
    section: str  # "agent", "monitor" or "client": the TOML table and the subcommand
    parse: Callable[[Any], Any]
    default: Any
    help: str
    env: str | None = None
    multi: bool = False  # repeatable flag; comma-separated in the environment
    metavar: str | None = None
    flag: bool = True  # settable on the command line (some live only in the file)

    @property
    def option(self) -> str:
        """Return the command-line option, e.g. ``--token-file``."""
        return "--" + self.name.replace("_", "-")


def _s(
    name: str, section: str, p: Callable[[Any], Any], default: Any, help: str, **kw: Any
) -> Setting:
    return Setting(name, section, p, default, help, **kw)


# fmt: off
SETTINGS: tuple[Setting, ...] = (
    # agent
    _s("listen", "agent", parse.listen(7071), "0.0.0.0:7071", "address the heartbeat RPC listens on", metavar="HOST:PORT"),
    _s("name", "agent", parse.node_name, None, "node name (default: the host name)"),
    _s("interval", "agent", parse.interval, 1.0, "seconds between heartbeats and metric samples", metavar="S"),
    _s("monitor", "agent", parse.url, [], "monitor URL to push heartbeats to (repeatable)", env="PIMON_MONITOR", multi=True, metavar="URL"),
    _s("advertise", "agent", parse.address(7071), None, "pull address announced to monitors (default: host name and listen port)", metavar="HOST:PORT"),
    _s("state_dir", "agent", parse.path, None, "where the node id is kept (default: /var/lib/pimon as root, else $XDG_STATE_HOME/pimon)", metavar="DIR"),
    _s("mounts", "agent", parse.mount, ["/"], "mount points whose disk use is reported (repeatable)", multi=True, metavar="PATH"),
    _s("token_file", "agent", parse.path, None, "file holding the cluster token sent with pushes", metavar="F"),
    _s("log_level", "agent", parse.log_level, "info", "debug, info, warning or error"),
    _s("disk_max_percent", "agent", parse.percent, 90.0, "disk use at or above this is a problem", flag=False),
    _s("temp_max_c", "agent", parse.positive, 80.0, "temperature at or above this is a problem", flag=False),
    _s("mem_max_percent", "agent", parse.percent, 95.0, "memory use at or above this is a problem", flag=False),
    # monitor
    _s("listen", "monitor", parse.listen(7070), "0.0.0.0:7070", "address the API, dashboard and /metrics listen on", metavar="HOST:PORT"),
    _s("node", "monitor", parse.node_spec, [], "a node to poll, [NAME=]HOST[:PORT] (repeatable)", env="PIMON_NODES", multi=True, metavar="[NAME=]HOST[:PORT]"),
    _s("nodes_file", "monitor", parse.path, None, "file with one [NAME=]HOST[:PORT] per line", metavar="F"),
    _s("interval", "monitor", parse.interval, 1.0, "seconds between polls of each node", metavar="S"),
    _s("db", "monitor", parse.path, None, "SQLite history database (default: $XDG_STATE_HOME/pimon/monitor.db)", metavar="PATH"),
    _s("token_file", "monitor", parse.path, None, "file holding the cluster (write) token", metavar="F"),
    _s("read_token", "monitor", parse.token, None, "token required to read the API and dashboard", env="PIMON_READ_TOKEN", metavar="TOKEN"),
    _s("insecure", "monitor", parse.boolean, False, "listen beyond loopback without a token"),
    _s("max_nodes", "monitor", parse.positive_int, 10000, "most nodes the monitor accepts", metavar="N"),
    _s("threshold", "monitor", parse.positive, 8.0, "phi threshold of the failure detector", flag=False),
    _s("suspect_pause", "monitor", parse.positive, 2.0, "acceptable pause, in intervals, before suspect", flag=False),
    _s("down_pause", "monitor", parse.positive, 5.0, "acceptable pause, in intervals, before down", flag=False),
    _s("log_level", "monitor", parse.log_level, "info", "debug, info, warning or error"),
    # client commands
    _s("monitor", "client", parse.url, "http://127.0.0.1:7070", "monitor URL", env="PIMON_MONITOR", metavar="URL"),
    _s("token_file", "client", parse.path, None, "file holding the token", metavar="F"),
)
# fmt: on


@dataclass(slots=True)
class Resolved:
    """Effective settings of one section, with where each value came from."""

    values: dict[str, Any]
    sources: dict[str, str]
    file_data: dict[str, Any]

    def __getattr__(self, key: str) -> Any:
        try:
            return self.values[key]
        except KeyError:
            raise AttributeError(key) from None


def section(name: str) -> list[Setting]:
    """Return the settings of one section."""
    return [s for s in SETTINGS if s.section == name]


def config_path(flag: str | None, env: Mapping[str, str]) -> tuple[str | None, bool]:
    """Return the config file to read and whether the user named it explicitly."""
    if flag:
        return flag, True
    if env.get("PIMON_CONFIG"):
        return env["PIMON_CONFIG"], True
    return (DEFAULT_CONFIG, False) if os.path.exists(DEFAULT_CONFIG) else (None, False)


def load_file(path: str | None, explicit: bool) -> tuple[dict[str, Any], str]:
    """Read and parse a TOML config file; return its data and its text."""
    if path is None:
        return {}, ""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        if explicit:
            raise ConfigError(f"config file {path}: {e.strerror}") from e
        return {}, ""
    text = raw.decode("utf-8", "replace")
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: {e}") from e


def line_of(text: str, table: str | None, key: str) -> int | None:
    """Return the 1-based line where ``key`` is set in ``[table]`` (or at top level)."""
    current: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        header = re.match(r"\s*\[+\s*([A-Za-z0-9_.-]+)\s*\]+", line)
        if header:
            current = header.group(1)
            continue
        if current == table and re.match(rf"\s*{re.escape(key)}\s*=", line):
            return number
    return None


def resolve(
    name: str,
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    data: Mapping[str, Any],
    *,
    text: str = "",
    path: str | None = None,
) -> Resolved:
    """Resolve one section's settings from flags, environment, file data and defaults."""
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    known = {s.name for s in section(name)}
    for key in table:
        if key not in known:
            where = _where(path, text, name, key)
            raise ConfigError(f"{where}unknown setting {name}.{key}")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for s in section(name):
        raw, source = _pick(s, flags, env, table)
        if source == "default":
            values[s.name], sources[s.name] = s.default, "default"
            continue
        try:
            if s.multi:
                items = raw if isinstance(raw, list) else [raw]
                if source.startswith("env"):
                    items = [i.strip() for i in str(raw).split(",") if i.strip()]
                values[s.name] = [s.parse(i) for i in items]
            else:
                values[s.name] = s.parse(raw)
        except (ValueError, TypeError) as e:
            label = s.option if source == "flag" else s.env if source.startswith("env") else None
            if label is None:
                label = f"{_where(path, text, name, s.name)}{name}.{s.name}"
            raise ConfigError(f"{label}: {e} (got {raw!r})") from e
        sources[s.name] = source
    return Resolved(values, sources, dict(data))


def _pick(
    s: Setting, flags: Mapping[str, Any], env: Mapping[str, str], table: Mapping[str, Any]
) -> tuple[Any, str]:
    value = flags.get(s.name)
    if value is not None and value != []:
        return value, "flag"
    if s.env and env.get(s.env):
        return env[s.env], f"env {s.env}"
    if s.name in table:
        return table[s.name], "file"
    return None, "default"


def _where(path: str | None, text: str, table: str, key: str) -> str:
    line = line_of(text, table, key)
    if path and line:
        return f"{path}:{line}: "
    return f"{path}: " if path else ""


def describe(resolved: Resolved, settings: Sequence[Setting]) -> list[tuple[str, str, str]]:
    """Return (name, value, source) rows for ``pimon config show``."""
    rows = []
    for s in settings:
        value = resolved.values.get(s.name)
        shown = "(secret)" if "token" in s.name and value and s.name != "token_file" else value
        rows.append((f"{s.section}.{s.name}", repr(shown), resolved.sources.get(s.name, "default")))
    return rows
