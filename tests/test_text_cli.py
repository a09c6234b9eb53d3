"""``medsilo text check``: counts, and exit 2 with file:line on bad input."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from medsilo.cli.main import app

runner = CliRunner()


def test_check_counts_and_json(tmp_path: Path) -> None:
    path = tmp_path / "a.tsv"
    path.write_text("a\tO\nb\tB-X\nc\tI-X\n\nd\tB-Y\n", encoding="utf-8")
    result = runner.invoke(app, ["text", "check", str(path), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert (row["sentences"], row["tokens"], row["entities"]) == (2, 4, 2)
    assert row["types"] == ["X", "Y"]


def test_check_bad_input_exits_2_with_location(tmp_path: Path) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text("a\tO\nb\tI-X\n", encoding="utf-8")
    result = runner.invoke(app, ["text", "check", str(path)])
    assert result.exit_code == 2
    assert "bad.tsv:2" in result.output and "Traceback" not in result.output
    repaired = runner.invoke(app, ["text", "check", str(path), "--repair"])
    assert repaired.exit_code == 0 and "1 tags repaired" in repaired.output
