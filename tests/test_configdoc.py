"""docs/configuration.md is generated from the settings table and must be committed current."""

from __future__ import annotations

from pathlib import Path

import pytest

from pimon import config, parse
from pimon.config import Setting
from pimon.configcmd import main, render_docs, type_name

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_committed_configuration_doc_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == render_docs(), (
        "docs/configuration.md is stale: run `make docs` and commit it"
    )


def test_every_setting_has_a_row_in_its_section() -> None:
    doc = render_docs()
    for s in config.SETTINGS:
        table = doc.split(f"## `[{s.section}]`", 1)[1].split("\n## ", 1)[0]
        rows = [line for line in table.splitlines() if line.startswith(f"| `{s.name}` |")]
        assert len(rows) == 1, s
        cells = [c.strip() for c in rows[0].strip("|").split(" | ")]
        assert cells[4] == (f"`{s.option}`" + (" (repeatable)" if s.multi else "")) or not s.flag
        assert cells[3].startswith(f"`{s.env}`") if s.env else cells[3] == "—"
        assert cells[5] == s.help


def test_make_docs_writes_the_page(tmp_path: Path) -> None:
    target = tmp_path / "configuration.md"
    assert main([str(target)]) == 0
    assert target.read_text(encoding="utf-8") == render_docs()


def test_a_parser_without_a_documented_type_fails_loudly() -> None:
    def shiny(raw: object) -> str:
        return str(raw)

    with pytest.raises(KeyError, match=r"no documented type for parser 'shiny' of agent\.x"):
        type_name(Setting("x", "agent", shiny, None, "a new setting"))
    assert type_name(Setting("x", "agent", parse.url, [], "", multi=True)) == (
        "array of strings (http(s) URL)"
    )
