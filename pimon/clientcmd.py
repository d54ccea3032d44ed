"""Client commands: ``status``, ``history``, ``watch`` and ``nodes`` against a monitor's API.

All four take the ``[client]`` settings. ``pimon.cli`` imports this module only
when one of them runs, and the HTTP client and renderers are imported inside the
functions below, so ``pimon status`` (benchmarked) loads no more than it needs.
"""

from __future__ import annotations

import argparse
import sys

from pimon import parse
from pimon.cli import UsageError, read_token, settings


def status(args: argparse.Namespace) -> int:
    """Print the cluster's state."""
    from pimon.report import status as print_status

    s = settings(args, "client")
    return print_status(s.monitor, read_token(s.token_file), as_json=args.json)


def nodes(args: argparse.Namespace) -> int:
    """Register or deregister a node at runtime."""
    from pimon.client import ApiError, MonitorUnreachable, request
    from pimon.parse import address

    s = settings(args, "client")
    token = read_token(s.token_file)
    try:
        if args.action == "add":
            try:
                where = address(7071)(args.address)
            except ValueError as e:
                raise UsageError(f"address {args.address!r}: {e}") from None
            view = request(
                s.monitor,
                f"/v1/nodes/{args.name}",
                method="PUT",
                token=token,
                body={"address": where},
            )
            print(f"{view['name']}: registered at {view['address']} ({view['state']})")
        else:
            answer = request(s.monitor, f"/v1/nodes/{args.name}", method="DELETE", token=token)
            print(f"{args.name}: deregistered")
            if answer.get("note"):
                print(f"note: {answer['note']}")
    except MonitorUnreachable as e:
        print(f"pimon nodes: {e}", file=sys.stderr)
        return 2
    except ApiError as e:
        print(f"pimon nodes: {e}", file=sys.stderr)
        return 1
    return 0


def history(args: argparse.Namespace) -> int:
    """Print state changes, outage durations and uptime per window."""
    from pimon.history import run as run_history

    s = settings(args, "client")
    try:
        since = parse.duration(args.since)
    except ValueError as e:
        raise UsageError(f"--since {args.since!r}: {e} (use an age like 90m, 24h or 7d)") from None
    return run_history(
        s.monitor, read_token(s.token_file), node=args.node, since_s=since, as_json=args.json
    )


def watch(args: argparse.Namespace) -> int:
    """Show a live table of node states until Ctrl-C."""
    from pimon.watch import run as run_watch

    s = settings(args, "client")
    return run_watch(s.monitor, read_token(s.token_file))
