"""Differential privacy in the round logic: what a site does in ``local`` mode and what the
coordinator does in ``central`` mode.

``local`` (record-level; Dopamine's "parallel DP"): every site runs DP-SGD with its own
noise multiplier, calibrated for its own sampling rate and the whole planned study, and
records each release in its own ledger *before* the update leaves it. Its update is
private even against the coordinator.

``central`` (site-level; DP-FedAvg, McMahan et al., ICLR 2018): a trusted coordinator clips
each site's whole update to L2 norm S, sums, adds N(0, z^2 S^2 I) and divides by the
*expected* number of sites q K (a fixed denominator, so one site's presence changes the
sum by at most S). Accounted as a subsampled Gaussian with q = fraction of sites per round
and one step per round. Sites' updates are not private against the coordinator.

``distributed`` (record-level; Dopamine, Malekzadeh et al., PPAI-21): each round is one
DP-SGD step of the whole federation. Every site Poisson-samples its records, clips each
record's gradient, and sends the sum plus a Skellam *share* of the noise
(:mod:`medsilo.privacy.skellam`) through secure aggregation; the coordinator only ever sees
the sum, whose noise is the sum of the shares that reached it (at least the planned minimum
t, or the session aborts), divides it by the expected batch of the whole federation and
takes a server step. Each site records two views of every release in its ledger: against
the coordinator (the sum's noise) and against the coordinator colluding with every other
site (its own share only).

Randomness that privacy depends on (Poisson sampling of records, noise, site selection in
central mode) is drawn from secrets that only its owner holds (:func:`secret_stream`),
never from the study seed, which every party knows: amplification by subsampling assumes
the adversary does not know who was sampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medsilo.fed.messages import Update, Weights
from medsilo.privacy.dpsgd import secret_seed
from medsilo.privacy.events import DpFedAvgEvent, DpSgdEvent, SkellamEvent
from medsilo.privacy.ledger import Ledger
from medsilo.privacy.skellam import SkellamPlan


@dataclass
class LocalDp:
    """A site's DP-SGD settings for ``local`` mode, and its ledger."""

    sample_rate: float
    noise_multiplier: float
    clip: float
    steps_per_round: int
    secret: bytes
    ledger: Ledger

    def event(self) -> DpSgdEvent:
        return DpSgdEvent(self.sample_rate, self.noise_multiplier, self.steps_per_round)


@dataclass
class CentralDpSite:
    """What a site records in ``central`` mode: the coordinator's per-round mechanism."""

    sample_rate: float
    noise_multiplier: float
    clip: float
    ledger: Ledger

    def event(self) -> DpFedAvgEvent:
        return DpFedAvgEvent(self.sample_rate, self.noise_multiplier, 1)


@dataclass
class DistributedDp:
    """A site's part of ``distributed`` mode: its sampling rate, the study's Skellam plan
    (which the site checks against every round plan), its secret and its ledger."""

    sample_rate: float
    skellam: SkellamPlan
    secret: bytes
    ledger: Ledger

    @property
    def clip(self) -> float:
        """C: the L2 clip of each record's gradient."""
        return self.skellam.clip

    def event(self, shares: int | None = None) -> SkellamEvent:
        """One step as the coordinator sees it: ``shares`` noise shares in the sum
        (default: the planned minimum t, the fewest the session releases a sum with)."""
        plan = self.skellam
        count = plan.min_survivors if shares is None else shares
        return SkellamEvent(
            count * plan.mu_share, plan.l2_sensitivity, plan.l1_sensitivity, self.sample_rate
        )

    def collusion_event(self) -> SkellamEvent:
        """One step against the coordinator and every other site: this site's share."""
        return self.event(1)


SiteDp = LocalDp | CentralDpSite | DistributedDp


@dataclass(frozen=True)
class DistributedSum:
    """The coordinator's part of ``distributed`` mode: the Skellam plan and the
    federation's expected batch sum_i q_i n_i, the fixed denominator of each step."""

    skellam: SkellamPlan
    expected_batch: float


@dataclass(frozen=True)
class CentralDp:
    """The coordinator's DP-FedAvg parameters (``central`` mode)."""

    clip: float
    noise_multiplier: float
    expected_sites: float
    secret: bytes


def l2_norm(arrays: Weights) -> float:
    return float(
        np.sqrt(sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for a in arrays.values()))
    )


def dp_fedavg_pseudo_gradient(
    weights: Weights, updates: Sequence[Update], dp: CentralDp, round_: int
) -> dict[str, np.ndarray]:
    """(sum_i clip_S(Delta_i) + N(0, z^2 S^2 I)) / (q K)  (McMahan et al. 2018, Alg. 1).

    >>> dp = CentralDp(clip=1.0, noise_multiplier=0.0, expected_sites=2.0, secret=b"k")
    >>> u = [Update("a", 1, {"w": np.array([3.0, 4.0])}, 10)]  # norm 5 -> clipped to 1
    >>> dp_fedavg_pseudo_gradient({"w": np.zeros(2)}, u, dp, 1)["w"]
    array([0.3, 0.4])
    """
    total = {k: np.zeros(np.shape(v), dtype=np.float64) for k, v in weights.items()}
    for u in updates:
        norm = l2_norm(u.delta)
        factor = min(1.0, dp.clip / norm) if norm > 0 else 1.0
        for k in total:
            total[k] += factor * np.asarray(u.delta[k], dtype=np.float64)
    rng = np.random.default_rng(secret_seed(dp.secret, round_, 7))
    std = dp.noise_multiplier * dp.clip
    return {
        k: (v + rng.normal(0.0, std, size=v.shape)) / dp.expected_sites for k, v in total.items()
    }
