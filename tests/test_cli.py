"""The command line: bad input exits 2 naming the value; status exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pimon.cli import main
from tests.conftest import Procs, run_pimon, states, wait_until


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["monitor", "--node", "pi1=10.0.0.1:99999"], "port 99999 out of range"),
        (["monitor", "--node", "pi1=10.0.0.1:http"], "bad port 'http'"),
        (["monitor", "--node", "bad name=10.0.0.1"], "invalid node name 'bad name'"),
        (["monitor", "--interval", "0"], "--interval"),
        (["monitor", "--interval", "-1"], "'-1'"),
        (["agent", "--interval", "fast"], "'fast'"),
        (["agent", "--listen", "0.0.0.0:70710"], "port 70710 out of range"),
        (["status", "--monitor", "ftp://x"], "--monitor"),
        (["monitor", "--node", "a=h1", "--node", "a=h2"], "duplicate node name(s): a"),
    ],
)
def test_bad_values_exit_2_naming_the_value(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert named in err, err


def test_unknown_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["monitor", "--frobnicate"])
    assert exit_info.value.code == 2
    assert "--frobnicate" in capsys.readouterr().err


def test_bad_line_in_nodes_file_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = tmp_path / "nodes"
    nodes.write_text("# my pis\npi1=10.0.0.1\n\npi2=10.0.0.2:notaport\n")
    assert main(["monitor", "--nodes-file", str(nodes)]) == 2
    assert f"{nodes}:4: bad port 'notaport'" in capsys.readouterr().err


def test_env_nodes_are_comma_separated(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIMON_NODES", "a=127.0.0.1:1,b=bad host")
    assert main(["monitor"]) == 2
    assert "PIMON_NODES" in capsys.readouterr().err


def test_status_exit_codes_and_json(procs: Procs) -> None:
    agent = procs.agent("pi-1")
    url = procs.monitor(f"--node=pi-1={agent.address}")
    wait_until(lambda: states(url)["pi-1"] == "up", 20, "up")
    ok = run_pimon("status", "--monitor", url)
    assert ok.returncode == 0, ok.stderr
    assert "pi-1" in ok.stdout and "up" in ok.stdout and "1 up" in ok.stdout
    as_json = run_pimon("status", "--monitor", url, "--json")
    views = json.loads(as_json.stdout)
    assert as_json.returncode == 0 and views[0]["name"] == "pi-1" and views[0]["state"] == "up"

    agent.kill()
    wait_until(lambda: states(url)["pi-1"] == "down", 20, "down")
    bad = run_pimon("status", "--monitor", url)
    assert bad.returncode == 1 and "down" in bad.stdout


def test_status_exits_2_when_monitor_unreachable() -> None:
    result = run_pimon("status", "--monitor", "http://127.0.0.1:1")
    assert result.returncode == 2
    assert "cannot reach monitor at http://127.0.0.1:1" in result.stderr


def test_monitor_url_comes_from_environment(procs: Procs) -> None:
    url = procs.monitor()
    result = run_pimon("status", env={**__import__("os").environ, "PIMON_MONITOR": url})
    assert result.returncode == 0 and "no nodes" in result.stdout
