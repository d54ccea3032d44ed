"""The settings table: every setting declared once, resolved flag > env > file > default."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pimon import parse

DEFAULT_CONFIG = "/etc/pimon/pimon.toml"
SECTIONS = ("agent", "monitor", "client")
# Top-level arrays of tables that other features own (``[[alerts]]``): accepted
# here as long as they are arrays of tables; their owner validates the contents.
TOP_LEVEL_ARRAYS = frozenset({"alerts"})


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
    _s("monitor", "agent", parse.push_url, [], "monitor URL to push heartbeats to (repeatable; udp://HOST:PORT sends signed datagrams)", env="PIMON_MONITOR", multi=True, metavar="URL"),
    _s("advertise", "agent", parse.address(7071), None, "pull address announced to monitors (default: host name and listen port)", metavar="HOST:PORT"),
    _s("state_dir", "agent", parse.path, None, "where the node id is kept (default: /var/lib/pimon as root, else $XDG_STATE_HOME/pimon)", metavar="DIR"),
    _s("mounts", "agent", parse.mount, ["/"], "mount points whose disk use is reported (repeatable)", multi=True, metavar="PATH"),
    _s("token_file", "agent", parse.path, None, "file holding the cluster token sent with pushes", metavar="F"),
    _s("log_level", "agent", parse.log_level, "info", "debug, info, warning or error"),
    _s("disk_max_percent", "agent", parse.percent, 90.0, "disk use at or above this is a problem", flag=False),
    _s("temp_max_c", "agent", parse.positive, 80.0, "temperature at or above this is a problem", flag=False),
    _s("mem_max_percent", "agent", parse.percent, 95.0, "memory use at or above this is a problem", flag=False),
    _s("swap_pages_per_s", "agent", parse.positive, 1000.0, "swapping (pages in + out per second) at or above this is heavy", flag=False),
    _s("swap_sustain_s", "agent", parse.positive, 60.0, "heavy swapping that lasts this many seconds is a problem", flag=False),
    # monitor
    _s("listen", "monitor", parse.listen(7070), "0.0.0.0:7070", "address the API, dashboard and /metrics listen on", metavar="HOST:PORT"),
    _s("node", "monitor", parse.node_spec, [], "a node to poll, [NAME=]HOST[:PORT] (repeatable)", env="PIMON_NODES", multi=True, metavar="[NAME=]HOST[:PORT]"),
    _s("nodes_file", "monitor", parse.path, None, "file with one [NAME=]HOST[:PORT] per line", metavar="F"),
    _s("interval", "monitor", parse.interval, 1.0, "seconds between polls of each node", metavar="S"),
    _s("db", "monitor", parse.path, None, "SQLite history database (default: $XDG_STATE_HOME/pimon/monitor.db)", metavar="PATH"),
    _s("token_file", "monitor", parse.path, None, "file holding the cluster (write) token", metavar="F"),
    _s("read_token", "monitor", parse.token, None, "token required to read the API and dashboard", env="PIMON_READ_TOKEN", metavar="TOKEN"),
    _s("insecure", "monitor", parse.boolean, False, "listen beyond loopback without a token"),
    _s("udp", "monitor", parse.boolean, False, "also take pushed heartbeats as HMAC-signed UDP datagrams on the listen port (needs a token)"),
    _s("max_nodes", "monitor", parse.positive_int, 10000, "most nodes the monitor accepts", metavar="N"),
    _s("threshold", "monitor", parse.positive, 8.0, "phi threshold of the failure detector", flag=False),
    _s("suspect_pause", "monitor", parse.positive, 2.0, "acceptable pause, in intervals, before suspect", flag=False),
    _s("down_pause", "monitor", parse.positive, 3.0, "acceptable pause, in intervals, before down", flag=False),
    _s("alert_after", "monitor", parse.non_negative, 0.0, "seconds a node must stay down before its down alert goes out", metavar="S"),
    _s("flap_count", "monitor", parse.positive_int, 5, "up/down changes within flap_window that make a node flapping", metavar="N"),
    _s("flap_window", "monitor", parse.duration, 600.0, "window for flap_count, and how long a flapping node must be stable (e.g. 10m)", metavar="S"),
    _s("alert_deadline", "monitor", parse.duration, 3600.0, "how long undelivered alerts are retried (e.g. 1h)", metavar="S"),
    _s("deadman_url", "monitor", parse.url, None, "URL requested every deadman_interval while the monitor reaches a node (healthchecks.io, Uptime Kuma push)", metavar="URL"),
    _s("deadman_interval", "monitor", parse.interval, 60.0, "seconds between dead-man's switch requests", metavar="S"),
    _s("retention_raw", "monitor", parse.duration, 6 * 3600.0, "how long raw metric samples are kept (e.g. 6h; at least 30m)", flag=False),
    _s("retention_minute", "monitor", parse.duration, 7 * 86400.0, "how long 1-minute averages are kept (e.g. 7d)", flag=False),
    _s("retention_quarter", "monitor", parse.duration, 365 * 86400.0, "how long 15-minute averages are kept (e.g. 365d)", flag=False),
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
    import tomllib  # here, not at the top: most commands read no config file

    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        # tomllib (3.11) puts the position only in the message: lift it into path:line.
        at = re.search(r"\s*\(at line (\d+), column (\d+)\)$", str(e))
        if at is None:
            raise ConfigError(f"{path}: TOML syntax error: {e}") from e
        reason = str(e)[: at.start()]
        raise ConfigError(
            f"{path}:{at.group(1)}: TOML syntax error: {reason} (column {at.group(2)})"
        ) from e


# Pattern text, not compiled patterns: ``re`` compiles and caches them on first use,
# so commands that never report a config error do not pay for compiling them.
_HEADER = r"\s*\[\[?\s*([^\]\[]+?)\s*\]\]?\s*(?:#.*)?$"
_KEY = r"""\s*((?:[\w-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[\w-]+|"[^"]*"|'[^']*'))*)\s*="""


def _key_path(dotted: str) -> list[str]:
    return [p.strip("\"'") for p in re.findall(r"""[\w-]+|"[^"]*"|'[^']*'""", dotted)]


def line_of(text: str, table: str | None, key: str) -> int | None:
    """Return the 1-based line where ``key`` is set in ``[table]`` (or at top level)."""
    # A light scan, not a TOML parser: it follows [table] headers, dotted and quoted
    # keys and one-line inline tables, which is every way a setting can be written.
    want = [table, key] if table else [key]
    current: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        header = re.match(_HEADER, line)
        if header:
            current = _key_path(header.group(1))
            if table is None and current[:1] == [key]:
                return number
            continue
        found = re.match(_KEY, line)
        if not found:
            continue
        full = current + _key_path(found.group(1))
        if full[: len(want)] == want:
            return number
        inline = line[found.end() :]
        if full == want[:-1] and re.search(rf"""[{{,]\s*["']?{re.escape(key)}["']?\s*=""", inline):
            return number
    return None


def check_tables(data: Mapping[str, Any], text: str = "", path: str | None = None) -> list[str]:
    """Return one message per top-level key that is not a known table."""
    errors = []
    for key, value in data.items():
        where = _where(path, text, None, key)
        if key in TOP_LEVEL_ARRAYS:
            if not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
                errors.append(f"{where}{key} must be an array of tables: [[{key}]]")
        elif key not in SECTIONS:
            kind = "table" if isinstance(value, dict) else "setting"
            errors.append(
                f"{where}unknown {kind} {key}{_hint(key, [*SECTIONS, *TOP_LEVEL_ARRAYS])}"
            )
        elif not isinstance(value, dict):
            errors.append(f"{where}{key} must be a table: [{key}]")
    return errors


def table_errors(
    name: str, table: Mapping[str, Any], text: str = "", path: str | None = None
) -> list[str]:
    """Return one message per unknown key or bad value in the ``[name]`` table."""
    by_name = {s.name: s for s in section(name)}
    errors = []
    for key, raw in table.items():
        where = _where(path, text, name, key)
        s = by_name.get(key)
        if s is None:
            errors.append(f"{where}unknown setting {name}.{key}{_hint(key, list(by_name), name)}")
            continue
        try:
            parse_value(s, raw, "file")
        except ValueError as e:
            errors.append(f"{where}{name}.{key}: {e}")
    return errors


def file_errors(data: Mapping[str, Any], text: str = "", path: str | None = None) -> list[str]:
    """Return every problem of a parsed config file, each naming its key and line."""
    errors = check_tables(data, text, path)
    for name in SECTIONS:
        table = data.get(name)
        if isinstance(table, dict):
            errors += table_errors(name, table, text, path)
    at_line = re.compile(rf"{re.escape(path or '')}:(\d+): ")
    return sorted(errors, key=lambda m: int(found[1]) if (found := at_line.match(m)) else 0)


def _hint(key: str, choices: Sequence[str], table: str | None = None) -> str:
    import difflib  # only a config mistake needs it

    close = difflib.get_close_matches(key, choices, n=1)
    if close:
        return f" (did you mean {close[0]}?)"
    elsewhere = [s.section for s in SETTINGS if s.name == key and s.section != table]
    if elsewhere:
        return f" (it belongs in [{elsewhere[0]}])"
    return ""


def parse_value(s: Setting, raw: Any, source: str) -> Any:
    """Parse one raw value of ``s`` from ``source`` ("flag", "env NAME" or "file").

    The ValueError names the offending value (the item, for a list).
    """
    if not s.multi:
        return _parse_one(s, raw, source)
    if source.startswith("env"):
        items = [i.strip() for i in str(raw).split(",") if i.strip()]
    else:
        items = raw if isinstance(raw, list) else [raw]
    return [_parse_one(s, i, source) for i in items]


def _parse_one(s: Setting, raw: Any, source: str) -> Any:
    try:
        # The parsers accept text, so a TOML table, list or date would slip through as str().
        if source == "file" and not isinstance(raw, str | int | float | bool):
            kind = "table" if isinstance(raw, dict) else "list" if isinstance(raw, list) else "date"
            raise ValueError(f"must be a single value, not a {kind}")
        return s.parse(raw)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{e} (got {raw!r})") from e


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
    # The whole section of the file is checked, even values a flag overrides: a
    # mistake in the file should surface now, not on the day the flag is dropped.
    errors = check_tables(data, text, path)
    if isinstance(table, dict):
        errors += table_errors(name, table, text, path)
    if errors:
        raise ConfigError(errors[0])
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for s in section(name):
        raw, source = _pick(s, flags, env, table)
        if source == "default":
            # Defaults are written like user input ("0.0.0.0:7071") and parsed the same way,
            # so a daemon gets one type whatever the source.
            default = None if s.default is None else parse_value(s, s.default, "default")
            values[s.name], sources[s.name] = default, "default"
            continue
        try:
            values[s.name] = parse_value(s, raw, source)
        except ValueError as e:
            label = s.option if source == "flag" else s.env if source.startswith("env") else None
            if label is None:
                label = f"{_where(path, text, name, s.name)}{name}.{s.name}"
            raise ConfigError(f"{label}: {e}") from e
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


def _where(path: str | None, text: str, table: str | None, key: str) -> str:
    line = line_of(text, table, key)
    if path and line:
        return f"{path}:{line}: "
    return f"{path}: " if path else ""
