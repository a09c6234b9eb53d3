"""The two baselines of the FLamby protocol (Ogier du Terrail et al., NeurIPS 2022),
trained with the same loop, model and epoch budget as the federation:

* local-only: each site trains alone on its own training split;
* pooled: one model on every site's training split concatenated, as if privacy allowed
  the data to be pooled. It exists only in simulation: in a real deployment nobody can
  compute it, and the report says so.

Both are evaluated on every site's own test split.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from medsilo.data.types import FederatedData, SiteData
from medsilo.fed.messages import TrainConfig
from medsilo.fed.site import derive_seed
from medsilo.fed.training import evaluate, train_local


def _tensors(x: object, y: object) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(x), torch.from_numpy(y)


def local_only(
    site: SiteData,
    index: int,
    model_factory: Callable[[], nn.Module],
    config: TrainConfig,
    seed: int,
) -> dict[str, float]:
    """Train on this site alone; test metrics on its own test split."""
    model = model_factory()
    train_local(
        model, *_tensors(site.x_train, site.y_train), config, seed=derive_seed(seed, 3, index)
    )
    return evaluate(model, *_tensors(site.x_test, site.y_test))


def pooled(
    data: FederatedData, model_factory: Callable[[], nn.Module], config: TrainConfig, seed: int
) -> dict[str, dict[str, float]]:
    """Train on all training splits pooled; test metrics per site."""
    x = torch.cat([torch.from_numpy(s.x_train) for s in data.sites])
    y = torch.cat([torch.from_numpy(s.y_train) for s in data.sites])
    model = model_factory()
    train_local(model, x, y, config, seed=derive_seed(seed, 4))
    return {s.name: evaluate(model, *_tensors(s.x_test, s.y_test)) for s in data.sites}
