"""The two baselines of the FLamby protocol (Ogier du Terrail et al., NeurIPS 2022),
trained with the same loop, model and epoch budget as the federation:

* local-only: each site trains alone on its own training split;
* pooled: one model on every site's training split concatenated, as if privacy allowed
  the data to be pooled. It exists only in simulation: in a real deployment nobody can
  compute it, and the report says so.

Both are evaluated on every site's own test split. In a record-level DP study both are
trained with DP-SGD at the same epsilon (:class:`BaselineDp`): local-only reuses the
site's own noise plan, pooled-DP is calibrated for the pooled sampling rate (the
comparison of Beaulieu-Jones et al., ML4H 2018).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medsilo.data.types import FederatedData, SiteData
from medsilo.fed.messages import TrainConfig
from medsilo.fed.site import derive_seed
from medsilo.fed.training import evaluate, train_local
from medsilo.privacy.accounting import AccountantName, epsilon_after
from medsilo.privacy.dpsgd import secret_seed, train_dpsgd
from medsilo.privacy.events import DpSgdEvent


@dataclass(frozen=True)
class BaselineDp:
    """DP-SGD for one baseline: the whole training run's parameters."""

    sample_rate: float
    noise_multiplier: float
    clip: float
    steps: int
    secret: bytes

    def summary(self, delta: float, accountant: AccountantName) -> dict[str, float]:
        """JSON-ready, for the run's baselines file: the plan and the epsilon it spends at
        ``delta`` (a subsampled Gaussian composed ``steps`` times, as a site's DP-SGD)."""
        event = DpSgdEvent(
            sample_rate=self.sample_rate, noise_multiplier=self.noise_multiplier, steps=self.steps
        )
        return {
            "sample_rate": self.sample_rate,
            "noise_multiplier": self.noise_multiplier,
            "clip": self.clip,
            "steps": self.steps,
            "delta": delta,
            "epsilon": epsilon_after([event], delta, accountant),
        }


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(x), torch.from_numpy(y)


def _train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    seed: int,
    dp: BaselineDp | None,
) -> None:
    if dp is None:
        train_local(model, x, y, config, seed=seed)
        return
    train_dpsgd(
        model,
        x,
        y,
        sample_rate=dp.sample_rate,
        steps=dp.steps,
        noise_multiplier=dp.noise_multiplier,
        clip=dp.clip,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        sampling_seed=secret_seed(dp.secret, seed, 1),
        noise=torch.Generator().manual_seed(secret_seed(dp.secret, seed, 2)),
    )


def local_only(
    site: SiteData,
    index: int,
    model_factory: Callable[[], nn.Module],
    config: TrainConfig,
    seed: int,
    dp: BaselineDp | None = None,
) -> dict[str, float]:
    """Train on this site alone; test metrics on its own test split."""
    model = model_factory()
    _train(model, *_tensors(site.x_train, site.y_train), config, derive_seed(seed, 3, index), dp)
    return evaluate(model, *_tensors(site.x_test, site.y_test))


def pooled(
    data: FederatedData,
    model_factory: Callable[[], nn.Module],
    config: TrainConfig,
    seed: int,
    dp: BaselineDp | None = None,
) -> dict[str, dict[str, float]]:
    """Train on all training splits pooled; test metrics per site."""
    x = torch.cat([torch.from_numpy(s.x_train) for s in data.sites])
    y = torch.cat([torch.from_numpy(s.y_train) for s in data.sites])
    model = model_factory()
    _train(model, x, y, config, derive_seed(seed, 4), dp)
    return {s.name: evaluate(model, *_tensors(s.x_test, s.y_test)) for s in data.sites}
