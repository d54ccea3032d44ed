"""`pimon install-service`: the unit, the starter config, enabling, and systemd's own verdict."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pimon import config
from pimon.cli import main
from pimon.configcmd import check, starter_config
from pimon.service import install, render_unit, systemd_quote
from tests.interop import require_tool

PYTHON = os.path.abspath(sys.executable)


def directives(unit: str) -> dict[str, list[str]]:
    """Return ``Section.Key`` -> every value, in order (keys may repeat in a unit)."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in unit.splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(f"{section}.{key}", []).append(value)
    return out


class Recorder:
    """Stand-in for running commands: records them, answers with fixed exit codes."""

    def __init__(self, *codes: int) -> None:
        self.codes = list(codes)
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(argv)
        return self.codes.pop(0) if self.codes else 0


def test_agent_unit_is_hardened_but_can_read_the_hardware() -> None:
    d = directives(render_unit("agent", python=PYTHON, groups=["video"]))
    assert d["Service.ExecStart"] == [
        f"{PYTHON} -m pimon agent --config /etc/pimon/pimon.toml --state-dir /var/lib/pimon"
    ]
    for key, value in {
        "Unit.After": "network-online.target",
        "Unit.Wants": "network-online.target",
        "Service.User": "pimon",
        "Service.StateDirectory": "pimon",
        "Service.ProtectSystem": "strict",
        "Service.NoNewPrivileges": "yes",
        "Service.Restart": "on-failure",
        "Service.ProtectKernelTunables": "yes",  # /sys read-only, still readable
        "Service.SupplementaryGroups": "video",  # vcgencmd's /dev/vchiq, /dev/vcio
        "Install.WantedBy": "multi-user.target",
    }.items():
        assert d[key] == [value], key
    assert "Service.DynamicUser" not in d
    # Each of these would hide what the agent reads: /dev/vchiq, or /proc/stat and meminfo.
    for hiding in ("PrivateDevices", "ProtectClock", "DevicePolicy", "DeviceAllow", "ProcSubset"):
        assert f"Service.{hiding}" not in d, hiding


def test_monitor_unit_keeps_its_database_in_the_state_directory() -> None:
    d = directives(render_unit("monitor", python=PYTHON, dynamic_user=True))
    assert d["Service.ExecStart"] == [
        f"{PYTHON} -m pimon monitor --config /etc/pimon/pimon.toml --db /var/lib/pimon/monitor.db"
    ]
    assert d["Service.DynamicUser"] == ["yes"]
    assert d["Service.User"] == ["pimon"]  # both units share one dynamic user and state dir
    assert d["Service.PrivateDevices"] == ["yes"]
    assert "Service.SupplementaryGroups" not in d


def test_a_venv_in_a_home_directory_stays_readable() -> None:
    d = directives(render_unit("agent", python="/home/pi/.venv/bin/python"))
    assert d["Service.ProtectHome"] == ["read-only"]
    assert directives(render_unit("agent", python=PYTHON))["Service.ProtectHome"] == [
        "read-only" if PYTHON.startswith(("/home/", "/root/")) else "yes"
    ]


@pytest.mark.parametrize(
    ("arg", "quoted"),
    [
        ("/usr/bin/python3", "/usr/bin/python3"),
        ("/opt/my pimon/bin/python", '"/opt/my pimon/bin/python"'),
        ("/opt/100%/python", "/opt/100%%/python"),
        ("/opt/$HOME/python", "/opt/$$HOME/python"),
        ('/opt/a"b/python', '"/opt/a\\"b/python"'),
    ],
)
def test_systemd_quote(arg: str, quoted: str) -> None:
    assert systemd_quote(arg) == quoted


def test_starter_config_passes_check_and_uncommented_equals_the_defaults(tmp_path: Path) -> None:
    starter = tmp_path / "pimon.toml"
    starter.write_text(starter_config())
    assert check(str(starter), out=io.StringIO(), err=io.StringIO()) == 0
    # Uncommenting every setting that has a default must give a valid file of the defaults.
    lines = [
        ln[1:] if ln.startswith("#") and " = " in ln else ln for ln in starter_config().split("\n")
    ]
    data = tomllib.loads("\n".join(lines))
    for name in config.SECTIONS:
        resolved = config.resolve(name, {}, {}, data)
        defaults = config.resolve(name, {}, {}, {})
        for s in config.section(name):
            assert resolved.values[s.name] == defaults.values[s.name], s.name
            assert (resolved.sources[s.name] == "file") == (s.default is not None), s.name


def test_install_without_systemd_writes_files_and_prints_the_commands(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/group").write_text("root:x:0:\nvideo:x:44:\n")
    assert install("agent", root=str(tmp_path), python=PYTHON, out=out, err=err) == 0
    unit = (tmp_path / "etc/systemd/system/pimon-agent.service").read_text()
    assert unit == render_unit("agent", python=PYTHON, groups=["video"])
    starter = tmp_path / "etc/pimon/pimon.toml"
    assert starter.read_text() == starter_config()
    assert oct(starter.stat().st_mode & 0o777) == "0o644"
    assert out.getvalue().splitlines()[-4:] == [
        "systemd is not running this system; to start on boot, run:",
        "  useradd --system --no-create-home --shell /usr/sbin/nologin"
        " --home-dir /var/lib/pimon pimon",
        "  systemctl daemon-reload",
        "  systemctl enable --now pimon-agent.service",
    ]
    assert err.getvalue() == ""


def test_install_with_systemd_runs_the_commands_and_keeps_an_existing_config(
    tmp_path: Path,
) -> None:
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    (tmp_path / "etc/pimon").mkdir(parents=True)
    (tmp_path / "etc/passwd").write_text(
        "root:x:0:0::/root:/bin/sh\npimon:x:998:998::/:/bin/false\n"
    )
    mine = tmp_path / "etc/pimon/pimon.toml"
    mine.write_text("[monitor]\ninsecure = true\n")
    run = Recorder()
    out = io.StringIO()
    assert install("monitor", root=str(tmp_path), python=PYTHON, run=run, out=out) == 0
    assert mine.read_text() == "[monitor]\ninsecure = true\n"
    assert f"kept {mine}" in out.getvalue()
    assert run.calls == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "pimon-monitor.service"],
    ]
    assert (tmp_path / "etc/systemd/system/pimon-monitor.service").exists()


def test_a_failing_command_stops_the_install(tmp_path: Path) -> None:
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    run, err = Recorder(0, 1), io.StringIO()
    code = install(
        "agent", root=str(tmp_path), dynamic_user=True, run=run, out=io.StringIO(), err=err
    )
    assert code == 1
    assert run.calls == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "pimon-agent.service"],
    ]
    assert "systemctl enable --now pimon-agent.service failed (exit 1)" in err.getvalue()


def test_print_only_prints_the_unit_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["install-service", "monitor", "--print", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out == render_unit("monitor", python=PYTHON)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_root_and_bad_user_are_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["install-service", "agent", "--root", str(blocker)]) == 1
    assert "(run it as root, or use --print)" in capsys.readouterr().err
    assert main(["install-service", "agent", "--root", str(tmp_path), "--user", "Bad User"]) == 2
    assert "--user: bad user name 'Bad User'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [blocker]


@pytest.mark.interop
@pytest.mark.parametrize("dynamic_user", [False, True])
def test_units_pass_systemd_analyze_verify(tmp_path: Path, dynamic_user: bool) -> None:
    analyze = require_tool("systemd-analyze")
    # A space in the interpreter's path proves ExecStart's quoting is systemd's.
    spaced = tmp_path / "my venv" / "python"
    spaced.parent.mkdir()
    spaced.symlink_to(PYTHON)
    units = []
    for part, python in (("agent", PYTHON), ("monitor", str(spaced))):
        unit = tmp_path / f"pimon-{part}.service"
        groups = ["video"] if part == "agent" else []
        unit.write_text(render_unit(part, python=python, dynamic_user=dynamic_user, groups=groups))
        units.append(str(unit))
    done = subprocess.run(
        [analyze, "verify", *units], capture_output=True, text=True, timeout=60, check=False
    )
    # verify exits 0 even for unknown keys and bad values, so its messages must be empty too.
    about_us = [ln for ln in (done.stdout + done.stderr).splitlines() if "pimon" in ln]
    assert done.returncode == 0 and about_us == [], done.stdout + done.stderr
    for unit in units:
        security = subprocess.run(
            [analyze, "security", "--offline=true", "--threshold=30", unit],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert security.returncode == 0, security.stdout[-2000:] + security.stderr


@pytest.mark.interop
def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    unit = tmp_path / "pimon-agent.service"
    unit.write_text(render_unit("agent", python=str(tmp_path / "no-such-python")))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    assert "no-such-python" in done.stderr
