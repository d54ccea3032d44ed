"""The ``pimon`` command line: a thin argparse entry that imports each command lazily."""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
from collections.abc import Callable, Sequence

from pimon import __version__, config, parse
from pimon.config import ConfigError, Resolved

Command = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A bad value on the command line or in the config: exit 2."""


def add_settings(parser: argparse.ArgumentParser, section: str) -> None:
    """Add one option per settable setting of ``section``."""
    for s in config.section(section):
        if not s.flag:
            continue
        if s.parse is parse.boolean:
            parser.add_argument(
                s.option, dest=s.name, action="store_const", const=True, help=s.help
            )
        elif s.multi:
            parser.add_argument(
                s.option, dest=s.name, action="append", metavar=s.metavar, help=s.help
            )
        else:
            parser.add_argument(s.option, dest=s.name, metavar=s.metavar, help=s.help)
    parser.add_argument(
        "--config", metavar="F", help="TOML config file (default /etc/pimon/pimon.toml)"
    )


def settings(args: argparse.Namespace, section: str) -> Resolved:
    """Resolve ``section`` from flags, environment, config file and defaults."""
    path, explicit = config.config_path(getattr(args, "config", None), os.environ)
    data, text = config.load_file(path, explicit)
    flags = {s.name: getattr(args, s.name, None) for s in config.section(section)}
    return config.resolve(section, flags, os.environ, data, text=text, path=path)


def read_token(path: str | None) -> str | None:
    """Return the token from a file (warning when others can read it) or PIMON_TOKEN."""
    if path:
        try:
            mode = os.stat(path).st_mode
            with open(path, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise UsageError(f"--token-file {path}: {e.strerror}") from e
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logging.getLogger("pimon").warning(
                "token file %s is readable by group or others; chmod 600 it", path
            )
        if not token:
            raise UsageError(f"--token-file {path}: the file is empty")
        return token
    return os.environ.get("PIMON_TOKEN") or None


def cmd_agent(args: argparse.Namespace) -> int:
    """Run the agent."""
    from pimon import daemoncmd

    return daemoncmd.agent(args)


def cmd_monitor(args: argparse.Namespace) -> int:
    """Run the monitor."""
    from pimon import daemoncmd

    return daemoncmd.monitor(args)


def cmd_status(args: argparse.Namespace) -> int:
    """Print the cluster's state."""
    from pimon import clientcmd

    return clientcmd.status(args)


def cmd_nodes(args: argparse.Namespace) -> int:
    """Register or deregister a node at runtime."""
    from pimon import clientcmd

    return clientcmd.nodes(args)


def cmd_history(args: argparse.Namespace) -> int:
    """Print state changes, outage durations and uptime per window."""
    from pimon import clientcmd

    return clientcmd.history(args)


def cmd_watch(args: argparse.Namespace) -> int:
    """Show a live table of node states until Ctrl-C."""
    from pimon import clientcmd

    return clientcmd.watch(args)


def add_history_and_watch(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``history`` and ``watch`` subcommands."""
    p = sub.add_parser("history", help="print state changes, outages and uptime per window")
    p.add_argument("node", nargs="?", type=_node_name, metavar="NODE", help="only this node")
    p.add_argument("--since", default="24h", metavar="AGE", help="how far back: 90m, 24h, 7d (24h)")
    p.add_argument("--json", action="store_true", help="print changes, outages, uptime as JSON")
    add_settings(p, "client")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("watch", help="live table of node states, fed by the monitor's events")
    add_settings(p, "client")
    p.set_defaults(func=cmd_watch)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run a local demo cluster."""
    from pimon.demo import run_demo

    return run_demo(args.nodes, chaos=args.chaos)


def cmd_config(args: argparse.Namespace) -> int:
    """Show the effective settings, or check a config file."""
    from pimon import configcmd

    if args.action == "check":
        return configcmd.check(args.file)
    path = getattr(args, "config", None) or args.show_config
    flags = vars(args) if args.section else {}
    return configcmd.show(args.section, flags, os.environ, path)


def cmd_install_service(args: argparse.Namespace) -> int:
    """Install, enable and start the systemd unit of the agent or the monitor."""
    from pimon.service import install

    return install(
        args.part,
        root=args.root,
        user=args.user,
        dynamic_user=args.dynamic_user,
        print_only=args.print_only,
    )


def cmd_alert(args: argparse.Namespace) -> int:
    """Send a test event to every notifier of the config file."""
    from pimon.notifiers import run_test

    return run_test(args.config)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="pimon", description="Know within seconds which machines are up, struggling or gone."
    )
    parser.add_argument("--version", action="version", version=f"pimon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("agent", help="run the node agent (heartbeat RPC, pushes)")
    add_settings(p, "agent")
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser("monitor", help="run the monitor (polls, detects, serves API)")
    add_settings(p, "monitor")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("status", help="print a table of node states")
    add_settings(p, "client")
    p.add_argument("--json", action="store_true", help="print the node views as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("nodes", help="register or deregister nodes at runtime")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="register a pull node: NAME HOST[:PORT]")
    add.add_argument("name", type=_node_name, metavar="NAME")
    add.add_argument("address", metavar="HOST[:PORT]")
    remove = actions.add_parser("remove", help="deregister a node (its history stays)")
    remove.add_argument("name", type=_node_name, metavar="NAME")
    for q in (add, remove):
        add_settings(q, "client")
        q.set_defaults(func=cmd_nodes)

    add_history_and_watch(sub)

    p = sub.add_parser("demo", help="run a monitor and N agents on loopback")
    p.add_argument("--nodes", type=_positive_int, default=5, metavar="N", help="agents (5)")
    p.add_argument("--chaos", action="store_true", help="kill and restart an agent every ~20 s")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("config", help="show the effective settings or check a config file")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="print each setting, its value and where it came from")
    show.add_argument("--config", dest="show_config", metavar="F", help="TOML config file")
    parts = show.add_subparsers(dest="section", metavar="SECTION")
    for section in config.SECTIONS:
        add_settings(parts.add_parser(section, help=f"only [{section}], with its flags"), section)
    check = actions.add_parser("check", help="validate a config file (exit 2 naming key and line)")
    check.add_argument("file", metavar="F")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("install-service", help="start the agent or the monitor on boot (systemd)")
    p.add_argument("part", choices=("agent", "monitor"))
    p.add_argument("--print", dest="print_only", action="store_true", help="only print the unit")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--user", default="pimon", help="system user to run as, created if missing")
    who.add_argument("--dynamic-user", action="store_true", help="run as DynamicUser=yes")
    p.add_argument("--root", default="/", metavar="DIR", help="install into this tree (/)")
    p.set_defaults(func=cmd_install_service)

    p = sub.add_parser("alert", help="check the notifiers of [[alerts]]")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    test = actions.add_parser("test", help="send a test event to every notifier (1 if one fails)")
    test.add_argument("--config", metavar="F", help="TOML config file (default: as the monitor)")
    test.set_defaults(func=cmd_alert)
    return parser


def _node_name(text: str) -> str:
    try:
        return parse.node_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 1000, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pimon`` command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except (ConfigError, UsageError) as e:
        print(f"pimon {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if e.name in ("aiohttp", "msgspec", "rich"):
            print(
                f"pimon {args.command}: needs {e.name}: pip install 'pimon[monitor]'",
                file=sys.stderr,
            )
            return 2
        raise
    except KeyboardInterrupt:
        return 130
