"""Local training and evaluation of a torch model on in-memory arrays.

Shared by a ``Site`` and by the local-only and pooled baselines, so that every setting
trains with exactly the same loop. Randomness (shuffling, dropout) comes only from the
``seed`` argument.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medsilo.fed.messages import TrainConfig, Weights
from medsilo.tasks.metrics import classification_metrics
from medsilo.tasks.models import seeded_cpu_rng


def get_weights(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def set_weights(model: nn.Module, weights: Weights) -> None:
    """Load the given (possibly partial) weights; keys not given keep their value."""
    state = model.state_dict()
    for key, value in weights.items():
        if key not in state:
            raise KeyError(f"weight '{key}' is not in the model")
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(
                f"weight '{key}': shape {tuple(value.shape)} does not match "
                f"the model's {tuple(state[key].shape)}"
            )
        state[key].copy_(torch.from_numpy(np.asarray(value)))


def train_local(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    seed: int,
    anchor: Mapping[str, torch.Tensor] | None = None,
) -> float:
    """``config.local_epochs`` epochs of mini-batch SGD; returns the mean training loss.

    ``anchor`` is the global model for FedProx's proximal term (ignored when mu = 0).
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    params = dict(model.named_parameters())
    model.train()
    total, batches = 0.0, 0
    with seeded_cpu_rng(seed):  # dropout masks
        for _ in range(config.local_epochs):
            order = torch.randperm(len(y), generator=generator)
            for start in range(0, len(y), config.batch_size):
                idx = order[start : start + config.batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x[idx]), y[idx])
                if config.proximal_mu > 0 and anchor is not None:
                    prox = sum(
                        ((params[k] - a) ** 2).sum() for k, a in anchor.items() if k in params
                    )
                    loss = loss + 0.5 * config.proximal_mu * prox
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                total += float(loss.detach())
                batches += 1
    return total / max(batches, 1)


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    model.eval()
    out = [
        F.softmax(model(x[i : i + batch_size]).double(), dim=1)
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out).numpy()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    return classification_metrics(y.numpy(), predict_proba(model, x))


def per_sample_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, keys: tuple[str, ...], chunk: int = 64
) -> np.ndarray:
    """One row per record: the gradient of its cross-entropy loss with respect to the
    weights ``keys`` (``state_dict`` names), flattened and concatenated in that order; a
    weight that is not a trainable parameter (a buffer) gets zeros.

    The rows DP-SGD clips one by one (Abadi et al., CCS 2016, Alg. 1), computed with
    ``torch.func`` (``vmap`` of ``grad`` over the batch, ``chunk`` records at a time).
    """
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    dim = sum(int(np.prod(shapes[k])) for k in keys)

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_record = vmap(grad(loss), in_dims=(None, 0, 0))
    rows = np.zeros((len(y), dim), dtype=np.float64)
    was_training = model.training
    model.train()
    try:
        for start in range(0, len(y), chunk):
            grads = per_record(params, x[start : start + chunk], y[start : start + chunk])
            offset = 0
            for key in keys:
                size = int(np.prod(shapes[key]))
                if key in grads:
                    block = grads[key].reshape(grads[key].shape[0], -1)
                    rows[start : start + chunk, offset : offset + size] = block.numpy()
                offset += size
    finally:
        model.train(was_training)
    return rows
