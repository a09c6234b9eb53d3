"""The Skellam mechanism (medsilo.privacy.skellam) against independent oracles.

Oracles: the Skellam pmf (scipy.special.ive, e^-mu I_k(mu)) for the distribution of summed
shares and for the exact Renyi divergence of shifted Skellams (the quantity AKL21's
bound bounds); scipy's explicit Hadamard matrix; dp-accounting's RDP of the (sampled)
Gaussian, the limit of the Skellam bound as mu grows; the authors' formula in unscaled
units (google-research/federated, distributed_dp/accounting_utils.py); secure aggregation
(medsilo.secagg) end to end with dropouts.
"""

from __future__ import annotations

import dataclasses
import doctest
import itertools
import math

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import linalg, stats
from scipy.special import ive, logsumexp

from medsilo.privacy import rotation as rotation_module
from medsilo.privacy import skellam as skellam_module
from medsilo.privacy.accounting import epsilon_after, epsilon_from_rdp, rdp_curve
from medsilo.privacy.errors import PrivacyConfigError
from medsilo.privacy.events import DpSgdEvent, GaussianEvent, NonPrivateEvent
from medsilo.privacy.rotation import HadamardRotation, fwht, padded_dim
from medsilo.privacy.skellam import (
    SkellamEvent,
    SkellamPlan,
    account_release,
    calibrate_mu,
    conditional_stochastic_round,
    decode_sum,
    encode_contributions,
    plan_skellam,
    rounded_l1_bound,
    rounded_l2_bound,
    skellam_epsilon,
    skellam_rdp,
    skellam_share,
    skellam_tail_bound,
    wrap_probability,
)
from medsilo.secagg import Stage, Summed, run_session

FAST = settings(max_examples=12, deadline=None, database=None)


def _log_pmf(k: np.ndarray, mu: float) -> np.ndarray:
    """log P(Sk(mu) = k) = log(e^-mu I_|k|(mu)) (AKL21, Def. 3.1)."""
    with np.errstate(divide="ignore"):
        return np.log(ive(np.abs(k), mu))


@pytest.mark.parametrize("module", [skellam_module, rotation_module])
def test_docstring_examples(module: object) -> None:
    flags = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
    assert doctest.testmod(module, optionflags=flags).failed == 0  # type: ignore[arg-type]


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize(("mu_share", "shares"), [(0.7, 3), (3.0, 5), (40.0, 2)])
def test_sum_of_shares_is_skellam_of_the_summed_variance(mu_share: float, shares: int) -> None:
    rng = np.random.default_rng(11)
    draws = 100_000
    total = sum(skellam_share(mu_share, draws, rng) for _ in range(shares))
    mu = shares * mu_share
    # Moments: mean 0, variance mu, 4th cumulant mu (all even cumulants of Sk(mu) are mu).
    assert abs(total.mean()) < 5 * math.sqrt(mu / draws)
    assert total.var() == pytest.approx(mu, rel=0.03)
    if mu <= 20:  # beyond, the estimator's error (sqrt(24 / draws) mu^2) swamps mu
        k4 = stats.kstat(total.astype(np.float64), 4)
        assert k4 == pytest.approx(mu, abs=5 * math.sqrt(24 / draws) * mu**2)
        assert abs(k4 - 3 * mu**2) > 0.5 * mu**2  # not the discrete Gaussian's kurtosis
    # Distribution: chi-square against e^-mu I_k(mu), bins with >= 20 expected draws.
    values, counts = np.unique(total, return_counts=True)
    support = np.arange(values.min(), values.max() + 1)
    observed = np.zeros(len(support))
    observed[values - values.min()] = counts
    expected = draws * np.exp(_log_pmf(support, mu))
    keep = expected >= 20
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], draws - expected[keep].sum())
    assert stats.chisquare(obs, exp).pvalue > 1e-3


def test_share_rejects_no_noise_and_a_missing_generator() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(PrivacyConfigError, match="mu must be > 0"):
        skellam_share(0.0, 3, rng)
    with pytest.raises(PrivacyConfigError, match=r"rng must be a numpy\.random\.Generator"):
        skellam_share(1.0, 3, 42)  # type: ignore[arg-type]
    assert skellam_share(1.0, 0, rng).shape == (0,)


@pytest.mark.parametrize("mu", [0.5, 8.0, 300.0])
def test_tail_bound_is_above_the_exact_tail(mu: float) -> None:
    k = np.arange(0, int(40 * math.sqrt(mu) + 40))
    pmf = np.exp(_log_pmf(k, mu))
    for a in (1, 2, int(math.sqrt(mu)) + 1, int(3 * math.sqrt(mu)) + 1, int(6 * math.sqrt(mu)) + 2):
        exact = min(1.0, 2 * pmf[a:].sum())  # P(|Z| >= a), symmetric
        assert exact <= skellam_tail_bound(mu, a) * (1 + 1e-9)


# --------------------------------------------------------------------------- rotation


@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_fwht_is_the_hadamard_matrix(n: int) -> None:
    x = np.random.default_rng(n).normal(size=(3, n))
    assert np.allclose(fwht(x), x @ linalg.hadamard(n).T)


@pytest.mark.parametrize("dim", [1, 5, 100, 1024])
def test_rotation_is_orthogonal_and_inverts(dim: int) -> None:
    rotation = HadamardRotation(dim, seed=3)
    x = np.random.default_rng(dim).normal(size=(4, dim))
    y = rotation.forward(x)
    assert y.shape == (4, padded_dim(dim))
    assert np.allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1))
    assert np.allclose(rotation.inverse(y), x)
    assert np.allclose(rotation.inverse(rotation.forward(x[0])), x[0])
    # Same public seed, same rotation; another seed, another one.
    assert np.array_equal(HadamardRotation(dim, 3).forward(x), y)
    if dim > 2:
        assert not np.allclose(HadamardRotation(dim, 4).forward(x), y)


def test_rotation_flattens_a_spike_and_rejects_bad_shapes() -> None:
    rotation = HadamardRotation(1000, seed=9)
    spike = np.zeros(1000)
    spike[17] = 5.0
    assert np.allclose(np.abs(rotation.forward(spike)), 5.0 / math.sqrt(1024))
    with pytest.raises(PrivacyConfigError, match="length 1000"):
        rotation.forward(np.zeros(999))
    with pytest.raises(PrivacyConfigError, match="length 1024"):
        rotation.inverse(np.zeros(1000))
    with pytest.raises(PrivacyConfigError, match="power of two"):
        fwht(np.zeros(6))


# --------------------------------------------------------------------------- rounding


def test_rounded_bounds() -> None:
    assert rounded_l2_bound(3.0, 16, beta=0.0) == 7.0
    c, d, beta = 100.0, 1024, math.exp(-0.5)
    expected = math.sqrt(c**2 + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (c + math.sqrt(d) / 2))
    assert rounded_l2_bound(c, d, beta) == pytest.approx(expected)
    assert rounded_l2_bound(1.0, 4, 1e-300) == 3.0  # beta tiny: the deterministic bound wins
    assert rounded_l1_bound(3.0, 4) == 6.0 and rounded_l1_bound(1.5, 400) == 2.25
    with pytest.raises(PrivacyConfigError, match="beta must be in"):
        rounded_l2_bound(1.0, 4, 1.0)


@FAST
@given(
    st.integers(1, 300),
    st.floats(0.5, 300.0),
    st.sampled_from([0.0, 0.05, math.exp(-0.5), 0.9]),
    st.integers(0, 2**32 - 1),
)
def test_conditional_rounding_meets_its_bound(
    dim: int, norm: float, beta: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(5, dim))
    rows *= norm / np.linalg.norm(rows, axis=1, keepdims=True)
    bound = rounded_l2_bound(norm, dim, beta)
    out = conditional_stochastic_round(rows, bound, rng, beta)
    assert out.dtype == np.int64
    assert np.all(np.abs(out - rows) < 1)
    assert np.all(np.linalg.norm(out, axis=1) <= bound + 1e-9)


def test_plain_stochastic_rounding_is_unbiased_and_kls21_bound_fails_rarely() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=256) * 3
    draws = conditional_stochastic_round(np.repeat(x[None, :], 4000, 0), 1e9, rng, 0.0)
    assert np.allclose(draws.mean(0), x, atol=5 * 0.5 / math.sqrt(4000))
    # KLS21: one plain draw exceeds the beta-bound with probability <= beta.
    beta = 0.05
    bound = rounded_l2_bound(float(np.linalg.norm(x)), 256, beta)
    exceed = np.mean(np.linalg.norm(draws, axis=1) > bound)
    assert exceed <= beta


def test_conditional_rounding_gives_up_on_an_impossible_bound() -> None:
    with pytest.raises(RuntimeError, match="never met the norm bound"):
        conditional_stochastic_round([[10.0, 10.0]], 1.0, np.random.default_rng(0), 0.5)


# --------------------------------------------------------------------------- pipeline


def _plan(**changes: object) -> SkellamPlan:
    base: dict[str, object] = {
        "clip": 1.0,
        "dim": 50,
        "scale": 2.0**10,
        "bits": 32,
        "mu_share": 1e-9,
        "min_survivors": 3,
        "n_sites": 4,
    }
    base.update(changes)
    return SkellamPlan(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("rotate", [True, False])
def test_encode_decode_recovers_the_sum_of_clipped_rows(rotate: bool) -> None:
    plan = _plan(rotate=rotate)
    rng = np.random.default_rng(1)
    sites = [rng.normal(size=(k, plan.dim)) * s for k, s in ((3, 0.1), (1, 10.0), (0, 1.0))]
    sites[0][0] *= 0  # a zero row
    encoded = [encode_contributions(plan, rows, rng=rng, rotation_seed=77) for rows in sites]
    total = np.zeros(plan.rounding_dim, dtype=np.uint64)
    for part in encoded:
        assert part.dtype == np.uint64 and int(part.max()) < 2**32
        total = (total + part) & np.uint64(2**32 - 1)
    decoded = decode_sum(plan, total, rotation_seed=77)
    norms = np.linalg.norm(np.concatenate(sites), axis=1, keepdims=True)
    clipped = np.concatenate(sites) * np.minimum(1.0, 1.0 / np.maximum(norms, 1e-300))
    rows = len(clipped)  # every rounding error is < 1 per coordinate, in the rotated space
    error = np.linalg.norm(decoded - clipped.sum(0))
    assert error < rows * math.sqrt(plan.rounding_dim) / plan.scale
    assert error < 0.05


def test_end_to_end_with_secure_aggregation_and_a_dropout() -> None:
    """Four sites, one drops before sending its input: the unmasked sum carries exactly
    the three survivors' contributions and Sk(3 mu_share) noise."""
    plan = _plan(dim=4000, scale=2.0**6, mu_share=50.0, rotate=False, bits=40)
    rng = np.random.default_rng(2)
    data = {s: rng.normal(size=(2, plan.dim)) * 0.01 for s in "abcd"}
    vectors = {
        s: encode_contributions(plan, rows, rng=np.random.default_rng(i))
        for i, (s, rows) in enumerate(data.items())
    }
    result = run_session(
        vectors, threshold=3, bits=plan.bits, dropouts={Stage.MASKED_INPUT_COLLECTION: {"d"}}
    )
    assert isinstance(result, Summed) and result.survivors == ("a", "b", "c")
    decoded = decode_sum(plan, result.total)
    signal = sum(data[s].sum(0) for s in result.survivors)
    noise = (decoded - signal) * plan.scale  # integer noise + rounding errors in (-6, 6)
    account = account_release(plan, len(result.survivors), delta=1e-5)
    assert account.coordinator is not None and account.coordinator.mu == 150.0
    rounding_var_max = 6 * 0.25
    assert (
        account.coordinator.mu * 0.93
        < noise.var()
        < (account.coordinator.mu + rounding_var_max) * 1.07
    )


def test_encode_and_decode_validate_their_inputs() -> None:
    plan = _plan()
    rng = np.random.default_rng(0)
    with pytest.raises(PrivacyConfigError, match="rotation_seed"):
        encode_contributions(plan, np.zeros(50), rng=rng)
    with pytest.raises(PrivacyConfigError, match="length 50"):
        encode_contributions(plan, np.zeros(49), rng=rng, rotation_seed=1)
    with pytest.raises(PrivacyConfigError, match="all finite"):
        encode_contributions(plan, np.full(50, np.nan), rng=rng, rotation_seed=1)
    with pytest.raises(PrivacyConfigError, match="rng must be"):
        encode_contributions(plan, np.zeros(50), rng=None, rotation_seed=1)  # type: ignore[arg-type]
    with pytest.raises(PrivacyConfigError, match="uint64 vector of length 64"):
        decode_sum(plan, np.zeros(64, dtype=np.int64), rotation_seed=1)
    with pytest.raises(PrivacyConfigError, match="Z_"):
        decode_sum(plan, np.full(64, 2**33, dtype=np.uint64), rotation_seed=1)
    for bad, match in [
        ({"scale": 1000.0}, "power of two"),
        ({"bits": 60}, "bits must be in"),
        ({"min_survivors": 5}, "min_survivors must be <= n_sites"),
        ({"mu_share": 0.0}, "mu_share must be > 0"),
        ({"rotate": 1}, "rotate must be True or False"),
    ]:
        with pytest.raises(PrivacyConfigError, match=match):
            _plan(**bad)


# --------------------------------------------------------------------------- RDP bound


def _exact_renyi(alpha: int, shift: int, mu: float) -> float:
    """D_alpha(Sk(mu) + shift || Sk(mu)) by summing the pmf (terms below float range,
    far in the tails, are dropped: they are below e^-700)."""
    reach = int(shift + 30 * math.sqrt(mu) + 10 * alpha * shift + 60)
    k = np.arange(-reach, reach + 1)
    lp, lq = _log_pmf(k - shift, mu), _log_pmf(k, mu)
    ok = np.isfinite(lp) & np.isfinite(lq)
    return float(logsumexp(alpha * lp[ok] + (1 - alpha) * lq[ok]) / (alpha - 1))


@pytest.mark.parametrize("mu", [2.0, 10.0, 200.0, 1000.0])
@pytest.mark.parametrize("alpha", [2, 5, 20, 60])
def test_bound_is_above_the_exact_renyi_divergence_and_sharp(mu: float, alpha: int) -> None:
    for shift in (1, 2, 5):
        exact = _exact_renyi(alpha, shift, mu)
        bound = float(skellam_rdp([alpha], mu=mu, l2_sensitivity=shift, l1_sensitivity=shift)[0])
        assert exact <= bound * (1 + 1e-9)
        if mu >= 200 and alpha * shift <= 100:  # AKL21: "sharp" when alpha Delta << mu
            assert bound <= exact * 1.06


def test_bound_covers_a_multidimensional_shift() -> None:
    shift, mu = np.array([3, -1, 2, 0, 1]), 30.0
    for alpha in (2, 4, 10):
        exact = sum(_exact_renyi(alpha, int(abs(s)), mu) for s in shift if s)
        l2, l1 = float(np.linalg.norm(shift)), float(np.abs(shift).sum())
        assert exact <= skellam_rdp([alpha], mu=mu, l2_sensitivity=l2, l1_sensitivity=l1)[0]


def test_bound_matches_the_authors_formula_in_unscaled_units() -> None:
    """google-research/federated distributed_dp/accounting_utils.py writes the bound for
    real-valued sensitivities l2, l1 (after rounding, divided by the scale s) and central
    variance v (real units): a l2^2/(2v) + min(((2a-1) s l2^2 + 6 l1) / (4 s^3 v^2),
    3 l1 / (2 s v)); ours is in integer units: mu = s^2 v, D2 = s l2, D1 = s l1."""
    s, clip, dim, beta, stddev = 2.0**9, 0.7, 300, math.exp(-0.5), 0.9
    d2 = rounded_l2_bound(clip * s, dim, beta)  # their rounded_l2_norm_bound(l2 * s) ...
    d1 = rounded_l1_bound(d2, dim)
    l2, l1, var = d2 / s, d1 / s, stddev**2  # ... / s, in their units
    for a in (2, 3, 10, 64):
        theirs = a * l2**2 / (2 * var) + min(
            ((2 * a - 1) * s * l2**2 + 6 * l1) / (4 * s**3 * var**2), 3 * l1 / (2 * s * var)
        )
        ours = skellam_rdp([a], mu=s**2 * var, l2_sensitivity=d2, l1_sensitivity=d1)[0]
        assert ours == pytest.approx(theirs, rel=1e-12)


def test_rdp_converges_to_the_gaussian_as_mu_grows() -> None:
    alphas = np.arange(2, 65, dtype=np.float64)
    gaps = []
    for mu in (1e2, 1e4, 1e6):
        sk = skellam_rdp(alphas, mu=mu, l2_sensitivity=1.0, l1_sensitivity=1.0)
        gaussian = alphas / (2 * mu)  # sigma^2 = mu (AKL21's mu is the variance)
        assert np.all(sk >= gaussian)
        gaps.append(float(np.max(sk / gaussian - 1)))
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-5


def test_epsilon_converges_to_dp_accountings_gaussian() -> None:
    for steps in (1, 100):
        delta = 1e-5
        gaussian = epsilon_after([GaussianEvent(noise_multiplier=2.0, steps=steps)], delta)
        # noise multiplier 2 with Delta_2 = 1000 (a scale of ~1000 on a clip of 1)
        event = SkellamEvent(mu=4e6, l2_sensitivity=1e3, l1_sensitivity=1e6, steps=steps)
        ours = skellam_epsilon([event], delta)
        assert gaussian <= ours <= gaussian * 1.01  # integer orders only: <= 1% above


def test_subsampling_bound_reproduces_the_sampled_gaussian_with_coefficient_one() -> None:
    """With coefficient 1 and eps(l) = l / (2 sigma^2), Zhu & Wang's sum is the exact RDP
    of the Poisson-sampled Gaussian at integer orders (Mironov, Talwar, Zhang 2019), which
    dp-accounting computes independently."""
    q, sigma = 0.05, 1.3
    orders = np.arange(2, 200, dtype=np.int64)
    eps = np.arange(0, 200) / (2 * sigma**2)
    ours = skellam_module._poisson_subsampled(orders, q, eps, coefficient=1.0)
    accountant = rdp_privacy_accountant.RdpAccountant(orders=[float(a) for a in orders])
    accountant.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)))
    assert np.allclose(ours, accountant._rdp, rtol=1e-9)
    general = skellam_module._poisson_subsampled(orders, q, eps, coefficient=3.0)
    assert np.all(general >= ours) and np.all(general <= ours + math.log(3) / (orders - 1) + 1e-12)


def test_sampled_skellam_is_never_below_the_sampled_gaussian() -> None:
    q, sigma, steps, delta = 100 / 2930, 1.15, 3001, 1e-4  # Dopamine (REFERENCES.md)
    gaussian = epsilon_after([DpSgdEvent(q, sigma, steps)], delta)
    event = SkellamEvent(
        mu=(sigma * 1e4) ** 2, l2_sensitivity=1e4, l1_sensitivity=1e8, sample_rate=q, steps=steps
    )
    ours = skellam_epsilon([event], delta)
    assert round(gaussian, 2) == 9.86
    # Zhu & Wang's general bound (factor 3 on the higher terms) costs ~12% here.
    assert gaussian < ours < gaussian * 1.15


@FAST
@given(
    st.floats(10.0, 1e6),
    st.floats(1.0, 100.0),
    st.floats(0.001, 1.0),
    st.integers(1, 500),
)
def test_epsilon_grows_with_steps_and_rate_and_shrinks_with_noise(
    mu: float, l2: float, q: float, steps: int
) -> None:
    def eps(m: float, r: float, n: int) -> float:
        return skellam_epsilon([SkellamEvent(m, l2, l2 * l2, r, n)], 1e-5)

    base = eps(mu, q, steps)
    assert eps(mu, q, steps + 1) >= base
    assert eps(mu * 1.5, q, steps) <= base
    assert eps(mu, min(1.0, q * 1.5), steps) >= base


def test_composition_and_mixing_with_other_events() -> None:
    one = SkellamEvent(mu=900.0, l2_sensitivity=10.0, l1_sensitivity=100.0, sample_rate=0.1)
    five = SkellamEvent(
        mu=900.0, l2_sensitivity=10.0, l1_sensitivity=100.0, sample_rate=0.1, steps=5
    )
    assert skellam_epsilon([one] * 5, 1e-5) == pytest.approx(skellam_epsilon([five], 1e-5))
    sgd = DpSgdEvent(sample_rate=0.01, noise_multiplier=1.0, steps=100)
    orders, curve = rdp_curve([sgd])
    five_rdp = 5 * skellam_rdp(
        orders, mu=900.0, l2_sensitivity=10.0, l1_sensitivity=100.0, sample_rate=0.1
    )
    expected = epsilon_from_rdp(orders, curve + five_rdp, 1e-5)
    assert skellam_epsilon([five, sgd], 1e-5) == pytest.approx(expected)
    assert skellam_epsilon([], 1e-5) == 0.0
    assert skellam_epsilon([five, NonPrivateEvent()], 1e-5) == math.inf
    site_level = SkellamEvent(mu=900.0, l2_sensitivity=10.0, l1_sensitivity=100.0, unit="site")
    with pytest.raises(PrivacyConfigError, match="same unit of privacy"):
        skellam_epsilon([five, site_level], 1e-5)
    with pytest.raises(PrivacyConfigError, match=r"events\[0\]"):
        skellam_epsilon(["not an event"], 1e-5)  # type: ignore[list-item]
    assert five.to_dict()["mechanism"] == "skellam" and five.noise_multiplier == 3.0


def test_event_validation() -> None:
    with pytest.raises(PrivacyConfigError, match="mu must be > 0"):
        SkellamEvent(mu=0.0, l2_sensitivity=1.0, l1_sensitivity=1.0)
    with pytest.raises(PrivacyConfigError, match="l1_sensitivity must be >= l2_sensitivity"):
        SkellamEvent(mu=1.0, l2_sensitivity=2.0, l1_sensitivity=1.0)
    with pytest.raises(PrivacyConfigError, match="sample_rate must be in"):
        SkellamEvent(mu=1.0, l2_sensitivity=1.0, l1_sensitivity=1.0, sample_rate=0.0)
    with pytest.raises(PrivacyConfigError, match="unit must be"):
        SkellamEvent(mu=1.0, l2_sensitivity=1.0, l1_sensitivity=1.0, unit="patient")  # type: ignore[arg-type]
    with pytest.raises(PrivacyConfigError, match="orders must be"):
        skellam_rdp([1.0], mu=1.0, l2_sensitivity=1.0, l1_sensitivity=1.0)


# --------------------------------------------------------------------------- dropouts


def test_release_accounts_for_the_noise_that_reached_the_sum() -> None:
    calibration = calibrate_mu(
        target_epsilon=2.0, delta=1e-5, l2_sensitivity=1025.0, l1_sensitivity=1025.0**2
    )
    plan = SkellamPlan(
        clip=1.0,
        dim=8,
        scale=2.0**10,
        bits=48,
        mu_share=1.0,
        min_survivors=6,
        n_sites=10,
        rotate=False,
    )
    plan = dataclasses.replace(plan, mu_share=calibration.mu_total / 6)
    assert plan.l2_sensitivity <= 1025.0  # the calibration used an upper bound
    accounts = {n: account_release(plan, n, delta=1e-5) for n in range(0, 11)}
    for n in range(0, 6):
        assert not accounts[n].released and accounts[n].coordinator is None
        assert accounts[n].epsilon_coordinator == accounts[n].epsilon_collusion == 0.0
    coordinator = [accounts[n].epsilon_coordinator for n in range(6, 11)]
    assert coordinator[0] <= 2.0  # t survivors: the planned noise, the planned budget
    assert all(a > b for a, b in itertools.pairwise(coordinator))  # more shares, less eps
    collusion = {accounts[n].epsilon_collusion for n in range(6, 11)}
    assert len(collusion) == 1 and collusion.pop() > coordinator[0]  # own share only
    seen = accounts[8].coordinator
    assert seen is not None and seen.mu == pytest.approx(8 * plan.mu_share)
    assert accounts[8].collusion is not None and accounts[8].collusion.mu == plan.mu_share
    with pytest.raises(PrivacyConfigError, match="survivors must be <= n_sites"):
        account_release(plan, 11, delta=1e-5)


# --------------------------------------------------------------------------- calibration


@FAST
@given(
    st.floats(0.3, 10.0),
    st.floats(1.0, 5000.0),
    st.sampled_from([1.0, 0.2, 0.01]),
    st.integers(1, 300),
)
def test_calibration_never_overshoots_and_is_tight(
    target: float, l2: float, q: float, steps: int
) -> None:
    rtol = 0.01
    c = calibrate_mu(
        target_epsilon=target,
        delta=1e-5,
        l2_sensitivity=l2,
        l1_sensitivity=l2 * min(l2, 30.0),
        sample_rate=q,
        steps=steps,
        rtol=rtol,
    )
    assert c.epsilon <= target
    below = SkellamEvent(c.mu_total / (1 + rtol), l2, l2 * min(l2, 30.0), q, steps)
    assert skellam_epsilon([below], 1e-5) > target


def test_calibration_rejects_unreachable_or_meaningless_targets() -> None:
    with pytest.raises(PrivacyConfigError, match="target_epsilon must be"):
        calibrate_mu(
            target_epsilon=1e-9, delta=1e-5, l2_sensitivity=1.0, l1_sensitivity=1.0, steps=10**6
        )
    with pytest.raises(PrivacyConfigError, match="target_epsilon must be > 0"):
        calibrate_mu(target_epsilon=0.0, delta=1e-5, l2_sensitivity=1.0, l1_sensitivity=1.0)


# --------------------------------------------------------------------------- modular clipping


def test_planned_scale_never_wraps_even_for_aligned_worst_case_rows() -> None:
    # Shares for 2 survivors, 10 sites: up to 5x the planned noise can reach the sum.
    kwargs = {
        "clip": 1.0,
        "dim": 500,
        "n_sites": 10,
        "min_survivors": 2,
        "max_rows": 20,
        "target_epsilon": 0.5,
        "delta": 1e-5,
    }
    planning = plan_skellam(bits=16, **kwargs)  # type: ignore[arg-type]
    plan = planning.plan
    assert planning.wrap_probability <= 1e-9 and planning.calibration.epsilon <= 0.5
    assert plan.mu_share * 2 == pytest.approx(planning.calibration.mu_total)
    assert plan_skellam(bits=24, **kwargs).plan.scale > plan.scale  # type: ignore[arg-type]
    # The search stopped at the largest safe scale: twice the scale (and 4x the integer
    # variance, the same real-valued noise) breaks the bound.
    doubled = dataclasses.replace(plan, scale=plan.scale * 2, mu_share=plan.mu_share * 4)
    assert wrap_probability(doubled, 20) > 1e-9
    # 10 sites x 2 rows, all the same unit vector (the worst alignment): no coordinate wraps.
    rng = np.random.default_rng(8)
    row = np.zeros(plan.dim)
    row[3] = 1.0
    total = np.zeros(plan.rounding_dim, dtype=np.uint64)
    for _ in range(10):
        part = encode_contributions(plan, np.tile(row, (2, 1)), rng=rng, rotation_seed=5)
        total = (total + part) & np.uint64(plan.modulus - 1)
    decoded = decode_sum(plan, total, rotation_seed=5)
    noise_std = math.sqrt(10 * plan.mu_share) / plan.scale
    tolerance = 8 * noise_std + 20 * math.sqrt(plan.rounding_dim) / plan.scale
    expected = np.zeros(plan.dim)
    expected[3] = 20.0
    assert np.max(np.abs(decoded - expected)) < tolerance
    assert tolerance < 0.5 * plan.modulus / plan.scale  # a wrap would be off by modulus / scale
