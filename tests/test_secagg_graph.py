"""SecAgg+ graphs: regular, symmetric, k-connected; the plan's degree is O(log n) and its
bounds hold against brute force and simulation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medsilo.secagg.errors import ParameterError
from medsilo.secagg.graph import (
    Graph,
    complete_graph,
    harary_graph,
    log_disconnection_bound,
    plan_graph,
)


def _sites(n: int) -> list[str]:
    return [f"site{i:03d}" for i in range(n)]


@st.composite
def harary_graphs(draw: st.DrawFn) -> Graph:
    n = draw(st.integers(4, 60))
    degree = draw(st.sampled_from([*range(2, n - 1, 2), n - 1]))
    return harary_graph(_sites(n), degree, np.random.default_rng(draw(st.integers(0, 2**32))))


@settings(max_examples=60, deadline=None)
@given(graph=harary_graphs())
def test_regular_symmetric_and_loop_free(graph: Graph) -> None:
    for site in graph.ring:
        neighbours = graph.neighbours(site)
        assert len(neighbours) == graph.degree and site not in neighbours
        assert all(site in graph.neighbours(other) for other in neighbours)
        assert graph.neighbourhood(site) == neighbours | {site}
    assert graph.is_connected(set(graph.ring))


@settings(max_examples=60, deadline=None)
@given(graph=harary_graphs(), data=st.data())
def test_removing_fewer_than_k_sites_keeps_it_connected(graph: Graph, data: st.DataObject) -> None:
    removed = data.draw(
        st.lists(st.sampled_from(graph.ring), max_size=graph.degree - 1, unique=True)
    )
    assert graph.is_connected(set(graph.ring) - set(removed))


@pytest.mark.parametrize(("n", "degree"), [(9, 2), (10, 4), (12, 6)])
def test_k_connectivity_exhaustively(n: int, degree: int) -> None:
    graph = harary_graph(_sites(n), degree, np.random.default_rng(1))
    for removed in itertools.combinations(graph.ring, degree - 1):
        assert graph.is_connected(set(graph.ring) - set(removed))
    # and k removals can disconnect it: two opposite runs of k/2 ring positions
    half = degree // 2
    cut = set(graph.ring[:half]) | set(graph.ring[n // 2 : n // 2 + half])
    assert not graph.is_connected(set(graph.ring) - cut)


@pytest.mark.parametrize(("n", "degree", "removed"), [(10, 2, 3), (11, 4, 6), (12, 4, 5)])
def test_disconnection_bound_holds_against_brute_force(n: int, degree: int, removed: int) -> None:
    graph = harary_graph(_sites(n), degree, np.random.default_rng(2))
    subsets = list(itertools.combinations(graph.ring, removed))
    disconnected = sum(not graph.is_connected(set(graph.ring) - set(s)) for s in subsets)
    assert disconnected / len(subsets) <= math.exp(log_disconnection_bound(n, degree, removed))
    assert log_disconnection_bound(n, degree, degree - 1) == -math.inf


def test_complete_graph_and_invalid_degrees() -> None:
    graph = complete_graph(["b", "a", "c"])
    assert graph.ring == ("a", "b", "c") and graph.neighbours("a") == {"b", "c"}
    for degree in (3, 0, 8, 9):
        with pytest.raises(ParameterError, match="degree"):
            Graph(tuple(_sites(8)), degree)
    with pytest.raises(ParameterError, match="ring"):
        Graph(("a", "a", "b"), 2)
    with pytest.raises(ParameterError, match="ring"):
        Graph(("a",), 0)


@pytest.mark.parametrize("n", [2, 3, 10, 20])
def test_small_studies_get_the_complete_graph(n: int) -> None:
    plan = plan_graph(n, dropout_rate=0.1)
    assert plan.degree == n - 1
    assert plan.threshold == n - math.floor(0.1 * n)  # every share holder but the dropouts


@pytest.mark.parametrize("n", [21, 50, 100, 1000, 10_000])
@pytest.mark.parametrize(("dropout_rate", "corrupt_rate"), [(0.05, 0.0), (0.1, 0.05), (0.2, 0.1)])
def test_sparse_plan_is_logarithmic(n: int, dropout_rate: float, corrupt_rate: float) -> None:
    plan = plan_graph(n, dropout_rate, corrupt_rate)
    assert plan.degree % 2 == 0 and plan.degree < n - 1
    # k = O((log n + security_bits) / log(1 / (dropout_rate + corrupt_rate)))
    assert plan.degree <= 4 * (math.log2(n) + 40) / math.log2(1 / (dropout_rate + corrupt_rate))
    assert 2 <= plan.threshold <= plan.degree + 1
    assert plan.threshold > math.floor(corrupt_rate * n) * plan.degree / (n - 1)  # > mean


def test_sparse_plan_survives_simulated_dropouts() -> None:
    """Monte Carlo: with floor(0.1 n) random dropouts, every neighbourhood keeps t
    holders and the survivors stay connected (the plan's failure chance is 2^-20)."""
    n, rng = 100, np.random.default_rng(3)
    plan = plan_graph(n, dropout_rate=0.1)
    for _ in range(200):
        graph = harary_graph(_sites(n), plan.degree, rng)
        alive = set(graph.ring) - set(rng.choice(graph.ring, 10, replace=False).tolist())
        assert graph.is_connected(alive)
        assert all(len(graph.neighbourhood(s) & alive) >= plan.threshold for s in graph.ring)


def test_plan_rejects_impossible_rates() -> None:
    with pytest.raises(ParameterError, match="dropout_rate"):
        plan_graph(10, dropout_rate=1.0)
    with pytest.raises(ParameterError, match="corrupt_rate"):
        plan_graph(10, dropout_rate=0.1, corrupt_rate=-0.1)
    with pytest.raises(ParameterError, match="no threshold"):
        plan_graph(10, dropout_rate=0.5, corrupt_rate=0.6)
    with pytest.raises(ParameterError, match="n must"):
        plan_graph(1, dropout_rate=0.1)
