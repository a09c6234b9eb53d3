"""Model factories. Every model is DP-SGD ready: no BatchNorm (its batch statistics mix
records, which per-sample clipping cannot bound); the CNN uses GroupNorm (Wu & He 2018).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

ModelName = Literal["logreg", "mlp", "cnn"]


class ModelSpec(BaseModel):
    """``[model]`` in a study file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ModelName = "logreg"
    hidden: tuple[int, ...] = Field(default=(64,), min_length=1)
    """MLP hidden widths."""
    channels: tuple[int, ...] = Field(default=(16, 32), min_length=1)
    """CNN channels per conv block (each block: conv3x3 -> GroupNorm -> ReLU -> maxpool)."""
    groups: int = Field(default=4, ge=1)
    """GroupNorm groups; must divide every entry of ``channels``."""
    dropout: float = Field(default=0.0, ge=0, lt=1)


class GroupNormCNN(nn.Module):
    """Small image classifier: conv blocks with GroupNorm, global average pooling, linear."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: tuple[int, ...],
        groups: int,
        dropout: float,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            layers += [
                nn.Conv2d(previous, width, 3, padding=1),
                nn.GroupNorm(groups, width),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(previous, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3), keepdim=True))  # type: ignore[no-any-return]


@contextmanager
def seeded_cpu_rng(seed: int) -> Iterator[None]:
    """Seed torch's default CPU generator (init, dropout) inside the block, then restore it.

    ``torch.manual_seed``/``fork_rng`` would also seed every accelerator backend, which
    costs milliseconds per call (it formats a stack trace for lazy initialization): too
    much for a call per site and round.
    """
    saved = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(saved)


def build_model(
    spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int, seed: int
) -> nn.Module:
    """Build the model with weights initialised from ``seed`` (same seed, same weights)."""
    with seeded_cpu_rng(seed):
        if spec.name == "cnn":
            if len(input_shape) != 3:
                raise ValueError(
                    f"model 'cnn' needs image input (C, H, W), got shape {input_shape}"
                )
            bad = [c for c in spec.channels if c % spec.groups]
            if bad:
                raise ValueError(f"model.groups = {spec.groups} must divide model.channels {bad}")
            return GroupNormCNN(
                input_shape[0], num_classes, spec.channels, spec.groups, spec.dropout
            )
        width = 1
        for dim in input_shape:
            width *= dim
        if spec.name == "logreg":
            return nn.Sequential(nn.Flatten(), nn.Linear(width, num_classes))
        layers: list[nn.Module] = [nn.Flatten()]
        previous = width
        for hidden in spec.hidden:
            layers += [nn.Linear(previous, hidden), nn.ReLU(), nn.Dropout(spec.dropout)]
            previous = hidden
        layers.append(nn.Linear(previous, num_classes))
        return nn.Sequential(*layers)


NORM_TYPES = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d)


def normalization_keys(model: nn.Module) -> frozenset[str]:
    """State-dict keys of normalization layers (kept local by FedBN, Li et al. ICLR 2021)."""
    keys: set[str] = set()
    for prefix, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            keys.update(f"{prefix}.{k}" if prefix else k for k in module.state_dict())
    return frozenset(keys)
