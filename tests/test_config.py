"""The config file: precedence, `pimon config show|check`, and every error naming key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pimon import config
from pimon.cli import main
from pimon.config import ConfigError, line_of, resolve
from pimon.parse import NodeSpec


@pytest.fixture(autouse=True)
def no_outside_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a real /etc/pimon/pimon.toml and the caller's PIMON_* variables out of the tests."""
    monkeypatch.setattr(config, "DEFAULT_CONFIG", str(tmp_path / "absent" / "pimon.toml"))
    for name in ("PIMON_CONFIG", "PIMON_MONITOR", "PIMON_NODES", "PIMON_READ_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str, name: str = "pimon.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def parse_file(text: str) -> dict:
    import tomllib

    return tomllib.loads(text)


# Per section one setting with all four layers: (flag, (env var, value), file), then what
# each layer gives (flag, env, file, default).
PRECEDENCE = {
    "agent": (
        "monitor",
        (["http://flag:1"], ("PIMON_MONITOR", "http://env:1,http://env:2"), ["http://file:1"]),
        (["http://flag:1"], ["http://env:1", "http://env:2"], ["http://file:1"], []),
    ),
    "monitor": (
        "node",
        (["f=10.0.0.1"], ("PIMON_NODES", "e=10.0.0.2:9"), ["x=10.0.0.3"]),
        (
            [NodeSpec("f", "10.0.0.1", 7071)],
            [NodeSpec("e", "10.0.0.2", 9)],
            [NodeSpec("x", "10.0.0.3", 7071)],
            [],
        ),
    ),
    "client": (
        "monitor",
        ("http://flag:1/", ("PIMON_MONITOR", "http://env:1"), "http://file:1"),
        ("http://flag:1", "http://env:1", "http://file:1", "http://127.0.0.1:7070"),
    ),
}


@pytest.mark.parametrize("section", sorted(PRECEDENCE))
def test_flag_beats_env_beats_file_beats_default(section: str) -> None:
    key, (flag, (var, value), file), expected = PRECEDENCE[section]
    data = {section: {key: file}}
    environ = {var: value}
    layers = [({key: flag}, environ, data), ({}, environ, data), ({}, {}, data), ({}, {}, {})]
    got = [resolve(section, *layer) for layer in layers]
    assert tuple(r.values[key] for r in got) == expected
    assert [r.sources[key] for r in got] == ["flag", f"env {var}", "file", "default"]


def test_settings_without_env_skip_that_layer() -> None:
    data = {"monitor": {"interval": 3, "max_nodes": 50}}
    r = resolve("monitor", {"interval": "2"}, {"PIMON_INTERVAL": "9"}, data)
    assert (r.interval, r.sources["interval"]) == (2.0, "flag")
    assert (r.max_nodes, r.sources["max_nodes"]) == (50, "file")
    assert (r.down_pause, r.sources["down_pause"]) == (3.0, "default")


def test_defaults_are_parsed_like_any_other_value() -> None:
    agent, monitor = resolve("agent", {}, {}, {}), resolve("monitor", {}, {}, {})
    assert (agent.listen, agent.mounts, agent.interval) == (("0.0.0.0", 7071), ["/"], 1.0)
    assert monitor.listen == ("0.0.0.0", 7070)
    assert agent.name is None


def test_swap_thresholds_come_from_the_file() -> None:
    r = resolve("agent", {}, {}, {"agent": {"swap_pages_per_s": 250, "swap_sustain_s": 30}})
    assert (r.swap_pages_per_s, r.swap_sustain_s) == (250.0, 30.0)


def show_rows(out: str) -> dict[str, tuple[str, str]]:
    """Split `config show` output into setting -> (value, source) by the header's columns."""
    header, *lines = out.splitlines()[1:]
    value_at, source_at = header.index("VALUE"), header.index("SOURCE")
    return {
        line[:value_at].strip(): (line[value_at:source_at].strip(), line[source_at:])
        for line in lines
    }


def test_config_show_names_the_source_of_each_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, '# mine\n[agent]\nlisten = ":9000"\ninterval = 5\n')
    monkeypatch.setenv("PIMON_MONITOR", "http://m1:7070,http://m2:7070")
    assert main(["config", "show", "agent", "--interval", "2", "--config", path]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"config file: {path}"
    rows = show_rows(out)
    assert rows["agent.interval"] == ("2.0", "flag --interval")
    assert rows["agent.monitor"] == ('["http://m1:7070", "http://m2:7070"]', "env PIMON_MONITOR")
    assert rows["agent.listen"] == ('"0.0.0.0:9000"', f"file {path}:3")
    assert rows["agent.log_level"] == ('"info"', "default")
    assert set(rows) == {f"agent.{s.name}" for s in config.section("agent")}


def test_config_show_lists_every_section_and_never_a_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, '[monitor]\nread_token = "s3cret-read-token"\n')
    monkeypatch.setenv("PIMON_CONFIG", path)
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out
    rows = show_rows(out)
    assert rows["monitor.read_token"] == ("(secret)", f"file {path}:2")
    assert set(rows) == {f"{s.section}.{s.name}" for s in config.SETTINGS}


def test_config_show_without_a_file_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "client"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"config file: none ({config.DEFAULT_CONFIG} does not exist)\n")
    assert show_rows(out)["client.monitor"] == ('"http://127.0.0.1:7070"', "default")


def test_config_check_accepts_a_valid_file_and_alerts_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        "[agent]\nmounts = ['/', '/data']\n\n[monitor]\nnode = ['pi1=10.0.0.1']\n"
        "insecure = true\n\n[[alerts]]\nkind = 'webhook'\nurl = 'http://hooks.internal/x'\n"
        "events = ['node_down']\n\n[[alerts]]\nkind = 'ntfy'\nurl = 'https://ntfy.sh/t'\n",
    )
    assert main(["config", "check", path]) == 0
    assert capsys.readouterr().out == "ok\n"


def test_config_check_names_every_problem_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        "[agent]\n"  # 1
        "interval = 2\n"  # 2
        "intervall = 3\n"  # 3
        "mounts = ['/', 'data']\n"  # 4
        "read_token = 'abcdefghijk'\n"  # 5
        "\n"  # 6
        "[monitr]\n"  # 7
        "x = 1\n"  # 8
        "[monitor]\n"  # 9
        "threshold = { a = 1 }\n"  # 10
        "insecure = 'maybe'\n"  # 11
        "[alerts]\n",  # 12
    )
    assert main(["config", "check", path]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}:3: unknown setting agent.intervall (did you mean interval?)",
        f"{path}:4: agent.mounts: must be an absolute path (got 'data')",
        f"{path}:5: unknown setting agent.read_token (it belongs in [monitor])",
        f"{path}:7: unknown table monitr (did you mean monitor?)",
        f"{path}:10: monitor.threshold: must be a single value, not a table (got {{'a': 1}})",
        f"{path}:11: monitor.insecure: must be true or false (got 'maybe')",
        f"{path}:12: alerts must be an array of tables: [[alerts]]",
    ]


def test_toml_syntax_error_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[agent]\ninterval = \n")
    assert main(["config", "check", path]) == 2
    assert capsys.readouterr().err.startswith(f"{path}:2: TOML syntax error: ")
    assert main(["monitor", "--config", path]) == 2  # the daemon refuses to start
    assert f"pimon monitor: error: {path}:2: TOML syntax error: " in capsys.readouterr().err


@pytest.mark.parametrize(
    "case",
    [
        (
            ["agent"],
            "[agent]\nname = 'pi'\ninterval = 0\n",
            {},
            "{path}:3: agent.interval: must be between 0.05 and 3600 seconds (got 0)",
        ),
        (["monitor"], "[monitor]\npolls = 3\n", {}, "{path}:2: unknown setting monitor.polls"),
        (
            ["status"],
            "[client]\nmonitor = 'http://m:1'\n\n# oops\n[clients]\n",
            {},
            "{path}:5: unknown table clients (did you mean client?)",
        ),
        (
            ["config", "show", "client"],
            "",
            {"PIMON_MONITOR": "ftp://x"},
            "PIMON_MONITOR: must be an http:// or https:// URL (got 'ftp://x')",
        ),
        (
            ["config", "show", "monitor", "--max-nodes", "0"],
            "",
            {},
            "--max-nodes: must be > 0 (got '0')",
        ),
    ],
)
def test_bad_values_fail_at_start_naming_setting_and_origin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], case
) -> None:
    argv, text, env, message = case
    path = write(tmp_path, text)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main([*argv, "--config", path]) == 2
    err = capsys.readouterr().err
    assert f": error: {message.format(path=path)}\n" in err, err


def test_a_bad_file_value_fails_even_when_a_flag_overrides_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[agent]\ninterval = 'fast'\n")
    assert main(["config", "show", "agent", "--interval", "2", "--config", path]) == 2
    assert f"{path}:2: agent.interval: must be a number (got 'fast')" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_missing_named_config_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    missing = str(tmp_path / "nope.toml")
    argv = ["agent"]
    if how == "flag":
        argv += ["--config", missing]
    else:
        monkeypatch.setenv("PIMON_CONFIG", missing)
    assert main(argv) == 2
    assert f"config file {missing}: No such file or directory" in capsys.readouterr().err
    assert main(["config", "check", missing]) == 2
    assert capsys.readouterr().err == f"config file {missing}: No such file or directory\n"


def test_list_where_one_value_belongs_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"agent\.interval: must be a single value, not a list"):
        resolve("agent", {}, {}, {"agent": {"interval": [1, 2]}})


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("[agent]\nname = 'a'\ninterval = 2\n", 3),
        ("# c\n[ agent ]  # the agent\n\n  interval=2\n", 4),
        ('[agent]\n"interval" = 2\n', 2),
        ("[monitor]\ninterval = 1\n[agent]\ninterval = 2\n", 4),
        ("agent.interval = 2\n", 1),
        ("title = 'x'\nagent = { name = 'a', interval = 2 }\n", 2),
        ("[agent]\nmounts = [\n  '/',\n]\ninterval = 2\n", 5),
        ("[monitor]\ninterval = 2\n", None),
    ],
)
def test_line_of_finds_every_way_to_write_a_key(text: str, line: int | None) -> None:
    parse_file(text)  # each case is valid TOML
    assert line_of(text, "agent", "interval") == line


def test_line_of_finds_tables_at_top_level() -> None:
    text = "# x\n\n[[alerts]]\nname = 'a'\n[agent]\n"
    assert line_of(text, None, "alerts") == 3
    assert line_of(text, None, "agent") == 5


def test_config_check_validates_alerts_tables_like_the_monitor_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        "[monitor]\n"  # 1
        "interval = 2\n"  # 2
        "\n"  # 3
        "[[alerts]]\n"  # 4
        "kind = 'webhook'\n"  # 5
        "url = 'http://hooks.internal/x'\n"  # 6
        "\n"  # 7
        "[[alerts]]\n"  # 8
        "kind = 'ntfy'\n"  # 9
        "url = 'https://ntfy.sh/t'\n"  # 10
        "min_severity = 'urgent'\n"  # 11
        "\n"  # 12
        "[agent]\n"  # 13
        "intervall = 3\n"  # 14
        "\n"  # 15
        "[[alerts]]\n"  # 16
        "kind = 'slack'\n",  # 17
    )
    assert main(["config", "check", path]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}:11: [[alerts]] #2, key min_severity: must be info, warning or critical"
        " (got 'urgent')",
        f"{path}:14: unknown setting agent.intervall (did you mean interval?)",
        f"{path}:16: [[alerts]] #3, key url: kind slack needs url",
    ]
    # The monitor refuses to start with the first of them, word for word.
    assert main(["monitor", "--config", path]) == 2
    assert f"pimon monitor: error: {err.splitlines()[0]}\n" in capsys.readouterr().err


def test_config_check_rejects_duplicate_notifier_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = "[[alerts]]\nname = 'ops'\nkind = 'slack'\nurl = 'http://a'\n"
    path = write(tmp_path, table + "\n" + table)
    assert main(["config", "check", path]) == 2
    assert capsys.readouterr().err == (
        f"{path}:7: [[alerts]] #2, key name: duplicate notifier name 'ops'\n"
    )
