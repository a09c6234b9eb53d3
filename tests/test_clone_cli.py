"""End to end: medsilo clone / clone evaluate / schema infer on a table of known structure.

One MST clone is made (JAX compiles once per set of marginals, a few seconds) and checked:
schema columns, types and bounds; identifiers never copied; the label's dependence on x1
recovered (TSTR close to TRTR); the release recorded in the site's ledger, and a second
one refused with nothing written; bad input exits 2 with nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

pytest.importorskip("mbi")

from medsilo.cli.main import app
from medsilo.privacy.ledger import Budget, Ledger

runner = CliRunner()

SCHEMA = """\
[columns.mrn]
type = "identifier"
[columns.x1]
type = "categorical"
categories = ["a", "b", "c"]
[columns.x2]
type = "integer"
lower = 0
upper = 100
bins = 5
[columns.x3]
type = "categorical"
categories = ["u", "v"]
[columns.y]
type = "categorical"
categories = ["0", "1"]
"""


def table(n: int, seed: int) -> pd.DataFrame:
    """y depends on x1 strongly (P(y=1) = 0.1, 0.5, 0.9 for a, b, c); x2, x3 are noise."""
    rng = np.random.default_rng(seed)
    x1 = rng.choice(["a", "b", "c"], n)
    p = np.select([x1 == "a", x1 == "b"], [0.1, 0.5], 0.9)
    return pd.DataFrame(
        {
            "mrn": [f"M{seed}{i:06d}" for i in range(n)],
            "x1": x1,
            "x2": rng.integers(0, 101, n).astype(str),
            "x3": rng.choice(["u", "v"], n),
            "y": (rng.random(n) < p).astype(int).astype(str),
        }
    )


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clone")
    (d / "schema.toml").write_text(SCHEMA)
    table(1500, 0).to_csv(d / "real.csv", index=False)
    table(600, 1).to_csv(d / "holdout.csv", index=False)
    with Ledger.open(d / "site", "A", Budget(epsilon=5.0, delta=1e-6)):
        pass
    result = runner.invoke(
        app,
        [
            "clone",
            str(d / "real.csv"),
            "--schema",
            str(d / "schema.toml"),
            "--epsilon",
            "4",
            "--delta",
            "1e-6",
            "--rows",
            "1000",
            "--out",
            str(d / "clone.csv"),
            "--seed",
            "0",
            "--ledger",
            str(d / "site"),
            "--site",
            "A",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    return {"dir": d, "summary": json.loads(result.stdout[result.stdout.index("{") :])}


def test_clone_has_the_schema_and_no_identifiers(made: dict[str, Path]) -> None:
    d = made["dir"]
    clone = pd.read_csv(d / "clone.csv", dtype=str, keep_default_na=False)
    real = pd.read_csv(d / "real.csv", dtype=str, keep_default_na=False)
    assert len(clone) == 1000
    assert list(clone.columns) == ["x1", "x2", "x3", "y"]  # mrn dropped
    assert not set(real["mrn"]) & set(clone.stack())
    assert set(clone["x1"]) <= {"a", "b", "c", ""}
    x2 = clone["x2"][clone["x2"] != ""].astype(int)
    assert x2.between(0, 100).all()
    assert set(clone["y"]) <= {"0", "1", ""}


def test_release_is_in_the_ledger_and_the_next_is_refused(made: dict[str, Path]) -> None:
    d = made["dir"]
    with Ledger.open(d / "site") as book:
        (entry,) = book.releases()
        assert entry.mechanism == "zcdp"
        assert entry.epsilon_after == pytest.approx(4.0, rel=1e-6)
        assert entry.payload_bytes == (d / "clone.csv").stat().st_size
    again = runner.invoke(
        app,
        [
            "clone",
            str(d / "real.csv"),
            "--schema",
            str(d / "schema.toml"),
            "--epsilon",
            "4",
            "--out",
            str(d / "again.csv"),
            "--ledger",
            str(d / "site"),
        ],
    )
    assert again.exit_code == 2
    assert "over its budget" in again.output
    assert not (d / "again.csv").exists()


def test_evaluation_recovers_the_structure(made: dict[str, Path]) -> None:
    d = made["dir"]
    result = runner.invoke(
        app,
        [
            "clone",
            "evaluate",
            str(d / "real.csv"),
            str(d / "clone.csv"),
            "--holdout",
            str(d / "holdout.csv"),
            "--schema",
            str(d / "schema.toml"),
            "--label",
            "y",
            "--quasi-identifiers",
            "x1,x2",
            "--out",
            str(d / "page.html"),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((d / "page.json").read_text())
    u = data["utility"]
    assert u["trtr"]["auroc"] > 0.8  # the structure is there ...
    assert u["tstr"]["auroc"] > 0.95 * u["trtr"]["auroc"]  # ... and the clone has it
    assert data["attack"]["domias_auroc"] < 0.65
    page = (d / "page.html").read_text()
    assert "TSTR" in page and "data:image/png;base64," in page


def test_bad_input_exits_2_and_writes_nothing(made: dict[str, Path]) -> None:
    d = made["dir"]
    base = ["clone", str(d / "real.csv"), "--schema", str(d / "schema.toml")]
    tiny = runner.invoke(app, [*base, "--epsilon", "0.001", "--out", str(d / "t.csv")])
    assert tiny.exit_code == 2 and "too small" in tiny.output
    (d / "bad.toml").write_text(SCHEMA.replace("[columns.x3]", "[columns.x4]"))
    bad = runner.invoke(
        app,
        [
            "clone",
            str(d / "real.csv"),
            "--schema",
            str(d / "bad.toml"),
            "--epsilon",
            "1",
            "--out",
            str(d / "t.csv"),
        ],
    )
    assert bad.exit_code == 2 and "'x4'" in bad.output
    assert not (d / "t.csv").exists()


def test_schema_infer_warns(made: dict[str, Path]) -> None:
    d = made["dir"]
    result = runner.invoke(
        app, ["schema", "infer", str(d / "real.csv"), "--out", str(d / "inferred.toml")]
    )
    assert result.exit_code == 0, result.output
    assert "NOT covered by epsilon" in result.output
    text = (d / "inferred.toml").read_text()
    assert text.startswith("# WARNING") and 'type = "identifier"' in text
