"""End to end: the unmasked sum equals the plaintext sum exactly under dropouts at every
stage; fewer than t aborts; masked vectors look uniform; the consistency check stops a
coordinator that claims a live site dropped."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from medsilo.secagg.client import site_step
from medsilo.secagg.errors import AbortError, ProtocolError, Violation
from medsilo.secagg.graph import Graph, harary_graph, plan_graph
from medsilo.secagg.messages import (
    ConsistencyRequest,
    MaskedInput,
    Stage,
    ToCoordinator,
    UnmaskRequest,
    UnmaskShares,
)
from medsilo.secagg.quantize import Quantizer, choose_scale
from medsilo.secagg.simulate import Aborted, Simulation, Summed, run_session

SILENT_BEFORE_INPUT = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT_COLLECTION)


def _sites(n: int) -> list[str]:
    return [f"h{i:02d}" for i in range(n)]


def _vectors(sites: list[str], dim: int, bits: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s: rng.integers(0, 2**bits, size=dim, dtype=np.uint64) for s in sites}


def _plain_sum(vectors: dict[str, np.ndarray], sites: set[str], bits: int) -> np.ndarray:
    return np.asarray(sum(int_vec(vectors[s]) for s in sites) % 2**bits, dtype=np.uint64)


def int_vec(vector: np.ndarray) -> np.ndarray:
    return vector.astype(object)  # exact Python integers: an oracle independent of wrapping


@st.composite
def sessions(draw: st.DrawFn, n: int) -> tuple[int, int, dict[Stage, set[str]], int]:
    """A threshold, a dropout plan of at most n - t sites over the stages, bits, seed."""
    threshold = draw(st.integers(2, n), label="threshold")
    dropped = draw(st.lists(st.sampled_from(_sites(n)), max_size=n - threshold, unique=True))
    dropouts: dict[Stage, set[str]] = {}
    for site in dropped:
        dropouts.setdefault(draw(st.sampled_from(list(Stage))), set()).add(site)
    return threshold, dropouts, draw(st.integers(2, 53), label="bits"), draw(st.integers(0, 99))


@pytest.mark.parametrize(("n", "examples"), [(3, 30), (10, 15), (50, 3)])
def test_sum_is_exact_with_dropouts_up_to_n_minus_t(n: int, examples: int) -> None:
    @settings(max_examples=examples, deadline=None)
    @given(session=sessions(n))
    def check(session: tuple[int, dict[Stage, set[str]], int, int]) -> None:
        threshold, dropouts, bits, seed = session
        vectors = _vectors(_sites(n), 4, bits, seed)
        result = run_session(vectors, threshold, dropouts, bits=bits)
        assert isinstance(result, Summed), result
        silent = set().union(*(dropouts.get(stage, set()) for stage in SILENT_BEFORE_INPUT))
        assert set(result.survivors) == set(vectors) - silent
        assert np.array_equal(result.total, _plain_sum(vectors, set(result.survivors), bits))

    check()


@pytest.mark.parametrize("stage", list(Stage))
def test_fewer_than_t_aborts_at_that_stage(stage: Stage) -> None:
    sites = _sites(10)
    result = run_session(_vectors(sites, 3, 32, 0), 6, {stage: set(sites[:5])})
    assert isinstance(result, Aborted)
    assert result.stage == stage and "< threshold t = 6" in result.reason


def test_quantized_floats_come_back_within_the_bound() -> None:
    sites = _sites(10)
    quantizer = Quantizer(1.0, 10, 32, choose_scale(1.0, 10, 32))
    floats = {s: np.random.default_rng(i).uniform(-1.5, 1.5, 50) for i, s in enumerate(sites)}
    encoded = {s: quantizer.encode(x) for s, x in floats.items()}
    result = run_session(encoded, 7, {Stage.SHARE_KEYS: {sites[0]}}, bits=32)
    assert isinstance(result, Summed)
    clipped = sum(np.clip(floats[s], -1.0, 1.0) for s in result.survivors)
    error = np.abs(quantizer.decode(result.total, len(result.survivors)) - clipped)
    assert error.max() <= quantizer.error_bound(9, stochastic=False) + 1e-12


@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_secagg_plus_graph_is_exact_within_its_plan(data: st.DataObject) -> None:
    """n = 50 > full_graph_max: a sparse Harary graph; floor(0.1 n) dropouts anywhere."""
    sites = _sites(50)
    plan = plan_graph(50, dropout_rate=0.1, corrupt_rate=0.05)
    assert plan.degree < 49
    graph = harary_graph(sites, plan.degree, np.random.default_rng(data.draw(st.integers(0, 99))))
    dropped = data.draw(st.lists(st.sampled_from(sites), max_size=5, unique=True))
    dropouts: dict[Stage, set[str]] = {}
    for site in dropped:
        dropouts.setdefault(data.draw(st.sampled_from(list(Stage))), set()).add(site)
    vectors = _vectors(sites, 3, 32, 1)
    result = run_session(vectors, plan.threshold, dropouts, graph=graph)
    assert isinstance(result, Summed), result
    assert np.array_equal(result.total, _plain_sum(vectors, set(result.survivors), 32))


@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_beyond_its_plan_secagg_plus_is_exact_or_aborts(data: st.DataObject) -> None:
    sites = _sites(24)
    graph = harary_graph(sites, 4, np.random.default_rng(data.draw(st.integers(0, 99))))
    dropped = data.draw(st.lists(st.sampled_from(sites), max_size=12, unique=True))
    dropouts: dict[Stage, set[str]] = {}
    for site in dropped:
        dropouts.setdefault(data.draw(st.sampled_from(list(Stage))), set()).add(site)
    vectors = _vectors(sites, 3, 32, 2)
    result = run_session(vectors, 3, dropouts, graph=graph)
    if isinstance(result, Summed):
        assert np.array_equal(result.total, _plain_sum(vectors, set(result.survivors), 32))


def test_disconnected_survivors_abort_rather_than_leak_partial_sums() -> None:
    """A ring (degree 2): two opposite dropouts cut it in two arcs, each with >= t."""
    sites = _sites(20)
    graph = Graph(tuple(sites), 2)
    dropouts = {Stage.MASKED_INPUT_COLLECTION: {sites[0], sites[10]}}
    result = run_session(_vectors(sites, 3, 32, 0), 2, dropouts, graph=graph)
    assert isinstance(result, Aborted)
    assert result.stage == Stage.MASKED_INPUT_COLLECTION and "disconnected" in result.reason


def _session(n: int, threshold: int, dim: int, bits: int) -> Simulation:
    return Simulation({s: np.zeros(dim, dtype=np.uint64) for s in _sites(n)}, threshold, bits=bits)


def _advance(session: Simulation) -> dict[str, ToCoordinator]:
    replies = session.deliver()
    session.close(list(replies.values()))
    return replies


def test_a_masked_vector_is_indistinguishable_from_uniform() -> None:
    """Zero inputs, 8-bit ring: each masked vector's elements pass a chi-square test for
    uniformity on 256 cells, and so does the byte histogram of its wire form."""
    session = _session(n=3, threshold=2, dim=256 * 100, bits=8)
    for _ in range(2):
        _advance(session)
    masked = _advance(session)
    for message in masked.values():
        assert isinstance(message, MaskedInput)
        counts = np.bincount(message.vector.astype(np.int64), minlength=256)
        assert stats.chisquare(counts).pvalue > 1e-6
        wire = np.frombuffer(message.vector.astype(np.uint8).tobytes(), dtype=np.uint8)
        assert stats.chisquare(np.bincount(wire, minlength=256)).pvalue > 1e-6


def test_consistency_check_stops_a_coordinator_that_claims_a_live_site_dropped() -> None:
    """The coordinator holds all four masked inputs but tells b and c that d dropped, to
    get shares of d's mask key on top of d's self-mask shares. a, which signed d as a
    survivor, rejects b's and c's signatures of the other survivor set, and refuses to
    reveal a mask-key share of a site it signed as a survivor."""
    session = _session(n=4, threshold=3, dim=5, bits=16)
    for _ in range(3):
        _advance(session)  # keys, shares, masked inputs: U_3 = all four
    a, b, c, d = _sites(4)
    honest = session.outbox[a]
    assert isinstance(honest, ConsistencyRequest) and honest.survivors == (a, b, c, d)
    lie = ConsistencyRequest(honest.session, (a, b, c))
    signatures = {}
    for site, request in ((a, honest), (b, lie), (c, lie), (d, honest)):
        session.sites[site], signatures[site] = site_step(session.sites[site], request)

    split_view = UnmaskRequest(honest.session, (signatures[a], signatures[b]), (a, b, c, d), ())
    with pytest.raises(ProtocolError) as raised:
        site_step(session.sites[a], split_view)
    assert raised.value.rule is Violation.BAD_SIGNATURE and raised.value.sender == b
    assert raised.value.message == "UnmaskRequest"

    consistent = UnmaskRequest(honest.session, (signatures[a], signatures[d]), (a,), ())
    with pytest.raises(AbortError, match="2 signatures of U_3 < threshold t = 3"):
        site_step(session.sites[a], consistent)


def test_a_site_never_reveals_both_shares_of_one_site() -> None:
    session = _session(n=4, threshold=3, dim=5, bits=16)
    for _ in range(4):
        _advance(session)  # up to the consistency check: U_4 = all four
    a, b, c, d = _sites(4)
    request = session.outbox[a]
    assert isinstance(request, UnmaskRequest) and request.self_mask_of == (a, b, c, d)
    for self_mask_of, mask_key_of in (((a, b, c), (d,)), ((a, b, c, d), (d,))):
        forged = UnmaskRequest(request.session, request.signatures, self_mask_of, mask_key_of)
        with pytest.raises(ProtocolError) as raised:
            site_step(session.sites[a], forged)
        assert raised.value.rule is Violation.BOTH_SHARES and "'h03'" in raised.value.detail
    _, shares = site_step(session.sites[a], request)
    assert isinstance(shares, UnmaskShares) and not shares.mask_key_shares
