"""AIM end to end on a small table (slow: JAX compiles one program per round)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("mbi")

from medsilo.clone.release import make_clone
from medsilo.clone.schema import parse_schema

SCHEMA = parse_schema(
    {
        "columns": {
            "x": {"type": "categorical", "categories": ["a", "b"]},
            "z": {"type": "integer", "lower": 0, "upper": 9, "bins": 5},
            "y": {"type": "categorical", "categories": ["0", "1"]},
        }
    }
)


@pytest.mark.slow
def test_aim_spends_exactly_its_budget_and_keeps_the_schema() -> None:
    rng = np.random.default_rng(0)
    x = rng.choice(["a", "b"], 800)
    y = np.where(rng.random(800) < np.where(x == "a", 0.1, 0.9), "1", "0")
    frame = pd.DataFrame({"x": x, "z": rng.integers(0, 10, 800).astype(str), "y": y})
    result = make_clone(
        frame,
        SCHEMA,
        epsilon=2.0,
        delta=1e-6,
        rows=500,
        mechanism="aim",
        seed=0,
        rounds=5,
        iters=300,
    )
    assert result.rho_spent == pytest.approx(result.rho, rel=1e-9)
    assert list(result.frame.columns) == ["x", "z", "y"] and len(result.frame) == 500
    clone = result.frame
    share = [(clone["y"][clone["x"] == v] == "1").mean() for v in ("a", "b")]
    assert share[0] < 0.4 < 0.6 < share[1]  # the x-y dependence was measured
