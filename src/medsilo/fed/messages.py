"""What crosses the wire between the coordinator and a site.

Plain frozen dataclasses of numbers and numpy arrays: no torch tensors, no callables, so
an engine can serialize them (the local engine passes them by reference; the Flower
engine carries them as Flower messages). Weights are a name -> float32 array mapping in
the model's ``state_dict`` order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Weights = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters a site trains with in one round."""

    local_epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    """FedProx (Li et al., MLSys 2020): adds mu/2 * ||w - w_global||^2 to the local loss."""


@dataclass(frozen=True)
class RoundPlan:
    """Coordinator -> site: train from these global weights. ``secagg`` (a
    :class:`medsilo.fed.secure.SecAggRound`) asks for a masked update instead of a clear one."""

    round: int
    weights: Weights
    config: TrainConfig
    secagg: object | None = None
    sparse: bytes | None = None
    """FedLTN (:mod:`medsilo.fed.lottery`): the global weights on the site's mask in the
    sparse wire format (:mod:`medsilo.fed.sparse`), ``weights`` then empty; ``b""`` in
    round 1 after Jump-Start (the site starts from its own weights)."""


@dataclass(frozen=True)
class Update:
    """Site -> coordinator: ``delta = local weights - global weights`` on shared keys."""

    site: str
    round: int
    delta: Weights
    num_samples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    masked: bool = False
    """True under secure aggregation: ``delta`` is empty and the site's encoded delta
    enters only the masked sum of the secure-aggregation session."""
    sparse: bytes | None = None
    """FedLTN: the site's kept values and masks in the sparse wire format (``delta`` then
    empty); its length is exactly what the site sent."""


@dataclass(frozen=True)
class Refusal:
    """Site -> coordinator: the site will not take part in this round, and why."""

    site: str
    round: int
    reason: str


@dataclass(frozen=True)
class EvaluateRequest:
    """Coordinator -> site: evaluate these global weights on a split."""

    round: int
    weights: Weights
    split: Literal["val", "test"]


@dataclass(frozen=True)
class Evaluation:
    """Site -> coordinator: metrics of the global model (with the site's local layers)."""

    site: str
    round: int
    split: Literal["val", "test"]
    num_samples: int
    metrics: Mapping[str, float]


def copy_weights(weights: Weights) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in weights.items()}
