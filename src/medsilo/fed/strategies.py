"""Server-side strategies: how the coordinator turns site updates into new global weights.

All strategies share one shape (Reddi et al., "Adaptive Federated Optimization",
ICLR 2021, Algorithm 2): the sites' deltas are averaged, weighted by their sample counts,
into a pseudo-gradient

    Delta_t = sum_i n_i * (w_i - w_t) / sum_i n_i

and a server optimizer applies it:

* FedAvg / FedProx (McMahan et al. 2017; Li et al. 2020): w <- w + eta * Delta (eta = 1
  gives plain sample-weighted averaging; FedProx differs only on the site side);
* FedAvgM (Hsu et al. 2019): m <- beta * m + Delta; w <- w + eta * m;
* all three adaptive ones: m <- b1 m + (1-b1) Delta, and
* FedAdagrad: v <- v + Delta^2;
* FedAdam:    v <- b2 v + (1-b2) Delta^2;
* FedYogi:    v <- v - (1-b2) Delta^2 sign(v - Delta^2);
  then w <- w + eta * m / (sqrt(v) + tau), v initialised to tau^2 and m to 0, no bias
  correction (as in the paper).

``fedltn`` (FedLTN / LotteryFL, :mod:`medsilo.fed.lottery`) does not go through
:func:`server_step`: it averages each coordinate over the sites that kept it and applies
the server momentum of the ``[lottery]`` section.

:func:`aggregate` is pure: weights and optimizer state in, new weights and state out.
Arithmetic is float64 and results are cast back to each array's dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from medsilo.fed.messages import Update, Weights

StrategyName = Literal["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedltn"]
ServerState = dict[str, dict[str, np.ndarray]]

DEFAULT_SERVER_LR = {
    "fedavg": 1.0,
    "fedprox": 1.0,
    "fedavgm": 1.0,
    "fedadam": 0.01,
    "fedyogi": 0.01,
    "fedadagrad": 0.01,
    "fedltn": 1.0,
}


class StrategySpec(BaseModel):
    """``[strategy]`` in a study file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrategyName = "fedavg"
    fraction: float = Field(default=1.0, gt=0, le=1)
    """Fraction of sites asked to train each round (at least ``min_sites``)."""
    min_sites: int = Field(default=1, ge=1)
    server_lr: float | None = Field(default=None, gt=0)
    """eta; defaults to 1.0 for fedavg/fedprox/fedavgm and 0.01 for the adaptive ones."""
    server_momentum: float = Field(default=0.9, ge=0, lt=1)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.99, ge=0, lt=1)
    tau: float = Field(default=1e-3, gt=0)
    mu: float = Field(default=0.01, ge=0)
    """FedProx proximal weight (used only by ``fedprox``)."""
    fedbn: bool = False
    """Keep normalization layers local to each site (FedBN, Li et al. ICLR 2021)."""

    @model_validator(mode="after")
    def _prox(self) -> StrategySpec:
        if self.name == "fedprox" and self.mu <= 0:
            raise ValueError("fedprox needs mu > 0 (mu = 0 is plain fedavg)")
        return self

    @property
    def eta(self) -> float:
        return self.server_lr if self.server_lr is not None else DEFAULT_SERVER_LR[self.name]

    @property
    def proximal_mu(self) -> float:
        return self.mu if self.name == "fedprox" else 0.0


def pseudo_gradient(weights: Weights, updates: Sequence[Update]) -> dict[str, np.ndarray]:
    """Sample-weighted mean of the updates' deltas, in float64.

    >>> u = [Update("a", 1, {"w": np.array([1.0])}, 1), Update("b", 1, {"w": np.array([4.0])}, 2)]
    >>> pseudo_gradient({"w": np.zeros(1)}, u)["w"]
    array([3.])
    """
    if not updates:
        raise ValueError("no updates to aggregate")
    total = sum(u.num_samples for u in updates)
    if total <= 0:
        raise ValueError("updates carry no samples")
    out = {k: np.zeros(np.shape(v), dtype=np.float64) for k, v in weights.items()}
    for u in updates:
        if set(u.delta) != set(weights):
            raise ValueError(f"update from '{u.site}' has keys that do not match the global model")
        for k in out:
            out[k] += (u.num_samples / total) * np.asarray(u.delta[k], dtype=np.float64)
    return out


def aggregate(
    spec: StrategySpec, weights: Weights, updates: Sequence[Update], state: ServerState
) -> tuple[dict[str, np.ndarray], ServerState]:
    """One server step; returns new global weights and new optimizer state."""
    return server_step(spec, weights, pseudo_gradient(weights, updates), state)


def server_step(
    spec: StrategySpec, weights: Weights, delta: Mapping[str, np.ndarray], state: ServerState
) -> tuple[dict[str, np.ndarray], ServerState]:
    """Apply a pseudo-gradient ``delta`` with the strategy's server optimizer."""
    eta = spec.eta
    m_old, v_old = state.get("m", {}), state.get("v", {})
    new_m: dict[str, np.ndarray] = {}
    new_v: dict[str, np.ndarray] = {}
    step: dict[str, np.ndarray] = {}
    for k, d in delta.items():
        m = m_old.get(k, np.zeros_like(d))
        v = v_old.get(k, np.full_like(d, spec.tau**2))
        if spec.name in ("fedavg", "fedprox"):
            step[k] = eta * d
            continue
        if spec.name == "fedavgm":
            new_m[k] = spec.server_momentum * m + d
            step[k] = eta * new_m[k]
            continue
        new_m[k] = spec.beta1 * m + (1 - spec.beta1) * d
        if spec.name == "fedadagrad":
            new_v[k] = v + d**2
        elif spec.name == "fedadam":
            new_v[k] = spec.beta2 * v + (1 - spec.beta2) * d**2
        else:  # fedyogi
            new_v[k] = v - (1 - spec.beta2) * d**2 * np.sign(v - d**2)
        step[k] = eta * new_m[k] / (np.sqrt(new_v[k]) + spec.tau)
    new_weights = {
        k: (np.asarray(w, dtype=np.float64) + step[k]).astype(np.asarray(w).dtype)
        for k, w in weights.items()
    }
    new_state: ServerState = {}
    if new_m:
        new_state["m"] = new_m
    if new_v:
        new_state["v"] = new_v
    return new_weights, new_state
