"""Local training as ``medsilo.fed.training.train_local`` does it (plain SGD, proximal
mu = 0), copied so that ``vs_flower.py``'s Flower clients and plain loop need neither
medsilo nor its dependencies; and a minimal FedAvg round for the plain-loop reference."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def derive_seed(*parts: int) -> int:
    """Same as ``medsilo.fed.site.derive_seed``."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def train_local(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    batch: int,
    lr: float,
    seed: int,
) -> float:
    """``medsilo.fed.training.train_local`` for plain SGD, step for step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0, weight_decay=0.0)
    model.train()
    total, batches = 0.0, 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=generator)
            for start in range(0, len(y), batch):
                idx = order[start : start + batch]
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                batches += 1
    return total / max(batches, 1)


def logreg(width: int, classes: int) -> nn.Module:
    """The architecture of ``medsilo.tasks.models.build_model`` for ``logreg``."""
    return nn.Sequential(nn.Flatten(), nn.Linear(width, classes))


def plain_fedavg_round(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    global_state: dict[str, torch.Tensor],
    sites: list[tuple[torch.Tensor, torch.Tensor]],
    seeds: list[int],
    epochs: int,
    batch: int,
) -> dict[str, torch.Tensor]:
    """One FedAvg round by hand: per site load the global state, the same mini-batches as
    medsilo (same seeds), accumulate the sample-weighted state."""
    total = sum(len(y) for _, y in sites)
    summed = {k: torch.zeros_like(v) for k, v in global_state.items()}
    for (x, y), seed in zip(sites, seeds, strict=True):
        model.load_state_dict(global_state)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=generator)
            for start in range(0, len(y), batch):
                idx = order[start : start + batch]
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                optimizer.step()
        share = len(y) / total
        for k, v in model.state_dict().items():
            summed[k] += share * v
    return summed
