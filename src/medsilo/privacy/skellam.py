"""The Skellam mechanism: distributed, integer-valued DP noise for secure aggregation.

Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private Federated
Learning", NeurIPS 2021 (arXiv 2110.04995), below "AKL21". In ``distributed`` DP mode
(DESIGN.md) each site adds only a *share* of the noise, and the noise reaches full
strength only in the sum that secure aggregation reveals. Secure aggregation sums in
Z_(2^bits), so the noise must be an integer; the Skellam distribution is closed under
summation, so shares add up to exactly the noise the accountant assumed.

Parameterization (AKL21, Def. 3.1)
    ``Sk(mu)`` is the symmetric Skellam distribution of **variance** ``mu`` per coordinate:
    ``Poisson(mu/2) - Poisson(mu/2)``, pmf ``e^-mu I_k(mu)``. Independent
    ``Sk(mu_1), ..., Sk(mu_k)`` sum to ``Sk(mu_1 + ... + mu_k)`` exactly (Poisson variables
    add up). ``mu`` is always in integer units, i.e. on the lattice after scaling.

The site pipeline (:func:`encode_contributions`; AKL21 Sec. 4, after Kairouz, Liu,
Steinke, ICML 2021, "The distributed discrete Gaussian mechanism", below "KLS21")
    Each *contribution* (one row: one record's clipped gradient for record-level DP, or
    the whole update for site-level DP) is

    1. clipped to L2 norm ``clip`` (C);
    2. rotated by ``H D / sqrt(n)`` (:class:`~medsilo.privacy.rotation.HadamardRotation`,
       public seed per round; optional) so that no coordinate carries much mass;
    3. scaled by ``scale`` (``1 / gamma``, gamma the granularity; a power of two, as in
       :mod:`medsilo.secagg.quantize`, so scaling is exact in float64);
    4. stochastically rounded to integers, *conditionally* (KLS21, Sec. 4.1): rounding is
       redrawn until the integer vector's L2 norm is at most :attr:`SkellamPlan.l2_sensitivity`
       (``beta = 0`` gives plain unbiased stochastic rounding, whose norm is always below
       ``scale * C + sqrt(n)``). The bound is enforced on the integer vector itself, so no
       float error upstream can raise the sensitivity.

    then the site sums its rows, adds its share ``Sk(mu_share)`` (also when it has no row:
    a site never skips its share) and reduces mod 2^bits. :func:`decode_sum` inverts this on
    the unmasked sum: centred lift to ``[-2^(bits-1), 2^(bits-1))``, division by ``scale``,
    inverse rotation.

Why not :class:`medsilo.secagg.quantize.Quantizer`
    Same ring conventions (``uint64`` vectors in ``[0, 2^bits)``, reduction by bit mask,
    centred lift, power-of-two scale), but (a) the clip is L2 per contribution, not per
    coordinate, because the sensitivity the accountant needs is an L2 bound of the
    *rounded* vector; (b) Skellam noise is unbounded, so the Quantizer's deterministic
    headroom rule cannot hold: :func:`wrap_probability` bounds the chance of a wrap
    instead; (c) DESIGN.md's dependency table gives ``privacy`` no import of ``secagg``:
    ``fed`` joins the two (this module's output is a valid ``SiteInit.vector``).

Accounting (:func:`skellam_rdp`)
    For integer-valued sensitivities ``Delta_1 >= ||x - x'||_1``, ``Delta_2 >= ||x - x'||_2``
    and integer orders ``alpha > 1``, AKL21 (Sec. 3, the multi-dimensional RDP bound;
    Thm. 3.5 in arXiv v2 as numbered by the authors' reference code) gives::

        eps(alpha) <= alpha D2^2 / (2 mu)
                      + min(((2 alpha - 1) D2^2 + 6 D1) / (4 mu^2), 3 D1 / (2 mu))

    The first term is the Gaussian mechanism's RDP with sigma^2 = mu; the second is the
    price of being discrete and vanishes as O(1/mu^2). The statement was checked against
    the authors' code (google-research/federated, ``distributed_dp/accounting_utils.py``,
    ``_skellam_rdp``, written there in unscaled units) and, in ``tests/test_skellam.py``,
    against the exact Renyi divergence of shifted Skellam distributions (scipy).
    Sensitivities after rounding (KLS21, Thm. 1 and Prop. 22; AKL21 Sec. 4), for a
    contribution of norm at most ``c = scale * C`` in dimension ``n``::

        D2 = min(c + sqrt(n), sqrt(c^2 + n/4 + sqrt(2 log(1/beta)) (c + sqrt(n)/2)))
        D1 = D2 * min(sqrt(n), max(1, D2))   # integer vectors: ||v||_1 <= ||v||_2^2

    Poisson subsampling (each record takes part with probability q) uses the general
    upper bound of Zhu & Wang, "Poisson subsampled Renyi differential privacy" (ICML
    2019, the theorem valid for any mechanism; Thm. 5 in the PMLR numbering), as the
    AKL21 code does, and keeps the unsampled bound when it is smaller. RDP at a
    fractional order is bounded by the next integer order (Renyi divergence grows with
    the order: van Erven & Harremoes 2014, Thm. 3), so :func:`skellam_rdp` works on
    dp-accounting's order grid. Composition adds RDP; the conversion to (epsilon, delta)
    is :func:`medsilo.privacy.accounting.epsilon_from_rdp`.

Modular clipping
    The coordinator sees ``(sum + noise) mod 2^bits``, a function of ``sum + noise``:
    wrap-around is post-processing and never costs privacy (Dwork & Roth 2014, Prop. 2.1).
    It costs accuracy when a coordinate leaves ``[-2^(bits-1), 2^(bits-1))``;
    :func:`wrap_probability` bounds the chance (union bound over coordinates; Hoeffding for
    the rotated signal, the Skellam Chernoff bound for the noise, |rounding error| < 1 per
    contribution) and :func:`plan_skellam` picks the largest scale that keeps it small.

Dropouts and threat model (:func:`account_release`)
    Shares are planned for the minimum number ``t`` of sites whose inputs reach the sum:
    ``mu_share = mu_total / t``. A site reports two epsilons per release: against the
    honest-but-curious coordinator, which sees the sum carrying ``survivors * mu_share``
    (at least ``mu_total``); and against the coordinator colluding with every other site,
    which can subtract their inputs and shares and is left with this site's own share,
    ``mu_share``. With fewer than ``t`` survivors secure aggregation must abort and
    nothing is released: the engine must run it with threshold ``>= t``.

>>> rdp = skellam_rdp([2], mu=100.0, l2_sensitivity=1.0, l1_sensitivity=1.0)
>>> round(float(rdp[0]), 6)  # 2 / 200 + min((3 + 6) / 40000, 3 / 200)
0.010225
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from medsilo.privacy import _validate as check
from medsilo.privacy.accounting import epsilon_after
from medsilo.privacy.events import PrivacyEvent, SkellamEvent, Unit
from medsilo.privacy.rotation import HadamardRotation, padded_dim

__all__ = [
    "DEFAULT_BETA",
    "MAX_BITS",
    "MAX_MU_SHARE",
    "MIN_BITS",
    "Conversion",
    "ReleaseAccount",
    "SkellamCalibration",
    "SkellamEvent",
    "SkellamPlan",
    "SkellamPlanning",
    "account_release",
    "calibrate_mu",
    "conditional_stochastic_round",
    "decode_sum",
    "encode_contributions",
    "plan_skellam",
    "rounded_l1_bound",
    "rounded_l2_bound",
    "skellam_epsilon",
    "skellam_rdp",
    "skellam_share",
    "skellam_tail_bound",
    "wrap_probability",
]

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.int64]
Conversion: TypeAlias = Literal["balle", "classic"]

DEFAULT_BETA = math.exp(-0.5)
"""Conditional rounding's beta: each draw fails the norm bound with probability at most
beta (KLS21, Prop. 22); the AKL21 and KLS21 experiments use ``e^-0.5``."""

MIN_BITS = 2
MAX_BITS = 53
"""As :class:`medsilo.secagg.field.Ring`: every ring element is an exact float64."""

MAX_MU_SHARE = 2.0**50
"""Largest share variance a plan uses: numpy's Poisson sampler draws in float64, so
``Poisson(mu/2)`` stays exact integer arithmetic only well below 2^53. Finer scales
than this buys nothing (the rounding inflation is already negligible)."""

_ROWS_PER_CHUNK = 64
_MAX_ORDER = 1024


# --------------------------------------------------------------------------- sampling


def skellam_share(mu: float, size: int, rng: np.random.Generator) -> IntArray:
    """``size`` independent draws of ``Sk(mu)`` = ``Poisson(mu/2) - Poisson(mu/2)``
    (variance ``mu``), from ``rng``.

    ``rng`` is the site's own generator, seeded from its secret (``secrets`` /
    ``os.urandom``): the coordinator must never be able to reproduce a share. numpy's
    Poisson sampler works in floating point and is not a certified exact sampler.

    >>> share = skellam_share(8.0, 100_000, np.random.default_rng(0))
    >>> share.dtype, bool(abs(share.mean()) < 0.05), round(float(share.var()))
    (dtype('int64'), True, 8)
    """
    mu = check.positive("mu", mu, "A share without noise protects nothing.")
    size = check.count("size", size, minimum=0)
    if not isinstance(rng, np.random.Generator):
        raise check.fail("rng", "a numpy.random.Generator seeded from the site's secret", rng)
    half = mu / 2
    return rng.poisson(half, size).astype(np.int64) - rng.poisson(half, size).astype(np.int64)


def skellam_tail_bound(mu: float, threshold: float) -> float:
    """Chernoff bound on ``P(|Z| >= threshold)`` for ``Z ~ Sk(mu)``.

    ``E[e^(lambda Z)] = exp(mu (cosh(lambda) - 1))``; at ``lambda = asinh(a / mu)`` this
    gives ``P(|Z| >= a) <= 2 exp(-(a asinh(a / mu) - sqrt(mu^2 + a^2) + mu))``.

    >>> round(skellam_tail_bound(100.0, 60.0), 4)  # Gaussian tail 2 exp(-18) ~ 3e-8 is lower
    0.0
    >>> skellam_tail_bound(100.0, 0.0)
    1.0
    """
    mu = check.positive("mu", mu)
    a = check.real("threshold", threshold)
    if a <= 0:
        return 1.0
    exponent = a * math.asinh(a / mu) - (math.hypot(mu, a) - mu)
    return min(1.0, 2.0 * math.exp(-exponent))


# --------------------------------------------------------------------------- rounding


def rounded_l2_bound(norm: float, dim: int, beta: float = DEFAULT_BETA) -> float:
    """L2 norm bound of a vector of norm ``<= norm`` after (conditional) stochastic
    rounding to integers in dimension ``dim`` (KLS21, Thm. 1 and Prop. 22)::

        min(norm + sqrt(dim), sqrt(norm^2 + dim/4 + sqrt(2 log(1/beta)) (norm + sqrt(dim)/2)))

    ``beta = 0``: plain stochastic rounding, where each coordinate moves by less than 1,
    so the first bound always holds.

    >>> rounded_l2_bound(3.0, 16, beta=0.0)
    7.0
    >>> round(rounded_l2_bound(1000.0, 1024), 3)  # far below 1000 + sqrt(1024) = 1032
    1000.636
    """
    norm = check.positive("norm", norm)
    dim = check.count("dim", dim)
    beta = _beta(beta)
    bound_1 = norm + math.sqrt(dim)
    if beta == 0.0:
        return bound_1
    squared = norm**2 + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (norm + math.sqrt(dim) / 2)
    return min(bound_1, math.sqrt(squared))


def rounded_l1_bound(l2_bound: float, dim: int) -> float:
    """L1 bound of an integer vector of L2 norm ``<= l2_bound`` in dimension ``dim``:
    ``l2_bound * min(sqrt(dim), max(1, l2_bound))`` (Cauchy-Schwarz; and ``|k| <= k^2``
    for integers, so ``||v||_1 <= ||v||_2^2``; below 1 the only such vector is 0).

    >>> rounded_l1_bound(2.0, 100), rounded_l1_bound(20.0, 100), rounded_l1_bound(0.5, 1)
    (4.0, 200.0, 0.5)
    """
    l2_bound = check.positive("l2_bound", l2_bound)
    dim = check.count("dim", dim)
    return l2_bound * min(math.sqrt(dim), max(1.0, l2_bound))


def conditional_stochastic_round(
    rows: npt.ArrayLike, l2_bound: float, rng: np.random.Generator, beta: float = DEFAULT_BETA
) -> IntArray:
    """Round each row of ``rows`` to integers, ``floor(y) + Bernoulli(y - floor(y))`` per
    coordinate (unbiased), redrawing a row until its L2 norm is ``<= l2_bound``
    (KLS21, Sec. 4.1, "conditional randomized rounding").

    Each draw meets the bound with probability ``>= 1 - beta`` when ``l2_bound`` is
    :func:`rounded_l2_bound` of the rows' norm bound; the loop gives up (RuntimeError)
    after enough draws to fail only with probability 1e-12, which then means the rows
    were not clipped to the bound the caller claims.

    >>> out = conditional_stochastic_round([[0.5, -2.25]], 3.0, np.random.default_rng(1))
    >>> out.dtype, bool(np.all(np.abs(out - [[0.5, -2.25]]) < 1))
    (dtype('int64'), True)
    """
    values = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    if values.ndim != 2:
        raise check.fail("rows", "a vector or a matrix of rows", values.shape)
    if not np.all(np.isfinite(values)):
        raise check.fail("rows", "all finite", "a NaN or infinity")
    limit = check.positive("l2_bound", l2_bound)
    beta = _beta(beta)
    attempts = 1 if beta == 0.0 else max(1, math.ceil(math.log(1e-12) / math.log(beta)))
    attempts += 8  # beta = 0 or float edge cases: a handful of redraws, then give up
    floor = np.floor(values)
    fraction = values - floor
    base = floor.astype(np.int64)
    out = np.empty_like(base)
    pending = np.arange(len(values))
    limit_sq = limit * limit
    for _ in range(attempts):
        draw = base[pending] + (rng.random(fraction[pending].shape) < fraction[pending])
        norms_sq = np.einsum("ij,ij->i", draw, draw).astype(np.float64)
        ok = norms_sq <= limit_sq
        out[pending[ok]] = draw[ok]
        pending = pending[~ok]
        if pending.size == 0:
            return out
    raise RuntimeError(
        f"conditional rounding: {pending.size} row(s) never met the norm bound {limit:.6g}; "
        "were they clipped and scaled to the bound the plan assumes?"
    )


def _beta(beta: float) -> float:
    value = check.real("beta", beta)
    if not 0.0 <= value < 1.0:
        raise check.fail("beta", "in [0, 1) (0: plain stochastic rounding)", beta)
    return value


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class SkellamPlan:
    """Everything the sites and the coordinator agree on for distributed Skellam noise.

    ``clip`` (C) bounds each contribution's L2 norm; ``dim`` is its length; ``scale``
    (``1/gamma``, a power of two) maps it to the integer lattice; ``bits`` fixes the
    modulus 2^bits of secure aggregation; ``mu_share`` is the variance (integer units) of
    the share each site adds; ``min_survivors`` (t) is the number of shares the plan
    counts on; ``n_sites`` is how many sites may take part; ``beta`` is conditional
    rounding's parameter; ``rotate`` turns the randomized Hadamard rotation on.

    >>> plan = SkellamPlan(clip=1.0, dim=1000, scale=2.0**8, bits=32, mu_share=5e4,
    ...                    min_survivors=8, n_sites=10)
    >>> plan.rounding_dim, round(plan.l2_sensitivity, 2), plan.mu_total
    (1024, 257.03, 400000.0)
    """

    clip: float
    dim: int
    scale: float
    bits: int
    mu_share: float
    min_survivors: int
    n_sites: int
    beta: float = DEFAULT_BETA
    rotate: bool = True

    def __post_init__(self) -> None:
        check.positive("clip", self.clip)
        check.count("dim", self.dim)
        scale = check.positive("scale", self.scale)
        if math.frexp(scale)[0] != 0.5:
            raise check.fail("scale", "a power of two (exact float64 scaling)", self.scale)
        bits = check.count("bits", self.bits, minimum=MIN_BITS)
        if bits > MAX_BITS:
            raise check.fail("bits", f"in [{MIN_BITS}, {MAX_BITS}]", self.bits)
        check.positive("mu_share", self.mu_share, "A share without noise protects nothing.")
        t = check.count("min_survivors", self.min_survivors)
        n = check.count("n_sites", self.n_sites)
        if t > n:
            raise check.fail("min_survivors", f"<= n_sites = {n}", self.min_survivors)
        _beta(self.beta)
        if not isinstance(self.rotate, bool):
            raise check.fail("rotate", "True or False", self.rotate)

    @property
    def rounding_dim(self) -> int:
        """Length of the encoded vectors: ``dim`` padded to a power of two if rotated."""
        return padded_dim(self.dim) if self.rotate else self.dim

    @property
    def modulus(self) -> int:
        """``2^bits``."""
        return 1 << self.bits

    @property
    def l2_sensitivity(self) -> float:
        """Delta_2: the L2 bound every rounded contribution meets, in integer units."""
        return rounded_l2_bound(self.scale * self.clip, self.rounding_dim, self.beta)

    @property
    def l1_sensitivity(self) -> float:
        """Delta_1: the L1 bound implied by :attr:`l2_sensitivity` for integer vectors."""
        return rounded_l1_bound(self.l2_sensitivity, self.rounding_dim)

    @property
    def mu_total(self) -> float:
        """The noise the plan counts on reaching the sum: ``min_survivors * mu_share``."""
        return self.min_survivors * self.mu_share

    def rotation(self, seed: int) -> HadamardRotation:
        """The round's rotation, from its public ``seed``."""
        return HadamardRotation(self.dim, seed)


def encode_contributions(
    plan: SkellamPlan,
    contributions: npt.ArrayLike,
    *,
    rng: np.random.Generator,
    rotation_seed: int | None = None,
) -> npt.NDArray[np.uint64]:
    """A site's message for secure aggregation: its contributions (a vector, or a matrix
    of rows, possibly with no row) clipped, rotated, scaled, conditionally rounded and
    summed, plus its share ``Sk(mu_share)``, mod 2^bits; length :attr:`rounding_dim`.

    ``rng`` is the site's secret generator (rounding and noise); ``rotation_seed`` the
    round's public seed (required when ``plan.rotate``).
    """
    if not isinstance(plan, SkellamPlan):
        raise check.fail("plan", "a SkellamPlan", plan)
    if not isinstance(rng, np.random.Generator):
        raise check.fail("rng", "a numpy.random.Generator seeded from the site's secret", rng)
    rows = np.asarray(contributions, dtype=np.float64)
    if rows.ndim == 1:
        rows = rows[None, :]
    if rows.ndim != 2 or rows.shape[1] != plan.dim:
        raise check.fail(
            "contributions", f"a vector of length {plan.dim} or a matrix of such rows", rows.shape
        )
    if not np.all(np.isfinite(rows)):
        raise check.fail("contributions", "all finite", "a NaN or infinity")
    rotation = _rotation(plan, rotation_seed)
    total = np.zeros(plan.rounding_dim, dtype=np.int64)
    bound = plan.l2_sensitivity
    for start in range(0, len(rows), _ROWS_PER_CHUNK):
        chunk = rows[start : start + _ROWS_PER_CHUNK]
        norms = np.linalg.norm(chunk, axis=1)
        factor = np.minimum(1.0, plan.clip / np.maximum(norms, np.finfo(np.float64).tiny))
        clipped = chunk * factor[:, None]
        flat = rotation.forward(clipped) if rotation is not None else clipped
        total += conditional_stochastic_round(flat * plan.scale, bound, rng, plan.beta).sum(0)
    total += skellam_share(plan.mu_share, plan.rounding_dim, rng)
    return total.astype(np.uint64) & np.uint64(plan.modulus - 1)


def decode_sum(
    plan: SkellamPlan, total: npt.NDArray[np.uint64], *, rotation_seed: int | None = None
) -> FloatArray:
    """The coordinator's estimate of the sum of the clipped contributions, from the
    unmasked sum ``total`` in Z_(2^bits): centred lift, ``/ scale``, inverse rotation.
    Exact up to the rounding errors and the noise unless a coordinate wrapped
    (:func:`wrap_probability`).

    >>> plan = SkellamPlan(clip=10.0, dim=3, scale=2.0**10, bits=32, mu_share=1.0,
    ...                    min_survivors=2, n_sites=2, rotate=False)
    >>> rngs = [np.random.default_rng(s) for s in (1, 2)]
    >>> rows = ([1.0, 2.0, 3.0], [-3.0, 0.0, 0.5])
    >>> parts = [encode_contributions(plan, v, rng=r) for v, r in zip(rows, rngs)]
    >>> decode_sum(plan, (parts[0] + parts[1]) & np.uint64(2**32 - 1)).round(2).tolist()
    [-2.0, 2.0, 3.5]
    """
    if not isinstance(plan, SkellamPlan):
        raise check.fail("plan", "a SkellamPlan", plan)
    values = np.asarray(total)
    if values.dtype != np.uint64 or values.shape != (plan.rounding_dim,):
        raise check.fail(
            "total", f"a uint64 vector of length {plan.rounding_dim}", (values.dtype, values.shape)
        )
    if values.size and int(values.max()) >= plan.modulus:
        raise check.fail("total", f"a vector of Z_(2^{plan.bits}) (every element < 2^bits)", total)
    signed = values.astype(np.int64)
    signed[values >= np.uint64(plan.modulus // 2)] -= np.int64(plan.modulus)
    scaled = signed.astype(np.float64) / plan.scale
    rotation = _rotation(plan, rotation_seed)
    return rotation.inverse(scaled) if rotation is not None else scaled


def _rotation(plan: SkellamPlan, seed: int | None) -> HadamardRotation | None:
    if not plan.rotate:
        return None
    if seed is None:
        raise check.fail(
            "rotation_seed", "the round's public seed (an int >= 0) when plan.rotate", seed
        )
    return plan.rotation(seed)


# --------------------------------------------------------------------------- modular clipping


def wrap_probability(plan: SkellamPlan, max_rows: int, survivors: int | None = None) -> float:
    """Upper bound on the probability that some coordinate of the sum leaves
    ``[-2^(bits-1), 2^(bits-1))`` and wraps around (costs accuracy, never privacy).

    ``max_rows`` (m) bounds the contributions summed over all sites in one release;
    ``survivors`` (default ``n_sites``, the most noise) the shares in it. With
    ``H = 2^(bits-1) - 1 - m`` (|rounding error| < 1 per contribution) and any split
    ``H = a + b``, a coordinate wraps only if the signal exceeds ``a`` or the noise ``b``:

    * signal, rotated: ``||sum|| <= m C scale``, so (Hoeffding over the random signs)
      ``P(|.| >= a) <= 2 exp(-a^2 n / (2 (m C scale)^2))``; not rotated: 0 if
      ``a >= m C scale``, else no bound;
    * noise ``Sk(survivors * mu_share)``: :func:`skellam_tail_bound`.

    Union bound over the ``n`` coordinates; the best split on a grid.

    >>> plan = SkellamPlan(clip=1.0, dim=1000, scale=2.0**8, bits=32, mu_share=5e4,
    ...                    min_survivors=8, n_sites=10)
    >>> wrap_probability(plan, max_rows=100) < 1e-12, wrap_probability(plan, max_rows=10**9)
    (True, 1.0)
    """
    m = check.count("max_rows", max_rows, minimum=0)
    alive = plan.n_sites if survivors is None else check.count("survivors", survivors)
    budget = (plan.modulus // 2 - 1) - m
    if budget <= 0:
        return 1.0
    n = plan.rounding_dim
    mu = alive * plan.mu_share
    signal = m * plan.clip * plan.scale
    best = 1.0
    for a in np.linspace(0.0, float(budget), 513)[1:-1]:
        noise_tail = skellam_tail_bound(mu, budget - a)
        if signal == 0:
            signal_tail = 0.0
        elif plan.rotate:
            signal_tail = min(1.0, 2.0 * math.exp(-(a**2) * n / (2 * signal**2)))
        else:
            signal_tail = 0.0 if a >= signal else 1.0
        best = min(best, signal_tail + noise_tail)
    return min(1.0, n * best)


# --------------------------------------------------------------------------- accounting


def skellam_rdp(
    orders: Sequence[float] | FloatArray,
    *,
    mu: float,
    l2_sensitivity: float,
    l1_sensitivity: float,
    sample_rate: float = 1.0,
) -> FloatArray:
    """One release's RDP at each of ``orders`` (all > 1): the AKL21 bound at the integer
    ``ceil(alpha)``, Poisson-subsampled by Zhu & Wang's general bound when
    ``sample_rate < 1`` (module docstring).

    >>> [round(float(x), 6) for x in skellam_rdp([2, 2.5], mu=100.0, l2_sensitivity=1.0,
    ...                                           l1_sensitivity=1.0)]
    [0.010225, 0.015275]
    """
    a = np.asarray(orders, dtype=np.float64)
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 1):
        raise check.fail("orders", "a non-empty list of finite orders > 1", orders)
    ceil = np.ceil(a).astype(np.int64)
    if int(ceil.max()) > _MAX_ORDER:
        raise check.fail("orders", f"<= {_MAX_ORDER}", float(a.max()))
    mu = check.positive("mu", mu)
    l2 = check.positive("l2_sensitivity", l2_sensitivity)
    l1 = check.positive("l1_sensitivity", l1_sensitivity)
    q = check.sample_rate("sample_rate", sample_rate)
    unique = tuple(sorted({int(x) for x in ceil}))
    table = _one_step_rdp(unique, mu, l2, l1, q)
    index = {alpha: i for i, alpha in enumerate(unique)}
    return np.array([table[index[int(x)]] for x in ceil], dtype=np.float64)


def _unsampled_bound(alphas: IntArray, mu: float, l2: float, l1: float) -> FloatArray:
    """AKL21's multi-dimensional Skellam RDP bound at integer orders."""
    al = alphas.astype(np.float64)
    lead = al * l2**2 / (2 * mu)
    second = ((2 * al - 1) * l2**2 + 6 * l1) / (4 * mu**2)
    return lead + np.minimum(second, 3 * l1 / (2 * mu))


@functools.lru_cache(maxsize=4096)
def _one_step_rdp(alphas: tuple[int, ...], mu: float, l2: float, l1: float, q: float) -> FloatArray:
    orders = np.array(alphas, dtype=np.int64)
    top = int(orders.max())
    eps = _unsampled_bound(np.arange(0, top + 1, dtype=np.int64), mu, l2, l1)  # index = order
    unsampled = eps[orders]
    if q == 1.0:
        out = unsampled
    else:
        out = np.minimum(unsampled, _poisson_subsampled(orders, q, eps, coefficient=3.0))
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=8)
def _log_factorials(top: int) -> FloatArray:
    return np.array([math.lgamma(k + 1) for k in range(top + 1)], dtype=np.float64)


def _poisson_subsampled(
    orders: IntArray, q: float, eps: FloatArray, coefficient: float = 3.0
) -> FloatArray:
    """Zhu & Wang (ICML 2019): RDP of the Poisson-subsampled mechanism at integer
    ``orders`` from the base mechanism's RDP ``eps[l]`` at l = 2..max(orders)::

        1/(a-1) log[ (1-q)^(a-1) (a q - q + 1) + C(a,2) q^2 (1-q)^(a-2) e^eps(2)
                     + coefficient * sum_{l=3}^{a} C(a,l) q^l (1-q)^(a-l) e^((l-1) eps(l)) ]

    ``coefficient = 3``: their general upper bound, valid for any mechanism.
    ``coefficient = 1``: the exact value for the Gaussian (Mironov, Talwar, Zhang 2019),
    used only by the tests as a check against dp-accounting."""
    top = int(orders.max())
    lf = _log_factorials(top)
    ells = np.arange(2, top + 1, dtype=np.int64)
    a = orders[:, None]
    log_q, log_1q = math.log(q), math.log1p(-q)
    log_binom = lf[a] - lf[ells][None, :] - lf[np.maximum(a - ells[None, :], 0)]
    terms = log_binom + ells * log_q + (a - ells) * log_1q + (ells - 1) * eps[ells]
    terms = terms + np.where(ells >= 3, math.log(coefficient), 0.0)
    terms = np.where(ells[None, :] <= a, terms, -np.inf)
    base = (orders - 1) * log_1q + np.log1p(q * (orders - 1))
    stacked = np.concatenate([base[:, None], terms], axis=1)
    peak = stacked.max(axis=1, keepdims=True)
    total = peak[:, 0] + np.log(np.exp(stacked - peak).sum(axis=1))
    result: FloatArray = np.maximum(total, 0.0) / (orders - 1)
    return result


def skellam_epsilon(
    events: Iterable[PrivacyEvent], delta: float, conversion: Conversion = "balle"
) -> float:
    """Epsilon at ``delta`` after all ``events`` (Skellam releases and any other event of
    the same unit of privacy): :func:`medsilo.privacy.accounting.epsilon_after` with the
    accountant ``"rdp"`` (``"balle"``) or ``"rdp_classic"`` (``"classic"``).

    >>> release = SkellamEvent(mu=1e6, l2_sensitivity=1000.0, l1_sensitivity=1000.0 ** 2)
    >>> round(skellam_epsilon([release], 1e-5), 3)  # Gaussian sigma = 1 ("rdp"): 4.729
    4.753
    """
    if conversion not in ("balle", "classic"):
        raise check.fail("conversion", "'balle' or 'classic'", conversion)
    return epsilon_after(events, delta, "rdp" if conversion == "balle" else "rdp_classic")


# --------------------------------------------------------------------------- dropouts


@dataclass(frozen=True)
class ReleaseAccount:
    """What one site spent in one secure-aggregation release of distributed Skellam noise.

    ``released`` is False when fewer than ``min_survivors`` shares reached the sum: the
    protocol aborted, nothing left the site's control, nothing is spent (no events,
    epsilons 0). Otherwise ``coordinator`` is the release as the coordinator sees it
    (``survivors * mu_share``) and ``collusion`` as the coordinator colluding with all
    other sites sees it (this site's share, ``mu_share``); the epsilons are those of this
    release alone, at ``delta``; the ledger composes the events over the run.
    """

    released: bool
    min_survivors: int
    survivors: int
    mu_share: float
    delta: float
    coordinator: SkellamEvent | None
    collusion: SkellamEvent | None
    epsilon_coordinator: float
    epsilon_collusion: float


def account_release(
    plan: SkellamPlan,
    survivors: int,
    *,
    delta: float,
    sample_rate: float = 1.0,
    steps: int = 1,
    unit: Unit = "record",
    conversion: Conversion = "balle",
) -> ReleaseAccount:
    """The two epsilons of a release that ``survivors`` shares reached (module docstring,
    "Dropouts and threat model").

    >>> plan = SkellamPlan(clip=1.0, dim=4, scale=2.0**10, bits=40, mu_share=2.7e5,
    ...                    min_survivors=4, n_sites=5, rotate=False)
    >>> full, one_drop = account_release(plan, 5, delta=1e-5), account_release(plan, 4, delta=1e-5)
    >>> full.epsilon_coordinator < one_drop.epsilon_coordinator < one_drop.epsilon_collusion
    True
    >>> full.epsilon_collusion == one_drop.epsilon_collusion
    True
    >>> account_release(plan, 3, delta=1e-5).released
    False
    """
    if not isinstance(plan, SkellamPlan):
        raise check.fail("plan", "a SkellamPlan", plan)
    alive = check.count("survivors", survivors, minimum=0)
    if alive > plan.n_sites:
        raise check.fail("survivors", f"<= n_sites = {plan.n_sites}", survivors)
    delta = check.probability_open("delta", delta)
    if alive < plan.min_survivors:
        return ReleaseAccount(
            False, plan.min_survivors, alive, plan.mu_share, delta, None, None, 0.0, 0.0
        )
    l2, l1 = plan.l2_sensitivity, plan.l1_sensitivity
    seen = SkellamEvent(alive * plan.mu_share, l2, l1, sample_rate, steps, unit)
    own = SkellamEvent(plan.mu_share, l2, l1, sample_rate, steps, unit)
    return ReleaseAccount(
        True,
        plan.min_survivors,
        alive,
        plan.mu_share,
        delta,
        seen,
        own,
        skellam_epsilon([seen], delta, conversion),
        skellam_epsilon([own], delta, conversion),
    )


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class SkellamCalibration:
    """The smallest total variance ``mu_total`` (integer units, to within ``rtol``) whose
    ``steps`` releases spend at most ``target_epsilon``; ``epsilon <= target_epsilon``."""

    mu_total: float
    epsilon: float
    target_epsilon: float
    delta: float
    l2_sensitivity: float
    l1_sensitivity: float
    sample_rate: float
    steps: int
    evaluations: int


_MU_MAX_FACTOR = 1e12  # mu / Delta_2^2 above this (noise multiplier 1e6) is unreachable


def calibrate_mu(
    *,
    target_epsilon: float,
    delta: float,
    l2_sensitivity: float,
    l1_sensitivity: float,
    sample_rate: float = 1.0,
    steps: int = 1,
    rtol: float = 1e-3,
    conversion: Conversion = "balle",
) -> SkellamCalibration:
    """Bisection on log(mu) for the total Skellam variance that spends ``target_epsilon``
    over ``steps`` releases. Epsilon decreases in mu (every term of the bound, the
    subsampling bound and the conversion are monotone), so keeping
    ``eps(lo) > target >= eps(hi)`` and returning ``hi`` never overshoots the target.

    >>> c = calibrate_mu(target_epsilon=4.753, delta=1e-5, l2_sensitivity=1000.0,
    ...                  l1_sensitivity=1000.0**2)
    >>> round(c.mu_total / 1000.0**2, 2), c.epsilon <= 4.753  # the Gaussian's sigma = 1
    (1.0, True)
    """
    target = check.positive("target_epsilon", target_epsilon)
    delta = check.probability_open("delta", delta)
    l2 = check.positive("l2_sensitivity", l2_sensitivity)
    l1 = check.positive("l1_sensitivity", l1_sensitivity)
    q = check.sample_rate("sample_rate", sample_rate)
    n_steps = check.count("steps", steps)
    rtol = check.real("rtol", rtol)
    if not 1e-9 <= rtol <= 0.5:
        raise check.fail("rtol", "in [1e-9, 0.5]", rtol)
    evaluations = 0

    def eps(mu: float) -> float:
        nonlocal evaluations
        evaluations += 1
        return skellam_epsilon([SkellamEvent(mu, l2, l1, q, n_steps)], delta, conversion)

    hi = l2**2
    f_hi = eps(hi)
    if f_hi > target:  # too little noise: grow until the target is met
        lo = hi
        while f_hi > target:
            lo, hi = hi, hi * 16
            if hi > _MU_MAX_FACTOR * l2**2:
                raise check.fail(
                    "target_epsilon",
                    f"reachable with mu <= {_MU_MAX_FACTOR:g} Delta_2^2",
                    target,
                    "Raise the target, or lower the sampling rate or the number of steps.",
                )
            f_hi = eps(hi)
    else:  # enough noise already: shrink until the target is missed
        lo = hi / 16
        f_lo = eps(lo)
        while f_lo <= target:
            if lo < 1e-12 * l2**2:
                raise check.fail(
                    "target_epsilon",
                    "small enough to need some noise",
                    target,
                    "Even a negligible mu meets it; the target is meaningless.",
                )
            hi, f_hi = lo, f_lo
            lo = hi / 16
            f_lo = eps(lo)
    while hi > lo * (1 + rtol):
        mid = math.sqrt(lo * hi)
        f_mid = eps(mid)
        if f_mid <= target:
            hi, f_hi = mid, f_mid
        else:
            lo = mid
    return SkellamCalibration(hi, f_hi, target, delta, l2, l1, q, n_steps, evaluations)


@dataclass(frozen=True)
class SkellamPlanning:
    """A plan from :func:`plan_skellam`, the calibration behind it and its wrap bound."""

    plan: SkellamPlan
    calibration: SkellamCalibration
    wrap_probability: float


def plan_skellam(
    *,
    clip: float,
    dim: int,
    bits: int,
    n_sites: int,
    min_survivors: int,
    max_rows: int,
    target_epsilon: float | None = None,
    delta: float,
    sample_rate: float = 1.0,
    steps: int = 1,
    beta: float = DEFAULT_BETA,
    rotate: bool = True,
    max_wrap_probability: float = 1e-9,
    rtol: float = 1e-3,
    noise_multiplier: float | None = None,
) -> SkellamPlanning:
    """The largest power-of-two scale (finest granularity) whose calibrated plan keeps
    :func:`wrap_probability` at most ``max_wrap_probability`` with all ``n_sites`` shares
    and ``max_rows`` contributions; ``mu_share = mu_total / min_survivors``.

    ``mu_total`` is calibrated to ``target_epsilon`` over ``steps`` releases, or, given
    ``noise_multiplier`` (sigma) instead, is the variance of the Gaussian it names:
    ``mu_total = (sigma * Delta_2)^2`` (the calibration then reports its epsilon).

    A larger scale means relatively less rounding inflation of the sensitivity (the noise
    grows with the scale, so its real-valued size stays put) but more mass near the
    modulus, so the search starts at the largest scale the signal alone allows and halves.

    >>> p = plan_skellam(clip=1.0, dim=1000, bits=16, n_sites=10, min_survivors=8,
    ...                  max_rows=10, target_epsilon=3.0, delta=1e-5)
    >>> p.plan.scale, p.wrap_probability <= 1e-9, p.calibration.epsilon <= 3.0
    (2048.0, True, True)
    """
    check.positive("clip", clip)
    bits = check.count("bits", bits, minimum=MIN_BITS)
    m = check.count("max_rows", max_rows)
    limit = check.probability_open("max_wrap_probability", max_wrap_probability)
    headroom = 2 ** (bits - 1) - 1 - m
    if headroom <= 0:
        raise check.fail("bits", f"large enough that 2^(bits-1) > max_rows + 1 = {m + 1}", bits)
    if (target_epsilon is None) == (noise_multiplier is None):
        raise check.fail(
            "target_epsilon", "given, or else noise_multiplier (exactly one)", target_epsilon
        )
    exponent = math.floor(math.log2(headroom / (m * clip)))
    for _ in range(64):
        scale = 2.0**exponent
        draft = SkellamPlan(clip, dim, scale, bits, 1.0, min_survivors, n_sites, beta, rotate)
        if noise_multiplier is not None:
            calibration = _fixed_noise(draft, noise_multiplier, delta, sample_rate, steps)
        else:
            calibration = calibrate_mu(
                target_epsilon=check.positive("target_epsilon", target_epsilon),
                delta=delta,
                l2_sensitivity=draft.l2_sensitivity,
                l1_sensitivity=draft.l1_sensitivity,
                sample_rate=sample_rate,
                steps=steps,
                rtol=rtol,
            )
        mu_share = calibration.mu_total / min_survivors
        if mu_share > MAX_MU_SHARE:  # mu grows as scale^2: step down to below the cap
            exponent -= max(1, math.ceil(0.5 * math.log2(mu_share / MAX_MU_SHARE)))
            continue
        plan = SkellamPlan(clip, dim, scale, bits, mu_share, min_survivors, n_sites, beta, rotate)
        wrap = wrap_probability(plan, m)
        if wrap <= limit:
            return SkellamPlanning(plan, calibration, wrap)
        exponent -= 1
    raise check.fail(
        "bits",
        f"enough for the signal and the noise (no scale keeps the wrap probability <= {limit:g})",
        bits,
        "Raise bits, or lower max_rows or n_sites.",
    )


def _fixed_noise(
    draft: SkellamPlan, noise_multiplier: float, delta: float, sample_rate: float, steps: int
) -> SkellamCalibration:
    """The "calibration" of a given sigma: mu_total = (sigma * Delta_2)^2, and its epsilon."""
    sigma = check.positive("noise_multiplier", noise_multiplier)
    l2, l1 = draft.l2_sensitivity, draft.l1_sensitivity
    mu = (sigma * l2) ** 2
    event = SkellamEvent(mu, l2, l1, sample_rate, check.count("steps", steps))
    epsilon = skellam_epsilon([event], delta)
    return SkellamCalibration(mu, epsilon, epsilon, delta, l2, l1, sample_rate, steps, 1)
