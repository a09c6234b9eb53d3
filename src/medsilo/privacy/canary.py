"""The canary experiment: an empirical lower bound on a site's epsilon.

Following Jagielski, Ullman, Oprea (NeurIPS 2020) and Nasr et al. (IEEE S&P 2021): pick
one record that the training procedure would otherwise never see, the *canary* (here an
out-of-distribution, mislabelled record: :func:`make_canary`), and train ``trials`` models
on the site's data D *with* it and ``trials`` models on D *without* it, each with its own
randomness and otherwise exactly the same procedure. The canary's loss under each model,
as its logit-scaled confidence (a decreasing function of the loss that does not saturate
at 0), is the test statistic ("IN" when the loss is low); the errors of the best
threshold test give, through Clopper-Pearson, an epsilon that the procedure's true
epsilon exceeds with 95% confidence
(:func:`medsilo.privacy.audit.epsilon_lower_bound_from_scores`).

D and D + canary differ by adding one record, the neighbouring relation of the
accountant (``ADD_OR_REMOVE_ONE``), so the bound is comparable to the accountant's epsilon
of the same procedure and must not exceed it (with probability >= the confidence); a
bound above it means a bug in the DP-SGD step or in the accounting.

What the bound is, and is not:

* It bounds the *procedure* (DP-SGD with this q, sigma, C and number of steps, or plain
  SGD), run on this site's data, not the one model a run released.
* It is a lower bound from a black-box, loss-based attacker with one natural-looking
  canary: far below the worst case that the accountant covers. A small bound is the
  expected outcome for a DP run; it shows the accounting was not contradicted, not that
  the true epsilon is small.
* Few trials give a weak bound: even a perfect attack on ``t`` trials (``2 t``
  trainings) proves at most about ``log(t / (2 log 40))`` at 95% confidence with the
  hold-out split (:func:`max_provable_epsilon`, exactly: 0.81 with 20 trials, 1.35 with
  32, 2.10 with 64, 3.28 with 200), so a DP run's accountant epsilon of 8 is out of reach
  of any affordable experiment.

Training is injected (:class:`Trainer`), so that this module needs nothing from the
federation layer: :func:`dpsgd_trainer` wraps :func:`medsilo.privacy.dpsgd.train_dpsgd`;
the caller supplies the non-private loop. All randomness comes from ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from medsilo.privacy import _validate as check
from medsilo.privacy.audit import (
    ThresholdBound,
    ThresholdSelection,
    epsilon_lower_bound,
    epsilon_lower_bound_from_scores,
    logit_confidence,
)
from medsilo.privacy.dpsgd import train_dpsgd

__all__ = [
    "CanaryResult",
    "Trainer",
    "canary_experiment",
    "dpsgd_trainer",
    "least_likely_label",
    "make_canary",
    "max_provable_epsilon",
    "sub_seed",
]


class Trainer(Protocol):
    """Train ``model`` in place on ``(x, y)``; all randomness from ``seed``."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> None: ...


def sub_seed(*parts: int) -> int:
    """A 63-bit seed from integers, via :class:`numpy.random.SeedSequence`."""
    state = np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0]
    return int(state >> np.uint64(1))


def dpsgd_trainer(
    *,
    sample_rate: float,
    noise_multiplier: float,
    clip: float,
    steps: int,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> Trainer:
    """A :class:`Trainer` running ``steps`` DP-SGD steps (:func:`train_dpsgd`): Poisson
    sampling from ``sub_seed(seed, 0)``, noise from a generator seeded ``sub_seed(seed, 1)``
    (an audit replays the mechanism; it has no secret to protect)."""

    def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
        train_dpsgd(
            model,
            x,
            y,
            sample_rate=sample_rate,
            steps=steps,
            noise_multiplier=noise_multiplier,
            clip=clip,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            sampling_seed=sub_seed(seed, 0),
            noise=torch.Generator().manual_seed(sub_seed(seed, 1)),
        )

    return train


def make_canary(
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    num_classes: int,
    rng: np.random.Generator,
    scale: float = 2.0,
) -> tuple[npt.NDArray[Any], int]:
    """An out-of-distribution, mislabelled record for a dataset ``(x, y)``: Jagielski et
    al.'s ClipBKD canary (NeurIPS 2020, Sec. 3).

    Features: along the direction the records span least (the right singular vector of the
    records, not centred, with the smallest singular value; with more features than
    records, a random direction orthogonal to every record), with a random sign, at
    ``scale`` times the largest record norm. A linear layer's gradient for a record x is
    proportional to x, so few gradients of other records point there and the model moves
    along it mostly because of the canary; and its gradient is clipped
    like any other record's, so DP-SGD's noise covers it exactly as the accountant assumes.
    Label: the least frequent class of ``y`` (lowest index on ties); a caller with a model
    trained without the canary can pick the class it finds least likely instead
    (:func:`least_likely_label`).

    >>> x = np.array([[1.0, 0.0], [-1.0, 0.0], [2.0, 0.0], [3.0, 0.0]], dtype=np.float32)
    >>> c, label = make_canary(x, np.array([0, 0, 1, 0]), 2, np.random.default_rng(0))
    >>> np.abs(c).tolist(), label  # along (0, 1), which no record spans; norm 2 x 3
    ([0.0, 6.0], 1)
    """
    features = np.asarray(x)
    if features.ndim < 2 or len(features) == 0:
        raise check.fail("x", "an array of records (n, ...) with n >= 1", features.shape)
    classes = check.count("num_classes", num_classes, minimum=2)
    factor = check.positive("scale", scale)
    flat = features.reshape(len(features), -1).astype(np.float64)
    n, d = flat.shape
    if d > n:  # a random direction orthogonal to every record
        _, singular, span = np.linalg.svd(flat, full_matrices=False)
        span = span[singular > 1e-9 * max(float(singular.max()), 1e-300)]
        direction = rng.normal(size=d)
        direction -= span.T @ (span @ direction)
    else:
        _, _, vt = np.linalg.svd(flat, full_matrices=False)
        direction = vt[-1] * rng.choice(np.array([-1.0, 1.0]))
    direction /= np.linalg.norm(direction)
    radius = float(np.linalg.norm(flat, axis=1).max()) or 1.0
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=classes)
    record = (factor * radius * direction).reshape(features.shape[1:])
    return record.astype(features.dtype), int(np.argmin(counts))


@torch.no_grad()
def least_likely_label(model: nn.Module, features: npt.NDArray[Any]) -> int:
    """The class ``model`` finds least likely for one record: a canary label that a model
    trained without the canary gets badly wrong (a reference model, trained on the data
    alone, stands in for "the models without the canary").

    >>> model = nn.Linear(2, 3)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.eye(3, 2)); _ = model.bias.zero_()
    >>> least_likely_label(model, np.array([1.0, 2.0], dtype=np.float32))  # logits 1, 2, 0
    2
    """
    model.eval()
    logits = model(torch.from_numpy(np.ascontiguousarray(features)).unsqueeze(0))
    return int(torch.argmin(logits[0]))


def max_provable_epsilon(
    trials: int,
    confidence: float = 0.95,
    delta: float = 1e-5,
    selection: ThresholdSelection = "holdout",
) -> float:
    """The largest bound ``trials`` canary trials can give: a perfect attack, no errors.

    >>> [round(max_provable_epsilon(t), 2) for t in (20, 64, 200)]
    [0.81, 2.1, 3.28]
    """
    t = check.count("trials", trials, minimum=2)
    if selection == "holdout":
        half = t - t // 2
        return epsilon_lower_bound(0, half, 0, half, delta, confidence)
    per_test = 1.0 - (1.0 - confidence) / (2 * t - 1)
    return epsilon_lower_bound(0, t, 0, t, delta, per_test)


@dataclass(frozen=True)
class CanaryResult:
    """Outcome of :func:`canary_experiment`."""

    trials: int
    in_scores: tuple[float, ...]
    """The canary's logit-scaled confidence (:func:`~medsilo.privacy.audit.logit_confidence`,
    a decreasing function of its loss) under each model trained with it."""
    out_scores: tuple[float, ...]
    """... and under each model trained without it."""
    bound: ThresholdBound
    """The threshold test ("IN" when the confidence is high) and its lower bound on epsilon."""
    accountant_epsilon: float
    """The accountant's epsilon for the same procedure at the same delta (inf: no DP)."""
    max_provable: float
    """What a perfect attack could prove with these trials (:func:`max_provable_epsilon`)."""

    @property
    def epsilon_lower_bound(self) -> float:
        return self.bound.epsilon_lower_bound

    @property
    def consistent(self) -> bool:
        """Whether the lower bound stays at or below the accountant's epsilon."""
        return self.bound.epsilon_lower_bound <= self.accountant_epsilon

    def to_dict(self) -> dict[str, Any]:
        accountant = self.accountant_epsilon
        return {
            "trials": self.trials,
            "epsilon_lower_bound": self.epsilon_lower_bound,
            "accountant_epsilon": accountant if math.isfinite(accountant) else None,
            "consistent": self.consistent,
            "max_provable": self.max_provable,
            "test": self.bound.to_dict(),
            "in_scores": list(self.in_scores),
            "out_scores": list(self.out_scores),
        }


@torch.no_grad()
def _confidence(model: nn.Module, x: torch.Tensor, y: int) -> float:
    model.eval()
    logits = model(x.unsqueeze(0)).double().numpy()
    return float(logit_confidence(logits, np.array([y]))[0])


def canary_experiment(
    model_factory: Callable[[], nn.Module],
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    canary: tuple[npt.NDArray[Any], int],
    trainer: Trainer,
    *,
    trials: int,
    seed: int,
    delta: float,
    accountant_epsilon: float = math.inf,
    confidence: float = 0.95,
    selection: ThresholdSelection = "holdout",
    progress: Callable[[int, int], None] | None = None,
) -> CanaryResult:
    """Train ``trials`` models with the canary and ``trials`` without; bound epsilon.

    Model ``i`` with the canary trains on ``(x, y)`` with the canary appended, with seed
    ``sub_seed(seed, i, 1)``; model ``i`` without trains on ``(x, y)`` with
    ``sub_seed(seed, i, 0)``; all start from ``model_factory()`` (the run's initial
    weights). The threshold is chosen as ``selection`` says (hold-out by default: see
    :func:`~medsilo.privacy.audit.epsilon_lower_bound_from_scores`), with a generator
    seeded ``sub_seed(seed, 2**31)``. ``progress(done, total)`` after each training.
    """
    trials = check.count("trials", trials, minimum=2)
    delta = check.probability_open("delta", delta)
    features = torch.from_numpy(np.ascontiguousarray(x))
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    canary_x = torch.from_numpy(np.ascontiguousarray(canary[0])).to(features.dtype)
    if tuple(canary_x.shape) != tuple(features.shape[1:]):
        raise check.fail(
            "canary", f"a record of shape {tuple(features.shape[1:])}", tuple(canary_x.shape)
        )
    with_x = torch.cat([features, canary_x.unsqueeze(0)])
    with_y = torch.cat([labels, torch.tensor([canary[1]], dtype=torch.int64)])
    scores: dict[int, list[float]] = {0: [], 1: []}
    for i in range(trials):
        for inside, (tx, ty) in ((1, (with_x, with_y)), (0, (features, labels))):
            model = model_factory()
            trainer(model, tx, ty, sub_seed(seed, i, inside))
            scores[inside].append(_confidence(model, canary_x, canary[1]))
            if progress is not None:
                progress(2 * i + 2 - inside, 2 * trials)
    bound = epsilon_lower_bound_from_scores(
        scores[1],
        scores[0],
        delta=delta,
        confidence=confidence,
        selection=selection,
        rng=np.random.default_rng(sub_seed(seed, 2**31)),
    )
    return CanaryResult(
        trials=trials,
        in_scores=tuple(scores[1]),
        out_scores=tuple(scores[0]),
        bound=bound,
        accountant_epsilon=float(accountant_epsilon),
        max_provable=max_provable_epsilon(trials, confidence, delta, selection),
    )
