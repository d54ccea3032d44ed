"""Explain the settings table: ``pimon config show|check``, the docs page and a starter file.

Everything here is rendered from ``pimon.config.SETTINGS``, so the command, the
generated ``docs/configuration.md`` and the starter ``/etc/pimon/pimon.toml``
can never disagree with what the daemons accept.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from pimon import config
from pimon.alertconfig import notifier_errors
from pimon.config import ConfigError, Setting
from pimon.parse import NodeSpec, join_host_port

DOC_PATH = "docs/configuration.md"
# TOML type and accepted form per parser (by function name: listen/address are closures).
TYPES: dict[str, tuple[str, str]] = {
    "parse_listen": ("string", "`HOST:PORT`"),
    "parse_address": ("string", "`HOST[:PORT]`"),
    "node_spec": ("string", "`[NAME=]HOST[:PORT]`"),
    "node_name": ("string", "node name"),
    "url": ("string", "http(s) URL"),
    "push_url": ("string", "http(s) or udp:// URL"),
    "path": ("string", "path"),
    "mount": ("string", "absolute path"),
    "log_level": ("string", "level"),
    "token": ("string", "secret"),
    "boolean": ("boolean", ""),
    "interval": ("number", "seconds"),
    "duration": ("duration", "seconds, or a string like `30s`, `15m`, `24h`, `7d`"),
    "percent": ("number", "percent"),
    "positive": ("number", "> 0"),
    "non_negative": ("number", ">= 0"),
    "positive_int": ("integer", "> 0"),
}
SECTION_USERS = {
    "agent": "`pimon agent`",
    "monitor": "`pimon monitor`",
    "client": "`pimon status` and the other commands that talk to a monitor",
}


def is_secret(s: Setting) -> bool:
    """Return whether a setting's value must never be printed."""
    return s.parse.__name__ == "token"


def type_name(s: Setting) -> str:
    """Return the TOML type and form of a setting, e.g. ``array of strings (http(s) URL)``."""
    name = s.parse.__name__
    if name not in TYPES:
        raise KeyError(f"no documented type for parser {name!r} of {s.section}.{s.name}")
    kind, form = TYPES[name]
    kind = f"array of {kind}s" if s.multi else kind
    return f"{kind} ({form})" if form else kind


def toml_value(value: Any) -> str:
    """Render a setting's value the way it is written in TOML (None as ``(unset)``)."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, NodeSpec):
        return json.dumps(f"{value.name}={value.address}")
    if isinstance(value, tuple) and len(value) == 2:  # a parsed listen address
        return json.dumps(join_host_port(str(value[0]), int(value[1])))
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def show(
    section: str | None,
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    config_flag: str | None,
    out: TextIO | None = None,
) -> int:
    """Print every setting of ``section`` (default: all) with its value and its source."""
    out = out or sys.stdout
    path, explicit = config.config_path(config_flag, env)
    data, text = config.load_file(path, explicit)
    names = [section] if section else list(config.SECTIONS)
    # Resolve every section first, so an error is not printed after half a table.
    results = [config.resolve(n, flags, env, data, text=text, path=path) for n in names]
    if path is None:
        print(f"config file: none ({config.DEFAULT_CONFIG} does not exist)", file=out)
    else:
        print(f"config file: {path}", file=out)
    rows = [("SETTING", "VALUE", "SOURCE")]
    for name, resolved in zip(names, results, strict=True):
        for s in config.section(name):
            value = resolved.values[s.name]
            shown = "(secret)" if is_secret(s) and value is not None else toml_value(value)
            source = _source(resolved.sources[s.name], s, text, path)
            rows.append((f"{name}.{s.name}", shown, source))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for key, value, source in rows:
        print(f"{key:<{widths[0]}}  {value:<{widths[1]}}  {source}", file=out)
    return 0


def _source(source: str, s: Setting, text: str, path: str | None) -> str:
    if source == "flag":
        return f"flag {s.option}"
    if source == "file":
        line = config.line_of(text, s.section, s.name)
        return f"file {path}:{line}" if line else f"file {path}"
    return source


def check(path: str, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Validate a config file and its ``[[alerts]]``: print ``ok``, else each problem (exit 2)."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        data, text = config.load_file(path, explicit=True)
    except ConfigError as e:
        print(e, file=err)
        return 2
    errors = config.file_errors(data, text, path) + notifier_errors(data, text, path)
    at_line = re.compile(rf"{re.escape(path)}:(\d+): ")
    errors.sort(key=lambda m: int(found[1]) if (found := at_line.match(m)) else 0)
    for message in errors:
        print(message, file=err)
    if errors:
        return 2
    print("ok", file=out)
    return 0


def render_docs() -> str:
    """Return ``docs/configuration.md``, generated from the settings table."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated from pimon/config.py by `make docs`; do not edit by hand. -->",
        "",
        "pimon reads one TOML file: `--config F`, else `$PIMON_CONFIG`, else",
        f"`{config.DEFAULT_CONFIG}` when it exists. A value given on the command line",
        "wins over the environment, which wins over the file, which wins over the",
        "default. The file has one table per part; the same file can serve every",
        "machine of a cluster, as each part reads only its own table.",
        "",
        "```sh",
        "pimon config check /etc/pimon/pimon.toml  # ok, or FILE:LINE: problem (exit 2)",
        "pimon config show                        # each setting, its value, its source",
        "pimon config show agent --interval 2     # what `pimon agent --interval 2` runs with",
        "```",
        "",
        "An unknown key or a bad value stops the daemon at start with the key and the",
        "line named. Settings that take several values are TOML arrays in the file,",
        "repeated flags on the command line and comma-separated in the environment.",
        "`[[alerts]]` tables (alert rules) may sit in the same file; they are described",
        "with the alerts.",
        "",
        "Besides the settings below, `PIMON_CONFIG` names the config file and",
        "`PIMON_TOKEN` holds the cluster token when no `token_file` is set.",
    ]
    for name in config.SECTIONS:
        lines += [
            "",
            f"## `[{name}]`",
            "",
            f"Read by {SECTION_USERS[name]}.",
            "",
            "| setting | type | default | environment | flag | description |",
            "|---|---|---|---|---|---|",
        ]
        for s in config.section(name):
            env = f"`{s.env}`" + (" (comma-separated)" if s.multi else "") if s.env else "—"
            flag = f"`{s.option}`" + (" (repeatable)" if s.multi else "") if s.flag else "—"
            default = "—" if s.default is None else f"`{toml_value(s.default)}`"
            cells = [f"`{s.name}`", type_name(s), default, env, flag, s.help]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def starter_config() -> str:
    """Return a commented starter ``pimon.toml``: every setting at its default, commented out."""
    lines = [
        "# pimon configuration. Every setting is listed at its default, commented out:",
        "# uncomment a line to change it. A command-line flag or an environment",
        "# variable still wins over this file. Check an edit with",
        f"#   pimon config check {config.DEFAULT_CONFIG}",
        "# and see the effective values with `pimon config show`.",
        "# A token_file must be readable by the service user only (chmod 600).",
    ]
    for name in config.SECTIONS:
        lines += ["", f"[{name}]"]
        for s in config.section(name):
            value = "" if s.default is None else " " + toml_value(s.default)
            lines += [f"# {s.help}", f"#{s.name} ={value}"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the generated configuration docs to a file (``make docs``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    target = args[0] if args else DOC_PATH
    with open(target, "w", encoding="utf-8") as f:
        f.write(render_docs())
    return 0


if __name__ == "__main__":
    sys.exit(main())
