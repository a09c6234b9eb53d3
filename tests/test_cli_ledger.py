"""``medsilo ledger show|verify``: output, JSON, and exit codes (0 intact, 2 corrupt)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medsilo.cli.ledger import app
from medsilo.privacy.events import DpSgdEvent, SkellamEvent
from medsilo.privacy.ledger import LEDGER_FILENAME, Budget, Ledger, Release

runner = CliRunner()


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    site = tmp_path / "hospital-a"
    with Ledger.open(site / LEDGER_FILENAME, site="hospital-a", budget=Budget(8.0, 1e-5)) as led:
        for r in range(3):
            event = DpSgdEvent(sample_rate=0.02, noise_multiplier=1.1, steps=50)
            entry = led.record(
                Release.of_payload(round=r, event=event, clip=2.0, payload=b"u" * (100 + r))
            )
            if r < 2:
                led.mark_sent(entry.seq)
    return site


def test_show_table(site_dir: Path) -> None:
    result = runner.invoke(app, ["show", str(site_dir)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Ledger of site hospital-a" in out
    assert "dp_sgd" in out and "1.1" in out and "0.02" in out
    assert "budget     epsilon 8, delta 1e-05" in out and "remaining" in out
    with Ledger.open(site_dir) as ledger:
        rows = ledger.releases()
        assert f"{rows[-1].epsilon_after:.4f}" in out
        assert rows[0].hash[:8] in out


def test_show_json(site_dir: Path) -> None:
    result = runner.invoke(app, ["show", str(site_dir / LEDGER_FILENAME), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    with Ledger.open(site_dir) as ledger:
        assert data["epsilon_spent"] == ledger.epsilon_spent()
        assert data["head"] == {"seq": 4, "hash": ledger.head()[1]}
    assert data["site"] == "hospital-a" and data["budget"] == {"epsilon": 8.0, "delta": 1e-5}
    assert data["epsilon_remaining"] == pytest.approx(8.0 - data["epsilon_spent"])
    kinds = [e["kind"] for e in data["entries"]]
    assert kinds == ["budget", "release", "release", "release"]
    assert [e["sent_at"] is not None for e in data["entries"][1:]] == [True, True, False]
    assert data["entries"][1]["payload_bytes"] == 100 and data["entries"][1]["clip"] == 2.0


def test_show_with_another_accountant(site_dir: Path) -> None:
    rdp = json.loads(runner.invoke(app, ["show", str(site_dir), "--json"]).output)
    pld = json.loads(
        runner.invoke(app, ["show", str(site_dir), "--json", "--accountant", "pld"]).output
    )
    assert pld["accountant"] == "pld" and pld["epsilon_spent"] < rdp["epsilon_spent"]
    bad = runner.invoke(app, ["show", str(site_dir), "--accountant", "moments"])
    assert bad.exit_code == 2 and "accountant must be one of" in bad.output


def test_verify_intact(site_dir: Path) -> None:
    result = runner.invoke(app, ["verify", str(site_dir)])
    assert result.exit_code == 0, result.output
    assert "ledger intact" in result.output and "3 releases" in result.output
    data = json.loads(runner.invoke(app, ["verify", str(site_dir), "--json"]).output)
    assert data["ok"] is True and data["rows"] == 4 and data["releases"] == 3


def test_verify_edited_row_exits_2_naming_the_row(site_dir: Path) -> None:
    db = sqlite3.connect(site_dir / LEDGER_FILENAME, isolation_level=None)
    db.execute("DROP TRIGGER entries_no_update")
    db.execute("UPDATE entries SET noise_multiplier = 9.0 WHERE seq = 3")
    db.close()
    for command in ("verify", "show"):
        result = runner.invoke(app, [command, str(site_dir)])
        assert result.exit_code == 2, result.output
        assert "error:" in result.output and "row 3" in result.output
        assert "Traceback" not in result.output


def test_verify_missing_or_garbage_exits_2(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["verify", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no ledger at" in missing.output
    garbage = tmp_path / LEDGER_FILENAME
    garbage.write_bytes(b"\x00garbage" * 512)
    result = runner.invoke(app, ["verify", str(tmp_path)])
    assert result.exit_code == 2 and "not a readable SQLite ledger" in result.output
    assert garbage.read_bytes() == b"\x00garbage" * 512  # left as it was, for investigation


def test_show_lists_outcomes_and_the_colluders_epsilon(tmp_path: Path) -> None:
    planned, own = SkellamEvent(9e4, 30.0, 900.0, 0.1), SkellamEvent(3e4, 30.0, 900.0, 0.1)
    with Ledger.open(tmp_path / "site", site="A", budget=Budget(50.0, 1e-5)) as ledger:
        entry = ledger.record(
            Release.of_payload(round=1, event=planned, clip=1.0, payload=b"m", collusion_event=own)
        )
        ledger.record_outcome(entry.seq, SkellamEvent(1.2e5, 30.0, 900.0, 0.1), note="4 shares")
        colluding = ledger.epsilon_spent(view="collusion")
    result = CliRunner().invoke(app, ["show", str(tmp_path / "site")], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "→#2" in result.output and f"colluding  {colluding:.4g}" in result.output
    shown = CliRunner().invoke(app, ["show", str(tmp_path / "site"), "--json"])
    assert json.loads(shown.output)["epsilon_spent_collusion"] == pytest.approx(colluding)
