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
from medsilo.fed.dp import LocalDp, SiteDp
from medsilo.fed.messages import (
    EvaluateRequest,
    Evaluation,
    Refusal,
    RoundPlan,
    Update,
    copy_weights,
)
from medsilo.fed.secure import SecAggRound, flatten
from medsilo.fed.training import evaluate, get_weights, set_weights, train_local
from medsilo.privacy.dpsgd import secret_seed, train_dpsgd
from medsilo.privacy.ledger import Release
from medsilo.secagg import crypto
from medsilo.secagg.client import SiteInit, SiteState, site_step
from medsilo.secagg.messages import ToCoordinator, ToSite


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
        dp: SiteDp | None = None,
    ) -> None:
        self.index = index
        self.name = data.name
        self.data = data
        self.model = model_factory()
        self.local_keys = local_keys
        self.seed = seed
        self.dp = dp
        # Long-term Ed25519 identity for secure aggregation: the private key never leaves
        # the site; the verify key is registered with every party up front.
        self.signing_key, self.verify_key = crypto.ed25519_keypair()
        self.verify_keys: dict[str, bytes] = {}
        self._secagg: SiteState | None = None
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

    def on_plan(self, plan: RoundPlan) -> Update | Refusal:
        """Train from the global weights; return the delta on the shared keys.

        With differential privacy the site first asks its ledger whether this round's
        release fits its own budget (a :class:`Refusal` if not), and records the release
        in the ledger, fsync-ed, before the update is returned (write-ahead).
        """
        if self.dp is not None:
            check = self.dp.ledger.would_exceed(self.dp.event())
            if check.exceeds:
                budget = self.dp.ledger.budget
                return Refusal(
                    site=self.name,
                    round=plan.round,
                    reason=(
                        f"privacy budget: this round would bring epsilon to "
                        f"{check.epsilon_after:.4g}, over the site's budget {budget}"
                    ),
                )
        self._load_global(plan.weights)
        anchor = {k: torch.from_numpy(np.asarray(v)).clone() for k, v in plan.weights.items()}
        x, y = self._tensors["train"]
        metrics: dict[str, float] = {}
        if isinstance(self.dp, LocalDp):
            run = train_dpsgd(
                self.model,
                x,
                y,
                sample_rate=self.dp.sample_rate,
                steps=self.dp.steps_per_round,
                noise_multiplier=self.dp.noise_multiplier,
                clip=self.dp.clip,
                lr=plan.config.lr,
                momentum=plan.config.momentum,
                weight_decay=plan.config.weight_decay,
                sampling_seed=secret_seed(self.dp.secret, plan.round, 1),
                noise=torch.Generator().manual_seed(secret_seed(self.dp.secret, plan.round, 2)),
                anchor=anchor,
                proximal_mu=plan.config.proximal_mu,
            )
            metrics["train_loss"] = run.mean_loss
        else:
            metrics["train_loss"] = train_local(
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
        if isinstance(plan.secagg, SecAggRound):
            encoded = plan.secagg.quantizer.encode(flatten(delta, plan.secagg.keys))
            self._secagg = SiteInit(
                self.name, self.signing_key, self.verify_keys, plan.secagg.quantizer.bits, encoded
            )
        if self.dp is not None:
            entry = self.dp.ledger.record(
                Release.of_arrays(
                    round=plan.round, event=self.dp.event(), clip=self.dp.clip, arrays=delta
                )
            )
            metrics["epsilon"] = float(entry.epsilon_after or 0.0)
        if self.dp is not None:
            # The training loss is a statistic of the private data outside the accounted
            # release: it stays at the site.
            metrics.pop("train_loss")
        masked = plan.secagg is not None
        return Update(
            site=self.name,
            round=plan.round,
            delta={} if masked else delta,
            num_samples=self.data.num_train,
            metrics=metrics,
            masked=masked,
        )

    def on_secagg(self, message: ToSite) -> ToCoordinator:
        """One stage of this round's secure-aggregation session."""
        if self._secagg is None:
            raise RuntimeError(f"site {self.name!r}: no secure-aggregation input this round")
        self._secagg, reply = site_step(self._secagg, message)
        return reply

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
