"""Personalization after federation: a final local fine-tuning step at each site.

Manoel et al. ("Federated multilingual models for medical transcript analysis", CHIL
2023, PMLR 209) fine-tune the federated model at each provider as a last, local step and
find that it improves it; with heterogeneous hospitals (devices, populations, label mix)
one averaged model serves some sites badly. After the last round each site trains the
global model (with its own local layers: FedBN, Li et al., ICLR 2021; or its FedLTN mask,
:mod:`medsilo.fed.lottery`) for ``fine_tune_epochs`` more epochs on its own training
split, either every layer (``layers = "all"``) or only the classification head (the last
linear layer, ``layers = "head"``), and is evaluated on its own test split next to the
global model.

Differential privacy. With ``privacy.mode = "local"`` the fine-tuning steps are DP-SGD
with the site's own noise multiplier, clip and secret (:func:`~medsilo.privacy.dpsgd.
train_dpsgd`), and they go into the site's ledger *before* the fine-tuned model exists
outside the training loop, as a release event with ``payload_bytes = 0``. Nothing leaves
the site at that moment, so strictly it is not a release; it is recorded anyway because
the personalized model is a function of the site's records that the site may later
publish, share or deploy, and a ledger that left these steps out would under-count what
the model reveals. A fine-tune whose steps would take the site past its budget is
refused: the site keeps the global model and says why. Record-level fine-tuning cannot
be added to a site-level ledger (``mode = "central"``: DP-FedAvg protects whole sites, a
different unit of privacy), so that combination is refused by the study file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from medsilo.fed.dp import LocalDp
from medsilo.fed.lottery import masked_training
from medsilo.fed.messages import TrainConfig
from medsilo.fed.training import get_weights, train_local
from medsilo.privacy.dpsgd import secret_seed, steps_per_epoch, train_dpsgd
from medsilo.privacy.events import DpSgdEvent
from medsilo.privacy.ledger import Release

Layers = Literal["all", "head"]

FINE_TUNE_SAMPLING = 11
"""``secret_seed`` context of the fine-tune's Poisson sampling (rounds use 1 and 2)."""
FINE_TUNE_NOISE = 12
"""``secret_seed`` context of the fine-tune's noise."""


class PersonalizationSpec(BaseModel):
    """``[personalization]`` in a study file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fine_tune_epochs: int = Field(default=0, ge=0)
    """Local epochs after the last round (0: no fine-tuning)."""
    fine_tune_lr: float | None = Field(default=None, gt=0)
    """Learning rate of the fine-tuning (default: ``train.lr``)."""
    layers: Layers = "all"
    """``all``: every layer; ``head``: only the last linear layer (the rest frozen)."""

    @property
    def enabled(self) -> bool:
        return self.fine_tune_epochs > 0


def head_keys(model: nn.Module) -> frozenset[str]:
    """Parameter names of the model's last ``nn.Linear`` (its classification head).

    >>> sorted(head_keys(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))))
    ['2.bias', '2.weight']
    """
    last = None
    for prefix, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = prefix
    if last is None:
        raise ValueError("the model has no linear layer to fine-tune as its head")
    return frozenset(
        f"{last}.{name}" if last else name
        for name, _ in model.get_submodule(last).named_parameters()
    )


def trainable_keys(model: nn.Module, layers: Layers) -> frozenset[str]:
    names = frozenset(n for n, _ in model.named_parameters())
    return names if layers == "all" else head_keys(model)


@contextmanager
def frozen_except(model: nn.Module, trainable: frozenset[str]) -> Iterator[None]:
    """Parameters outside ``trainable`` get ``requires_grad = False`` inside the block."""
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for n, p in model.named_parameters():
            p.requires_grad_(n in trainable)
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])


@dataclass(frozen=True)
class FineTuneResult:
    """What one site's fine-tuning did (stays at the site)."""

    weights: dict[str, np.ndarray]
    """The fine-tuned model's whole state (the global model's if refused)."""
    trained: frozenset[str]
    steps: int
    train_loss: float | None = None
    epsilon: float | None = None
    """The site's cumulative epsilon after the fine-tune (DP only)."""
    refused: str | None = None
    """Why the fine-tune did not run (a spent budget), or None."""
    metrics: dict[str, float] = field(default_factory=dict)


def fine_tune(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: PersonalizationSpec,
    train: TrainConfig,
    *,
    seed: int,
    round: int,
    dp: LocalDp | None = None,
    masks: Mapping[str, np.ndarray] | None = None,
) -> FineTuneResult:
    """Fine-tune ``model`` in place on ``(x, y)`` (a site's training split).

    ``train`` gives batch size, momentum and weight decay (and the learning rate unless
    ``spec.fine_tune_lr`` is set); ``masks`` keep a FedLTN site's pruned coordinates at
    zero. With ``dp`` the steps are DP-SGD (``fine_tune_epochs x ceil(1/q)`` steps at the
    site's q and sigma) and are recorded in ``dp.ledger`` as release ``round`` with
    ``payload_bytes = 0`` (see the module docstring); if they do not fit the site's budget
    nothing is trained and ``refused`` says why.
    """
    lr = spec.fine_tune_lr if spec.fine_tune_lr is not None else train.lr
    trainable = trainable_keys(model, spec.layers)
    hold = masked_training(model, masks) if masks else nullcontext()
    if dp is None:
        config = TrainConfig(
            local_epochs=spec.fine_tune_epochs,
            batch_size=train.batch_size,
            lr=lr,
            momentum=train.momentum,
            weight_decay=train.weight_decay,
        )
        steps = spec.fine_tune_epochs * -(-len(y) // train.batch_size)
        with frozen_except(model, trainable), hold:
            loss = train_local(model, x, y, config, seed=seed)
        return FineTuneResult(get_weights(model), trainable, steps, train_loss=loss)
    steps = spec.fine_tune_epochs * steps_per_epoch(dp.sample_rate)
    event = DpSgdEvent(dp.sample_rate, dp.noise_multiplier, steps)
    check = dp.ledger.would_exceed(event)
    if check.exceeds:
        return FineTuneResult(
            get_weights(model),
            frozenset(),
            0,
            refused=(
                f"privacy budget: fine-tuning ({steps} DP-SGD steps) would bring epsilon to "
                f"{check.epsilon_after:.4g}, over the site's budget {dp.ledger.budget}"
            ),
        )
    with frozen_except(model, trainable), hold:
        train_dpsgd(
            model,
            x,
            y,
            sample_rate=dp.sample_rate,
            steps=steps,
            noise_multiplier=dp.noise_multiplier,
            clip=dp.clip,
            lr=lr,
            momentum=train.momentum,
            weight_decay=train.weight_decay,
            sampling_seed=secret_seed(dp.secret, round, FINE_TUNE_SAMPLING),
            noise=torch.Generator().manual_seed(secret_seed(dp.secret, round, FINE_TUNE_NOISE)),
        )
    entry = dp.ledger.record(
        Release.of_payload(round=round, event=event, clip=dp.clip, payload=b"")
    )
    # The DP-SGD training loss is a statistic of the records outside the accounted
    # release: it is not returned.
    return FineTuneResult(
        get_weights(model), trainable, steps, epsilon=float(entry.epsilon_after or 0.0)
    )
