"""Secure aggregation in the round logic (Bonawitz et al., CCS 2017; SecAgg+ graph of
Bell et al., CCS 2020; the protocol itself lives in :mod:`medsilo.secagg`).

With ``[secure_aggregation] enabled = true`` a site never sends its update in the clear:
it clips each coordinate of its flattened delta to ``[-clip, clip]``, encodes it in
Z_(2^bits) (:class:`~medsilo.secagg.quantize.Quantizer`) and takes part in a session whose
five stages the engine carries. The coordinator sees key advertisements, encrypted shares,
*masked* vectors (uniform in Z_(2^bits)), signatures and unmasking shares, and learns only
the sum of the survivors' vectors; it divides by the number of survivors.

With ``privacy.mode = "distributed"`` the vector a site encodes is not its clipped delta
but its sum of clipped per-record gradients plus a Skellam noise share
(:mod:`medsilo.fed.dp`), encoded by the study's :class:`~medsilo.privacy.skellam.SkellamPlan`
(carried in :attr:`SecAggRound.skellam`); the session's threshold is then at least the
plan's minimum number of shares t, so no sum with less noise is ever unmasked.

Aggregation is therefore the *unweighted* mean of the sites' clipped deltas (sample-
weighted FedAvg would need every site's count, and bounded-sensitivity DP needs uniform
weights, as in Dopamine and DP-FedAvg). Strategies that need individual updates (central
DP's server-side clipping) are rejected with secure aggregation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medsilo.fed.messages import Weights
from medsilo.privacy.skellam import SkellamPlan
from medsilo.secagg.config import SessionConfig
from medsilo.secagg.graph import complete_graph, harary_graph, plan_graph
from medsilo.secagg.quantize import Quantizer, choose_scale


class SecAggSpec(BaseModel):
    """``[secure_aggregation]`` in a study file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    bits: int = Field(default=32, ge=8, le=53)
    """Modulus 2^bits of the ring the sums live in."""
    clip: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    """Each coordinate of a site's delta is clipped to [-clip, clip] before encoding."""
    dropout_rate: float = Field(default=0.2, ge=0, lt=1)
    """Fraction of a round's sites the session must survive losing (sets threshold t)."""
    full_graph_max: int = Field(default=20, ge=2)
    """Up to this many sites every pair shares masks; above, a SecAgg+ Harary graph."""


@dataclass(frozen=True)
class SecAggRound:
    """What every party of one round's session agrees on (sent in the round plan)."""

    quantizer: Quantizer
    keys: tuple[str, ...]
    """Shared weight names, in the order they are flattened."""
    mask_keys: tuple[str, ...] = ()
    """FedLTN (:mod:`medsilo.fed.lottery`): after the deltas each site appends ``clip``
    times its 0/1 mask of these tensors, so the sum also says how many sites kept each
    coordinate (the common support is the whole model; see ``docs/personalization.md``)."""
    skellam: SkellamPlan | None = None
    """Distributed DP: the plan each site encodes its gradient sum and noise share with."""
    rotation_seed: int = 0
    """Distributed DP: the round's public seed of the randomized Hadamard rotation."""

    def dim(self, template: Weights) -> int:
        """Length of the vector each site encodes."""
        if self.skellam is not None:
            return self.skellam.rounding_dim
        return sum(int(np.size(template[k])) for k in (*self.keys, *self.mask_keys))


def flatten(weights: Weights, keys: Sequence[str]) -> np.ndarray:
    return np.concatenate([np.asarray(weights[k], dtype=np.float64).ravel() for k in keys])


def unflatten(vector: np.ndarray, template: Weights, keys: Sequence[str]) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for k in keys:
        shape = np.shape(template[k])
        size = int(np.prod(shape))
        out[k] = vector[start : start + size].reshape(shape)
        start += size
    return out


def min_survivors(spec: SecAggSpec, sites: int) -> int:
    """The fewest sites whose inputs a session among ``sites`` may sum: its threshold t
    on the complete graph (distributed DP plans its noise shares for t). SecAgg+'s sparse
    graphs have per-neighbourhood thresholds that bound no global count: refused."""
    n = max(2, sites)
    plan = plan_graph(n, spec.dropout_rate, full_graph_max=spec.full_graph_max)
    if plan.degree != n - 1:
        raise ValueError(
            f"distributed DP needs the complete secure-aggregation graph, whose threshold "
            f"bounds how many noise shares reach the sum; {sites} sites exceed "
            f"secure_aggregation.full_graph_max = {spec.full_graph_max} (raise it)"
        )
    return plan.threshold


def round_quantizer(spec: SecAggSpec, sites: int) -> Quantizer:
    """Encoding with headroom for ``sites`` summands (the sites asked to train)."""
    n = max(2, sites)
    return Quantizer(spec.clip, n, spec.bits, choose_scale(spec.clip, n, spec.bits))


def session_config(
    spec: SecAggSpec,
    participants: Sequence[str],
    dim: int,
    rng: np.random.Generator,
    min_threshold: int = 2,
) -> SessionConfig:
    """A session among ``participants``: a fresh random id, and the graph and threshold t
    from :func:`~medsilo.secagg.graph.plan_graph` (complete up to ``full_graph_max``),
    raised to ``min_threshold`` (distributed DP's minimum number of noise shares)."""
    n = len(participants)
    plan = plan_graph(n, spec.dropout_rate, full_graph_max=spec.full_graph_max)
    graph = (
        complete_graph(participants)
        if plan.degree == n - 1
        else harary_graph(participants, plan.degree, rng)
    )
    threshold = max(plan.threshold, min_threshold)
    return SessionConfig(os.urandom(16), graph, threshold, spec.bits, dim)


def decode_mean(
    round_: SecAggRound, total: np.ndarray, survivors: int, template: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Mean of the survivors' clipped deltas from the unmasked sum."""
    return unflatten(round_.quantizer.decode(total, survivors) / survivors, template, round_.keys)
