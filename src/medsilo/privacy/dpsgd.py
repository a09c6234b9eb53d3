"""Record-level DP-SGD on one site, with Opacus (Abadi et al., CCS 2016).

One step: draw a Poisson sample (each training record independently with probability
``q``), compute per-sample gradients (Opacus' hook-based ``GradSampleModule``), clip each
to L2 norm ``C``, sum, add N(0, sigma^2 C^2 I), divide by the *expected* batch size ``q n``,
and take an SGD step. An empty Poisson sample still adds its noise (Dopamine's code skips
it, which breaks the accounting).

How the noise is drawn: ``torch.normal`` from a ``torch.Generator`` seeded from the site's
secret (never from the study seed, which the coordinator knows): see
:func:`secret_seed`. Opacus' ``secure_mode`` would draw from torchcsprng, which does not
install on these machines; torch's generator is Mersenne Twister, not a CSPRNG, and the
noise is floating point, so the textbook Gaussian guarantee holds up to the floating-point
caveat of Mironov (CCS 2012, "On significance of the least significant bits for
differential privacy"). Both caveats are stated in docs/privacy.md.

Which Opacus mode (:func:`grad_sample_mode_for`, measured by ``benchmarks/dp_step_time.py``):
ExpandedWeights (``ew``) for models made only of Linear layers (logistic regression, MLP),
where it was the fastest exact mode (2.5-5.1x a non-private step vs 3.9-8.5x for hooks);
hooks for the GroupNorm CNN (1.5-1.75x; ghost clipping and functorch were slower). All
modes give the same per-sample gradients (checked with sigma = 0).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

GradSampleMode = Literal["hooks", "ew", "functorch"]


@dataclass(frozen=True)
class DpSgdRun:
    """What one site's local DP-SGD did in one round (goes into its ledger)."""

    sample_rate: float
    noise_multiplier: float
    clip: float
    steps: int
    mean_loss: float
    records_seen: int


def unsupported_layers(model: nn.Module) -> list[str]:
    """Opacus' own validator: e.g. BatchNorm mixes records inside a batch."""
    from opacus.validators import ModuleValidator  # Opacus takes seconds to import: lazily

    return [str(e) for e in ModuleValidator.validate(model, strict=False)]


def secret_seed(secret: bytes, *context: int) -> int:
    """A 63-bit seed from a site's 32-byte secret and a context (round, purpose).

    SHA-256(secret || context) truncated: the secret never leaves its owner, so nobody
    else can regenerate the noise or the Poisson sample it seeds.

    >>> secret_seed(bytes(32), 1, 2) == secret_seed(bytes(32), 1, 2) != secret_seed(bytes(32), 2, 2)
    True
    """
    material = secret + b"".join(c.to_bytes(8, "big", signed=True) for c in context)
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big") >> 1


def grad_sample_mode_for(model: nn.Module) -> GradSampleMode:
    """``ew`` when every layer with parameters is ``nn.Linear``, else ``hooks``."""
    layers = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    return "ew" if layers and all(isinstance(m, nn.Linear) for m in layers) else "hooks"


def train_dpsgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    sample_rate: float,
    steps: int,
    noise_multiplier: float,
    clip: float,
    lr: float,
    momentum: float,
    weight_decay: float,
    sampling_seed: int,
    noise: torch.Generator,
    anchor: Mapping[str, torch.Tensor] | None = None,
    proximal_mu: float = 0.0,
    grad_sample_mode: GradSampleMode | None = None,
) -> DpSgdRun:
    """``steps`` DP-SGD steps on ``model`` in place.

    FedProx's proximal gradient ``mu (w - w_global)`` does not depend on the data, so it is
    added after clipping and noising (post-processing), not inside the clipped gradient.
    """
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    from opacus import GradSampleModule  # Opacus takes seconds to import: lazily
    from opacus.grad_sample import GradSampleModuleExpandedWeights
    from opacus.optimizers import DPOptimizer

    n = len(y)
    expected = max(1, round(sample_rate * n))
    mode = grad_sample_mode or grad_sample_mode_for(model)
    gsm: GradSampleModule | GradSampleModuleExpandedWeights
    if mode == "ew":
        gsm = GradSampleModuleExpandedWeights(model, batch_first=True, loss_reduction="mean")
    else:
        gsm = GradSampleModule(
            model, batch_first=True, loss_reduction="mean", force_functorch=mode == "functorch"
        )
    base = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    optimizer = DPOptimizer(
        base,
        noise_multiplier=noise_multiplier,
        max_grad_norm=clip,
        expected_batch_size=expected,
        loss_reduction="mean",
        generator=noise,
    )
    sampler = torch.Generator().manual_seed(sampling_seed)
    params = dict(model.named_parameters())
    total_loss, seen = 0.0, 0
    model.train()
    try:
        for _ in range(steps):
            mask = torch.rand(n, generator=sampler) < sample_rate
            idx = torch.nonzero(mask).flatten()
            optimizer.zero_grad(set_to_none=True)
            if len(idx):
                loss = F.cross_entropy(gsm(x[idx]), y[idx], reduction="mean")
                with warnings.catch_warnings():
                    # Opacus' hooks on the first layer: inputs need no gradient; harmless.
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    loss.backward()  # type: ignore[no-untyped-call]
                total_loss += float(loss.detach()) * len(idx)
                seen += len(idx)
            else:
                _empty_grad_samples(model)
            if not optimizer.pre_step():  # clip, add noise, scale by 1/(q n)
                continue
            if proximal_mu > 0 and anchor is not None:
                with torch.no_grad():
                    for name, center in anchor.items():
                        p = params.get(name)
                        if p is not None and p.grad is not None:
                            p.grad.add_(proximal_mu * (p - center))
            base.step()
    finally:
        if isinstance(gsm, GradSampleModule):
            gsm._close()
        for p in model.parameters():  # ExpandedWeights leaves per-sample gradients behind
            for attribute in ("grad_sample", "summed_grad"):
                if hasattr(p, attribute):
                    delattr(p, attribute)
    return DpSgdRun(
        sample_rate=sample_rate,
        noise_multiplier=noise_multiplier,
        clip=clip,
        steps=steps,
        mean_loss=total_loss / max(seen, 1),
        records_seen=seen,
    )


def _empty_grad_samples(model: nn.Module) -> None:
    """An empty Poisson sample: zero per-sample gradients, so the step is pure noise."""
    for p in model.parameters():
        if p.requires_grad:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)  # type: ignore[attr-defined]


def steps_per_epoch(sample_rate: float) -> int:
    """Expected number of Poisson steps to visit each record once: ceil(1/q)."""
    return math.ceil(1.0 / sample_rate)
