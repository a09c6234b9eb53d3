"""AIM: its exact shortcuts (junction-tree size, merged re-measurements, numpy marginals)
agree with mbi, its workload with a target, and end to end on a small table (slow: JAX
compiles one program per round)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("mbi")

from medsilo.clone import _mbi, builtin
from medsilo.clone import model as pgm
from medsilo.clone.aim import merge, model_size, workload_candidates
from medsilo.clone.domain import TableDomain
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


@pytest.mark.parametrize("dataset", ["heart", "eicu"])
def test_model_size_is_mbis_hypothetical_model_size(dataset: str) -> None:
    mbi = _mbi.load()
    sizes = dict(TableDomain(builtin.SCHEMAS[dataset]).sizes)
    columns = list(sizes)
    domain = mbi.Domain.fromdict(sizes)
    rng = np.random.default_rng(0)
    for trial in range(60):
        if trial % 6 == 0:  # a spanning tree: mbi eliminates it without fill-in
            order = list(rng.permutation(columns))
            cliques = [(order[i], order[int(rng.integers(0, i))]) for i in range(1, len(order))]
        else:
            cliques = [
                tuple(rng.choice(columns, int(rng.integers(1, 4)), replace=False))
                for _ in range(int(rng.integers(1, 30)))
            ]
        expected = mbi.junction_tree.hypothetical_model_size(domain, cliques)
        assert model_size(sizes, cliques) == pytest.approx(expected, rel=1e-12)


def test_a_remeasured_clique_is_one_inverse_variance_measurement_with_the_same_loss() -> None:
    rng = np.random.default_rng(1)
    first = pgm.linear(("a", "b"), rng.normal(5, 2, 6), 2.0)
    other = pgm.linear(("a",), rng.normal(5, 2, 2), 1.0)
    again = pgm.linear(("a", "b"), rng.normal(5, 1, 6), 1.0)
    merged = merge([first, other], again)
    assert len(merged) == 2 and merged[1] is other
    assert float(merged[0].stddev) == pytest.approx((1 / 4 + 1) ** -0.5)
    assert merge([other], again)[-1] is again  # a new clique is appended

    def loss(x: np.ndarray, ms: list[object]) -> float:
        return sum(
            float(np.sum((x - np.asarray(m.noisy_measurement)) ** 2)) / float(m.stddev) ** 2  # type: ignore[attr-defined]
            for m in ms
        )

    xs = [rng.normal(5, 3, 6) for _ in range(3)]
    separate = [loss(x, [first, again]) for x in xs]
    together = [loss(x, [merged[0]]) for x in xs]
    # equal up to a constant in x
    assert np.allclose(np.diff(separate), np.diff(together))


def test_numpy_marginals_match_mbis_projection() -> None:
    rng = np.random.default_rng(2)
    sizes = {"a": 3, "b": 4, "c": 2, "d": 5}
    model = pgm.estimate(
        sizes,
        [
            pgm.linear(("a", "b", "c"), rng.random(24) * 10 + 1, 1.0),
            pgm.linear(("c", "d"), rng.random(10) * 10 + 1, 1.0),
        ],
        iters=50,
    )
    for clique in [("a",), ("c", "a"), ("b", "a", "c"), ("d", "c")]:
        expected = np.asarray(model.project(clique).datavector())
        assert np.allclose(pgm.marginal(model, clique), expected, atol=1e-4)
    sampled = pgm.marginals(model, [("a", "d")], rng)[("a", "d")]  # not covered: sampled
    exact = np.asarray(model.project(("a", "d")).datavector())
    assert sampled.shape == (15,) and np.abs(sampled - exact).sum() < 0.02 * exact.sum()
    with pytest.raises(ValueError, match="do not cover"):
        pgm.marginal(model, ("a", "d"))


def test_target_workload_adds_the_targets_triples() -> None:
    sizes = {"p": 2, "q": 3, "r": 4, "y": 2}
    plain = workload_candidates(list(sizes), sizes, max_cells=10_000)
    assert max(map(len, plain)) == 2 and len(plain) == 4 + 6
    pairs = [("p", "q"), ("p", "r"), ("p", "y"), ("q", "r"), ("q", "y"), ("r", "y")]
    assert plain[("p", "q")] == 2 + 4 * 1 and plain[("p",)] == 3.0
    aimed = workload_candidates(list(sizes), sizes, max_cells=10_000, target="y")
    triples = sorted(r for r in aimed if len(r) == 3)
    assert triples == [("p", "q", "y"), ("p", "r", "y"), ("q", "r", "y")]
    for r, weight in aimed.items():  # w_r = sum over the workload of |r & s|
        assert weight == sum(len(set(r) & set(s)) for s in pairs + triples)
    # a workload marginal over max_cells is left out, with its closure if nothing else needs it
    small = workload_candidates(list(sizes), sizes, max_cells=12, target="y")
    assert ("q", "r", "y") not in small and ("q", "r") in small
    assert all(len(r) < 3 or np.prod([sizes[c] for c in r]) <= 12 for r in small)


def test_release_compiled_drops_jaxs_compiled_programs() -> None:
    jax = pytest.importorskip("jax")
    double = jax.jit(lambda x: x * 2)
    double(jax.numpy.ones(3))
    assert double._cache_size() == 1
    _mbi.release_compiled()
    assert double._cache_size() == 0


def _table(n: int = 800) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.choice(["a", "b"], n)
    y = np.where(rng.random(n) < np.where(x == "a", 0.1, 0.9), "1", "0")
    return pd.DataFrame({"x": x, "z": rng.integers(0, 10, n).astype(str), "y": y})


@pytest.mark.slow
@pytest.mark.parametrize("target", [None, "y"])
def test_aim_spends_exactly_its_budget_and_keeps_the_schema(
    target: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    released = []
    monkeypatch.setattr(_mbi, "release_compiled", lambda: released.append(1))
    result = make_clone(
        _table(),
        SCHEMA,
        epsilon=2.0,
        delta=1e-6,
        rows=500,
        mechanism="aim",
        seed=0,
        rounds=5,
        iters=300,
        target=target,
    )
    assert result.rho_spent == pytest.approx(result.rho, rel=1e-9)
    assert list(result.frame.columns) == ["x", "z", "y"] and len(result.frame) == 500
    clone = result.frame
    share = [(clone["y"][clone["x"] == v] == "1").mean() for v in ("a", "b")]
    assert share[0] < 0.4 < 0.6 < share[1]  # the x-y dependence was measured
    assert released  # every round drops its compiled programs (vm.max_map_count)
