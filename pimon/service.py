"""Start the agent or the monitor on boot: a hardened systemd unit, a starter config, enable.

Every path hangs off a root prefix (default ``/``), so tests install into a
temporary tree and image builders into a mounted one. Commands run only when
systemd runs that tree (``ROOT/run/systemd/system`` exists); otherwise they are
printed for the user to run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from pimon.config import DEFAULT_CONFIG
from pimon.configcmd import starter_config

PARTS = ("agent", "monitor")
STATE_DIR = "/var/lib/pimon"
UNIT_DIR = "/etc/systemd/system"
USERADD = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# vcgencmd talks to the firmware through /dev/vchiq (Pi 4 and older) or /dev/vcio
# (Pi 5); both belong to group video.
AGENT_GROUPS = ("video",)
DESCRIPTIONS = {
    "agent": "pimon agent: heartbeat RPC and health of this node",
    "monitor": "pimon monitor: failure detection, API, dashboard and /metrics",
}

Runner = Callable[[list[str]], int]


def unit_name(part: str) -> str:
    """Return the systemd unit name of ``part``, e.g. ``pimon-agent.service``."""
    return f"pimon-{part}.service"


def systemd_quote(arg: str) -> str:
    """Quote one ExecStart argument for systemd (``%`` and ``$`` are specifiers there)."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[\w@%+=:,./$-]+", escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_args(part: str, python: str) -> list[str]:
    """Return the daemon's command line: this interpreter, ``-m pimon``, config and state."""
    args = [python, "-m", "pimon", part, "--config", DEFAULT_CONFIG]
    # The service user is not root, so the state would default to its (read-only) home.
    if part == "agent":
        return [*args, "--state-dir", STATE_DIR]
    return [*args, "--db", f"{STATE_DIR}/monitor.db"]


def render_unit(
    part: str,
    *,
    python: str,
    user: str = "pimon",
    dynamic_user: bool = False,
    groups: Sequence[str] = (),
) -> str:
    """Return the unit file text for ``part`` ("agent" or "monitor")."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}: expected agent or monitor")
    # A venv in a home directory must stay readable; it cannot be hidden.
    under_home = python.startswith(("/home/", "/root/"))
    lines = [
        f"# Written by `pimon install-service {part}`; run it again to regenerate.",
        "[Unit]",
        f"Description={DESCRIPTIONS[part]}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=exec",
        "ExecStart=" + " ".join(systemd_quote(a) for a in exec_args(part, python)),
        "Restart=on-failure",
        "RestartSec=5",
        # SIGTERM makes the agent announce it is leaving: a stop shows as `left`, not `down`.
        "TimeoutStopSec=15",
        f"User={user}",
        *(["DynamicUser=yes"] if dynamic_user else []),
        *(f"SupplementaryGroups={g}" for g in groups),
        "StateDirectory=pimon",
        "StateDirectoryMode=0700",
        "UMask=0077",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ProtectHome={'read-only' if under_home else 'yes'}",
        "PrivateTmp=yes",
        "PrivateMounts=yes",
        "RemoveIPC=yes",
        # Read-only, not hidden: the agent still reads /proc, /sys/class/thermal and hwmon.
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged @resources",
        "SystemCallErrorNumber=EPERM",
        "CapabilityBoundingSet=",
    ]
    if part == "monitor":
        # Only the agent needs devices (vcgencmd); ProtectClock would also close them.
        lines += ["PrivateDevices=yes", "ProtectClock=yes"]
    lines += ["", "[Install]", "WantedBy=multi-user.target"]
    return "\n".join(lines) + "\n"


def under(root: str, path: str) -> str:
    """Return absolute ``path`` inside the tree at ``root``."""
    return os.path.join(root, path.lstrip("/"))


def _names_in(root: str, table: str) -> set[str]:
    try:
        with open(under(root, table), encoding="utf-8", errors="replace") as f:
            return {line.split(":", 1)[0] for line in f if ":" in line}
    except OSError:
        return set()


def commands(part: str, *, user: str, dynamic_user: bool, root: str) -> list[list[str]]:
    """Return the commands that create the user (if missing), enable and start the unit."""
    out: list[list[str]] = []
    if not dynamic_user and user not in _names_in(root, "/etc/passwd"):
        # A system user with no login and no home of its own: the state dir is its home.
        out.append([*USERADD, "--home-dir", STATE_DIR, user])
    out.append(["systemctl", "daemon-reload"])
    out.append(["systemctl", "enable", "--now", unit_name(part)])
    return out


def run_command(argv: list[str]) -> int:
    """Run a command, return its exit status (127 when it cannot be started)."""
    try:
        return subprocess.run(argv, check=False).returncode
    except OSError:
        return 127


def install(
    part: str,
    *,
    root: str = "/",
    user: str = "pimon",
    dynamic_user: bool = False,
    print_only: bool = False,
    python: str | None = None,
    run: Runner = run_command,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Write the unit and a starter config under ``root``, then enable and start the unit."""
    out, err = out or sys.stdout, err or sys.stderr
    python = os.path.abspath(python or sys.executable)
    if not USER_RE.match(user):
        print(f"pimon install-service: error: --user: bad user name {user!r}", file=err)
        return 2
    groups = [g for g in AGENT_GROUPS if part == "agent" and g in _names_in(root, "/etc/group")]
    unit = render_unit(part, python=python, user=user, dynamic_user=dynamic_user, groups=groups)
    if print_only:
        print(unit, end="", file=out)
        return 0
    if python.startswith(("/home/", "/root/")):
        print(
            f"note: {python} is in a home directory; the user {user} must be able to read it "
            "(install pimon system-wide or under /opt instead)",
            file=err,
        )
    unit_path = under(root, f"{UNIT_DIR}/{unit_name(part)}")
    config_path = under(root, DEFAULT_CONFIG)
    try:
        _write(unit_path, unit)
        print(f"wrote {unit_path}", file=out)
        if os.path.exists(config_path):
            print(f"kept {config_path}", file=out)
        else:
            _write(config_path, starter_config())
            print(f"wrote {config_path}", file=out)
    except OSError as e:
        print(
            f"pimon install-service: error: {e.filename}: {e.strerror} "
            "(run it as root, or use --print)",
            file=err,
        )
        return 1
    todo = commands(part, user=user, dynamic_user=dynamic_user, root=root)
    if not os.path.isdir(under(root, "/run/systemd/system")):
        print("systemd is not running this system; to start on boot, run:", file=out)
        for argv in todo:
            print("  " + shlex.join(argv), file=out)
        return 0
    for argv in todo:
        print("+ " + shlex.join(argv), file=out)
        status = run(argv)
        if status != 0:
            print(
                f"pimon install-service: error: {shlex.join(argv)} failed (exit {status})", file=err
            )
            return 1
    return 0


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
