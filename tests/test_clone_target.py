"""The Python API records a clone in the site's ledger (as the CLI does), and MST's
target-aware tree measures every column's pair with the target and spends exactly rho."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("mbi")

from medsilo.clone.release import EpsilonTooSmallError, make_clone
from medsilo.clone.schema import parse_schema
from medsilo.errors import ConfigError
from medsilo.privacy.errors import BudgetExceededError
from medsilo.privacy.ledger import Budget, Ledger

SCHEMA = parse_schema(
    {
        "columns": {
            "a": {"type": "categorical", "categories": ["p", "q"]},
            "b": {"type": "categorical", "categories": ["r", "s"]},
            "z": {"type": "integer", "lower": 0, "upper": 9, "bins": 5},
            "y": {"type": "categorical", "categories": ["0", "1"]},
        }
    }
)


def _table(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    """y depends on a and on b, each through its own pair (a and b independent)."""
    rng = np.random.default_rng(seed)
    a, b = rng.choice(["p", "q"], n), rng.choice(["r", "s"], n)
    logit = np.where(a == "q", 1.5, -1.5) + np.where(b == "s", 1.5, -1.5)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int).astype(str)
    return pd.DataFrame({"a": a, "b": b, "z": rng.integers(0, 10, n).astype(str), "y": y})


def test_target_star_is_measured_recorded_and_keeps_both_dependences(tmp_path: Path) -> None:
    frame = _table()
    with Ledger.open(tmp_path, site="s", budget=Budget(2.5, 1e-6)) as ledger:
        result = make_clone(
            frame, SCHEMA, epsilon=2.0, delta=1e-6, seed=0, target="y", ledger=ledger
        )
        assert sorted(map(sorted, result.details["tree"])) == [["a", "y"], ["b", "y"], ["y", "z"]]
        assert result.rho_spent == pytest.approx(result.rho, rel=1e-9)
        (entry,) = ledger.releases()
        assert result.ledger_entry == entry and entry.epsilon_after == pytest.approx(2.0)
        # the next clone would exceed the budget: refused before measuring, nothing written
        with pytest.raises(BudgetExceededError, match="nothing was measured"):
            make_clone(frame, SCHEMA, epsilon=2.0, delta=1e-6, seed=1, target="y", ledger=ledger)
        assert len(ledger.releases()) == 1
    clone = result.frame
    for column, low, high in (("a", "p", "q"), ("b", "r", "s")):
        share = [(clone["y"][clone[column] == v] == "1").mean() for v in (low, high)]
        assert share[0] < 0.4 < 0.6 < share[1]


def test_target_must_be_a_column() -> None:
    with pytest.raises(ConfigError, match="target 'w'"):
        make_clone(_table(), SCHEMA, epsilon=1.0, delta=1e-6, target="w")
    with pytest.raises(ConfigError, match="target 'w'"):
        make_clone(_table(), SCHEMA, epsilon=1.0, delta=1e-6, target="w", mechanism="aim")
    with pytest.raises(EpsilonTooSmallError, match="too small"):
        make_clone(_table(n=20), SCHEMA, epsilon=0.1, delta=1e-6, target="y")
