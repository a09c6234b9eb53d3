"""``Site``: the round logic a hospital runs. It holds the data, which never leaves it;
it answers a :class:`RoundPlan` with an :class:`Update` and an :class:`EvaluateRequest`
with an :class:`Evaluation`. It keeps its local layers (FedBN) between rounds.

Every engine drives the same object; an engine only carries the messages.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from medsilo.data.types import SiteData
from medsilo.fed.messages import EvaluateRequest, Evaluation, RoundPlan, Update, copy_weights
from medsilo.fed.training import evaluate, get_weights, set_weights, train_local


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (study seed, site index, round), via SeedSequence."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> np.uint64(1))


class Site:
    """One hospital's participant in a study."""

    def __init__(
        self,
        index: int,
        data: SiteData,
        model_factory: Callable[[], nn.Module],
        local_keys: frozenset[str],
        seed: int,
    ) -> None:
        self.index = index
        self.name = data.name
        self.data = data
        self.model = model_factory()
        self.local_keys = local_keys
        self.seed = seed
        self._tensors = {
            split: (
                torch.from_numpy(getattr(data, f"x_{split}")),
                torch.from_numpy(getattr(data, f"y_{split}")),
            )
            for split in ("train", "val", "test")
        }
        self.local_weights = {k: v for k, v in get_weights(self.model).items() if k in local_keys}

    def _load_global(self, weights: dict[str, np.ndarray] | object) -> None:
        set_weights(self.model, weights)  # type: ignore[arg-type]
        set_weights(self.model, self.local_weights)

    def on_plan(self, plan: RoundPlan) -> Update:
        """Train from the global weights; return the delta on the shared keys."""
        self._load_global(plan.weights)
        anchor = {k: torch.from_numpy(np.asarray(v)).clone() for k, v in plan.weights.items()}
        x, y = self._tensors["train"]
        loss = train_local(
            self.model,
            x,
            y,
            plan.config,
            seed=derive_seed(self.seed, self.index, plan.round),
            anchor=anchor,
        )
        trained = get_weights(self.model)
        self.local_weights = {k: trained[k] for k in self.local_keys}
        delta = {k: trained[k] - np.asarray(v) for k, v in plan.weights.items()}
        return Update(
            site=self.name,
            round=plan.round,
            delta=delta,
            num_samples=self.data.num_train,
            metrics={"train_loss": loss},
        )

    def on_evaluate(self, request: EvaluateRequest) -> Evaluation:
        self._load_global(request.weights)
        x, y = self._tensors[request.split]
        return Evaluation(
            site=self.name,
            round=request.round,
            split=request.split,
            num_samples=len(y),
            metrics=evaluate(self.model, x, y),
        )

    def state_dict(self) -> dict[str, np.ndarray]:
        """What a checkpoint must keep of this site (its local layers)."""
        return copy_weights(self.local_weights)

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.local_weights = copy_weights(state)
