"""Lottery-ticket personalization: FedLTN and LotteryFL.

Each site keeps a binary mask per prunable tensor and trains only the weights its mask
keeps; the coordinator averages each coordinate over the sites that kept it. A site's
*personalized model* is its mask applied to the global weights, plus its own
normalization layers.

Two variants, side by side:

* **FedLTN** (Mugunthan, Lin et al., "FedLTN: Federated Learning for Sparse and
  Personalized Lottery Ticket Networks", ECCV 2022), ``variant = "fedltn"``:

  - *post-pruning without rewinding*: a site trains from ``mask * global``, then, if its
    local validation accuracy is at least ``accuracy_threshold`` and its target density
    is not reached, prunes ``prune_rate`` of its smallest surviving weights per layer
    (magnitude pruning) and keeps the trained values of the survivors;
  - normalization layers are never pruned and never leave the site (as FedBN, Li et
    al., ICLR 2021; GroupNorm/LayerNorm in medsilo, so DP-SGD applies);
  - the coordinator averages only unpruned coordinates and applies *server momentum*
    (``m <- beta m + Delta; w <- w + eta m`` on the coordinates some site kept);
  - *Jump-Start*: before federation each site trains and prunes alone for
    ``jump_start_epochs`` epochs, and the first round starts from those weights (no
    download); the paper uses it to reach the target sparsity in about half the rounds.

* **LotteryFL** (Li, Sun, Wang, Li, Chen, "LotteryFL: Personalized and
  Communication-Efficient Federated Learning with Lottery Ticket Hypothesis on Non-IID
  Datasets", arXiv 2008.03371, 2020; code charleslipku/LotteryFL), ``variant =
  "lotteryfl"``: *before* training a site evaluates ``mask * global`` on its validation
  split; if the accuracy passes the threshold and the target is not reached, it prunes
  and *rewinds* every weight to its initial value (lottery tickets, Frankle & Carbin,
  ICLR 2019), then trains. Normalization layers are shared (averaged, never pruned), no
  server momentum, no Jump-Start.

What is prunable: every shared tensor with two or more dimensions (convolution kernels,
linear weights). Biases are not pruned (as in LotteryFL) and are averaged over all
sites that sent an update.

Aggregation (:func:`masked_mean`) weights site i by ``n_i`` (its training samples, as
medsilo's FedAvg does; LotteryFL's code weights sites equally, which is ``n_i = 1``)::

    mean[c] = sum_i n_i m_i[c] w_i[c] / sum_i n_i m_i[c]   where some site kept c,
    mean[c] = previous[c]                                 where no site kept c.

What crosses the wire (:mod:`medsilo.fed.sparse`): up, the kept values and the mask of
every prunable tensor and the dense biases; down, the global values on the site's last
mask (the coordinator knows it from the site's last upload). Normalization layers
(FedLTN) go neither way.

The core (masks, pruning, aggregation, server step) is pure numpy;
:class:`LotteryClient` and :class:`LotteryServer` are the thin stateful shells a site and
the coordinator hold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from medsilo.fed import sparse
from medsilo.fed.messages import Weights, copy_weights
from medsilo.fed.training import get_weights, set_weights

Masks = dict[str, np.ndarray]
"""Tensor name -> boolean keep-mask of the tensor's shape."""

Variant = Literal["fedltn", "lotteryfl"]


class LotterySpec(BaseModel):
    """``[lottery]`` in a study file (used with ``strategy.name = "fedltn"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: Variant = "fedltn"
    """``fedltn``: post-pruning, local normalization, server momentum, Jump-Start.
    ``lotteryfl``: pre-pruning with rewinding to the initial weights, shared normalization."""
    target_density: float = Field(default=0.1, gt=0, le=1)
    """Fraction of each prunable tensor a site keeps at the end (0.1 = 90% sparsity)."""
    prune_rate: float = Field(default=0.1, gt=0, lt=1)
    """Fraction of the surviving weights of each layer removed by one pruning step."""
    accuracy_threshold: float = Field(default=0.5, ge=0, le=1)
    """A site prunes only when its local validation accuracy is at least this."""
    jump_start_epochs: int = Field(default=0, ge=0)
    """FedLTN's Jump-Start: local epochs (each followed by a pruning step) before round 1."""
    server_momentum: float = Field(default=0.0, ge=0, lt=1)
    """beta of the server momentum on the masked average (0: plain masked averaging)."""
    server_lr: float = Field(default=1.0, gt=0)
    """eta of the server step."""

    @property
    def rewind(self) -> bool:
        return self.variant == "lotteryfl"

    @property
    def local_normalization(self) -> bool:
        return self.variant == "fedltn"


# --------------------------------------------------------------------------- pure core


def prunable_keys(weights: Weights, local_keys: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """Shared tensors with at least two dimensions (kernels, linear weights), in order.

    >>> prunable_keys({"conv.weight": np.zeros((2, 1, 3, 3)), "conv.bias": np.zeros(2)})
    ('conv.weight',)
    """
    return tuple(k for k, v in weights.items() if np.ndim(v) >= 2 and k not in local_keys)


def full_masks(weights: Weights, keys: Sequence[str]) -> Masks:
    """All-True masks for ``keys``."""
    return {k: np.ones(np.shape(weights[k]), dtype=bool) for k in keys}


def target_count(size: int, target_density: float) -> int:
    """Coordinates a layer of ``size`` keeps at the target: ceil(density x size), >= 1.

    >>> target_count(432, 0.1), target_count(5, 0.1)
    (44, 1)
    """
    return max(1, math.ceil(target_density * size - 1e-9))


def at_target(masks: Masks, target_density: float) -> bool:
    """Whether every layer has reached its target count."""
    return all(int(m.sum()) <= target_count(m.size, target_density) for m in masks.values())


def prune_step(weights: Weights, masks: Masks, rate: float, target_density: float) -> Masks:
    """One magnitude-pruning step per layer: drop ``rate`` of the surviving weights with
    the smallest ``|w|`` (at least one), never below :func:`target_count`.

    Exactly ``max(target, n_alive - max(1, round(rate n_alive)))`` weights survive; ties
    in magnitude keep the lower index (a stable sort), so the step is deterministic.

    >>> w = {"w": np.array([[0.1, -3.0], [2.0, 0.5]])}
    >>> prune_step(w, {"w": np.ones((2, 2), bool)}, 0.5, 0.1)["w"].tolist()
    [[False, True], [True, False]]
    """
    if not 0 < rate < 1:
        raise ValueError(f"prune rate must be in (0, 1), got {rate}")
    out: Masks = {}
    for key, mask in masks.items():
        flat = mask.ravel()
        alive = int(flat.sum())
        target = target_count(flat.size, target_density)
        if alive <= target:
            out[key] = mask.copy()
            continue
        keep = max(target, alive - max(1, round(rate * alive)))
        idx = np.flatnonzero(flat)
        magnitude = np.abs(np.asarray(weights[key], dtype=np.float64).ravel()[idx])
        order = np.argsort(-magnitude, kind="stable")
        new = np.zeros(flat.size, dtype=bool)
        new[idx[order[:keep]]] = True
        out[key] = new.reshape(mask.shape)
    return out


def layer_densities(masks: Masks) -> dict[str, float]:
    return {k: float(m.mean()) if m.size else 1.0 for k, m in masks.items()}


def density(masks: Masks) -> float:
    """Kept fraction of all prunable coordinates together."""
    total = sum(m.size for m in masks.values())
    return float(sum(int(m.sum()) for m in masks.values()) / total) if total else 1.0


def apply_masks(weights: Weights, masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weights with the dropped coordinates set to zero (tensors without a mask: as is)."""
    return {
        k: np.where(masks[k], v, np.zeros((), dtype=np.asarray(v).dtype))
        if k in masks
        else np.array(v, copy=True)
        for k, v in weights.items()
    }


@dataclass(frozen=True)
class SparseUpload:
    """One site's contribution: its values (zeros where dropped), the masks of its pruned
    tensors (a tensor without a mask was sent whole) and its aggregation weight."""

    values: Weights
    masks: Mapping[str, np.ndarray]
    weight: float


def masked_mean(
    previous: Weights, uploads: Sequence[SparseUpload]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per coordinate, the weighted mean over the sites that kept it; ``previous`` where
    no site did. Returns ``(mean, kept)`` (float64 means; ``kept``: some site kept it).

    >>> prev = {"w": np.array([10.0, 20.0, 30.0])}
    >>> a = SparseUpload({"w": np.array([1.0, 2.0, 0.0])}, {"w": np.array([True, True, False])}, 1)
    >>> b = SparseUpload({"w": np.array([3.0, 0.0, 0.0])}, {"w": np.array([True, False, False])}, 3)
    >>> mean, kept = masked_mean(prev, [a, b])
    >>> mean["w"].tolist(), kept["w"].tolist()
    ([2.5, 2.0, 30.0], [True, True, False])
    """
    if not uploads:
        raise ValueError("no updates to aggregate")
    mean: dict[str, np.ndarray] = {}
    kept: dict[str, np.ndarray] = {}
    for key, prev in previous.items():
        num = np.zeros(np.shape(prev), dtype=np.float64)
        den = np.zeros(np.shape(prev), dtype=np.float64)
        for u in uploads:
            if key not in u.values:
                raise ValueError(f"an update has no tensor '{key}' of the global model")
            if u.weight <= 0:
                raise ValueError(f"aggregation weights must be > 0, got {u.weight}")
            m = np.asarray(u.masks[key], dtype=np.float64) if key in u.masks else 1.0
            num += u.weight * m * np.asarray(u.values[key], dtype=np.float64)
            den += u.weight * m * np.ones(np.shape(prev))
        some = den > 0
        mean[key] = np.where(some, num / np.where(some, den, 1.0), np.asarray(prev, np.float64))
        kept[key] = some
    return mean, kept


def server_step(
    previous: Weights,
    mean: Mapping[str, np.ndarray],
    kept: Mapping[str, np.ndarray],
    momentum: Mapping[str, np.ndarray],
    beta: float,
    eta: float,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Server momentum on the kept coordinates (FedLTN): ``Delta = mean - previous``,
    ``m <- beta m + Delta``, ``w <- previous + eta m``; coordinates nobody kept keep both
    their weight and their momentum. With beta = 0 and eta = 1 this is the masked mean.

    >>> w, m = server_step({"w": np.array([1.0, 1.0])}, {"w": np.array([3.0, 1.0])},
    ...     {"w": np.array([True, False])}, {"w": np.array([1.0, 5.0])}, 0.5, 1.0)
    >>> w["w"].tolist(), m["w"].tolist()
    ([3.5, 1.0], [2.5, 5.0])
    """
    new_w: dict[str, np.ndarray] = {}
    new_m: dict[str, np.ndarray] = {}
    for key, prev in previous.items():
        p = np.asarray(prev, dtype=np.float64)
        delta = np.asarray(mean[key], dtype=np.float64) - p
        old = np.asarray(momentum.get(key, np.zeros_like(p)), dtype=np.float64)
        m = np.where(kept[key], beta * old + delta, old)
        new_m[key] = m
        new_w[key] = np.where(kept[key], p + eta * m, p).astype(np.asarray(prev).dtype)
    return new_w, new_m


def secure_input(
    values: Weights,
    masks: Mapping[str, np.ndarray],
    global_weights: Weights,
    keys: Sequence[str],
    mask_keys: Sequence[str],
    clip: float,
) -> np.ndarray:
    """What a site encodes under secure aggregation (common support: the whole model):
    its delta ``values - global`` on its kept coordinates (0 elsewhere), flattened in
    ``keys`` order, then ``clip`` times its 0/1 masks in ``mask_keys`` order (``clip`` so
    that a kept coordinate encodes exactly at the top of the quantizer's range).

    >>> secure_input({"w": np.array([3.0, 5.0])}, {"w": np.array([True, False])},
    ...     {"w": np.array([1.0, 1.0])}, ["w"], ["w"], 2.0).tolist()
    [2.0, 0.0, 2.0, 0.0]
    """
    delta = {
        k: np.where(masks[k], np.asarray(values[k], np.float64) - global_weights[k], 0.0)
        if k in masks
        else np.asarray(values[k], np.float64) - global_weights[k]
        for k in keys
    }
    parts = [np.asarray(delta[k], np.float64).ravel() for k in keys]
    parts += [clip * np.asarray(masks[k], np.float64).ravel() for k in mask_keys]
    return np.concatenate(parts) if parts else np.zeros(0)


def mean_from_secure_sum(
    previous: Weights,
    total: np.ndarray,
    survivors: int,
    keys: Sequence[str],
    mask_keys: Sequence[str],
    clip: float,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The masked mean from the decoded *sum* of :func:`secure_input` vectors: per
    coordinate of a masked tensor, ``previous + sum of deltas / number of sites that kept
    it`` (``previous`` where none did); other tensors, ``previous + sum / survivors``.
    Unweighted, like medsilo's secure mean (the sum hides each site's sample count).

    >>> prev = {"w": np.array([1.0, 1.0, 1.0])}
    >>> total = np.array([4.0, 2.0, 0.0, 2.0, 1.0, 0.0])  # two sites, clip 1
    >>> mean, kept = mean_from_secure_sum(prev, total, 2, ["w"], ["w"], 1.0)
    >>> mean["w"].tolist(), kept["w"].tolist()
    ([3.0, 3.0, 1.0], [True, True, False])
    """
    if survivors < 1:
        raise ValueError(f"need at least one survivor, got {survivors}")
    sizes = [int(np.size(previous[k])) for k in (*keys, *mask_keys)]
    if sum(sizes) != len(total):
        raise ValueError(f"secure sum has {len(total)} entries, expected {sum(sizes)}")
    pieces = np.split(np.asarray(total, np.float64), np.cumsum(sizes)[:-1])
    sums = {k: p.reshape(np.shape(previous[k])) for k, p in zip(keys, pieces, strict=False)}
    counts = {
        k: np.rint(p / clip).reshape(np.shape(previous[k]))
        for k, p in zip(mask_keys, pieces[len(keys) :], strict=True)
    }
    mean: dict[str, np.ndarray] = {}
    kept: dict[str, np.ndarray] = {}
    for k in keys:
        p = np.asarray(previous[k], np.float64)
        if k in counts:
            some = counts[k] > 0
            mean[k] = np.where(some, p + sums[k] / np.where(some, counts[k], 1.0), p)
            kept[k] = some
        else:
            mean[k] = p + sums[k] / survivors
            kept[k] = np.ones(np.shape(p), dtype=bool)
    return mean, kept


# --------------------------------------------------------------------- torch helpers


@contextmanager
def masked_training(model: nn.Module, masks: Mapping[str, np.ndarray]) -> Iterator[None]:
    """Keep the dropped coordinates of ``model`` at exactly zero through any training.

    Zeroes them once on entry and again after every optimizer step of an optimizer that
    holds one of these parameters (a global step post-hook, removed on exit), so it
    works for plain SGD (:func:`~medsilo.fed.training.train_local`) and for Opacus'
    DP-SGD (:func:`~medsilo.privacy.dpsgd.train_dpsgd`), whose noise touches every
    coordinate: re-zeroing after the noisy step is post-processing, so the accounting of
    the DP-SGD steps is unchanged.
    """
    params = dict(model.named_parameters())
    missing = sorted(set(masks) - set(params))
    if missing:
        raise KeyError(f"masks for tensors that are not parameters of the model: {missing}")
    pairs = [
        (params[k], torch.from_numpy(np.asarray(m)).to(params[k].dtype)) for k, m in masks.items()
    ]
    ids = {id(p) for p, _ in pairs}

    def zero() -> None:
        with torch.no_grad():
            for p, m in pairs:
                p.mul_(m)

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if any(id(p) in ids for g in optimizer.param_groups for p in g["params"]):
            zero()

    zero()
    handle = register_optimizer_step_post_hook(hook)
    try:
        yield
    finally:
        handle.remove()
        zero()


TrainFn = Callable[[nn.Module], Mapping[str, float]]
"""Trains the model in place (local epochs, or DP-SGD steps); returns metrics."""
AccuracyFn = Callable[[nn.Module], float]
"""Accuracy of the model on the site's validation split."""


@dataclass
class LotteryClient:
    """A site's lottery state: masks, local normalization, initial weights (rewinding)
    and Jump-Start weights. Engine-independent: the site passes its own training and
    validation functions.
    """

    spec: LotterySpec
    initial: dict[str, np.ndarray]
    """The model's whole initial state (the study's common initialization)."""
    local_keys: frozenset[str]
    """Tensors that never leave the site (normalization under FedLTN)."""
    masks: Masks = field(default_factory=dict)
    local_weights: dict[str, np.ndarray] = field(default_factory=dict)
    jump_started: dict[str, np.ndarray] | None = None
    """Weights after Jump-Start, used instead of a download in the site's first round."""
    prunings: int = 0
    jump_start_done: bool = False

    def __post_init__(self) -> None:
        self.initial = copy_weights(self.initial)
        if not self.masks:
            self.masks = full_masks(self.initial, prunable_keys(self.initial, self.local_keys))
        if not self.local_weights:
            self.local_weights = {k: self.initial[k].copy() for k in self.local_keys}

    @property
    def shared_keys(self) -> tuple[str, ...]:
        return tuple(k for k in self.initial if k not in self.local_keys)

    def density(self) -> float:
        return density(self.masks)

    def personalized(self, global_weights: Weights) -> dict[str, np.ndarray]:
        """The site's model: its mask on the global weights, plus its local layers."""
        shared = {k: global_weights[k] for k in self.shared_keys}
        return {**apply_masks(shared, self.masks), **copy_weights(self.local_weights)}

    def _prune(self, model: nn.Module) -> None:
        self.masks = prune_step(
            get_weights(model), self.masks, self.spec.prune_rate, self.spec.target_density
        )
        self.prunings += 1

    def _may_prune(self, accuracy: float) -> bool:
        return accuracy >= self.spec.accuracy_threshold and not at_target(
            self.masks, self.spec.target_density
        )

    def jump_start(self, model: nn.Module, train_epoch: TrainFn, accuracy: AccuracyFn) -> None:
        """FedLTN's Jump-Start: ``jump_start_epochs`` times, one local epoch then a
        pruning step if the validation accuracy passes the threshold."""
        set_weights(model, apply_masks(self.initial, self.masks))
        for _ in range(self.spec.jump_start_epochs):
            with masked_training(model, self.masks):
                train_epoch(model)
            if self._may_prune(accuracy(model)):
                self._prune(model)
        trained = get_weights(model)
        self.local_weights = {k: trained[k] for k in self.local_keys}
        self.jump_started = apply_masks(trained, self.masks)
        self.jump_start_done = True

    def load(self, model: nn.Module, global_weights: Weights | None) -> None:
        """Load ``mask * global`` and the local layers (``None``: the Jump-Start weights)."""
        if global_weights is None:
            if self.jump_started is None:
                raise ValueError("no global weights and no Jump-Start weights to start from")
            set_weights(model, self.jump_started)
        else:
            set_weights(model, self.personalized(global_weights))
        self.jump_started = None

    def train_round(
        self,
        model: nn.Module,
        global_weights: Weights | None,
        train: TrainFn,
        accuracy: AccuracyFn,
    ) -> tuple[dict[str, np.ndarray], Masks, dict[str, float]]:
        """One round: load, (LotteryFL: prune and rewind), train with the mask held,
        (FedLTN: post-prune). Returns the shared values to send (zeros where dropped),
        their masks and metrics (``val_accuracy``, ``density``, ``pruned``)."""
        self.load(model, global_weights)
        pruned = False
        metrics: dict[str, float] = {}
        if self.spec.rewind:
            acc = accuracy(model)
            metrics["val_accuracy"] = acc
            if self._may_prune(acc):
                self._prune(model)
                set_weights(model, apply_masks(self.initial, self.masks))
                pruned = True
        with masked_training(model, self.masks):
            metrics.update(train(model))
        if not self.spec.rewind:
            acc = accuracy(model)
            metrics["val_accuracy"] = acc
            if self._may_prune(acc):
                self._prune(model)
                pruned = True
        trained = apply_masks(get_weights(model), self.masks)
        self.local_weights = {k: trained[k] for k in self.local_keys}
        values = {k: trained[k] for k in self.shared_keys}
        metrics.update(density=self.density(), pruned=float(pruned))
        return values, {k: m.copy() for k, m in self.masks.items()}, metrics

    def state_dict(self) -> dict[str, np.ndarray]:
        """Checkpoint: masks (uint8), local layers, Jump-Start weights, counters."""
        out = {f"mask/{k}": m.astype(np.uint8) for k, m in self.masks.items()}
        out.update({f"local/{k}": v.copy() for k, v in self.local_weights.items()})
        if self.jump_started is not None:
            out.update({f"jump/{k}": v.copy() for k, v in self.jump_started.items()})
        out["prunings"] = np.array(self.prunings)
        out["jump_start_done"] = np.array(int(self.jump_start_done))
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        def under(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix) :]: np.array(v) for k, v in state.items() if k.startswith(prefix)}

        self.masks = {k: v.astype(bool) for k, v in under("mask/").items()}
        self.local_weights = under("local/")
        self.jump_started = under("jump/") or None
        self.prunings = int(state["prunings"])
        self.jump_start_done = bool(int(state["jump_start_done"]))

    def upload(self, values: Weights, masks: Masks) -> bytes:
        """The sparse payload of a round's result (kept values, masks, dense biases)."""
        return sparse.encode(values, masks)

    def download(self, payload: bytes) -> dict[str, np.ndarray] | None:
        """Global weights from the coordinator's payload (``b""``: start from Jump-Start).
        Coordinates outside the site's mask are not sent and come back as zeros, which
        :meth:`personalized` drops anyway."""
        if not payload:
            return None
        values, _ = sparse.decode(payload)
        return values


@dataclass
class LotteryServer:
    """The coordinator's lottery state: global shared weights, server momentum, and the
    last mask each site sent (to send it only the coordinates it keeps)."""

    spec: LotterySpec
    weights: dict[str, np.ndarray]
    """Global shared weights (no local layers)."""
    momentum: dict[str, np.ndarray] = field(default_factory=dict)
    site_masks: dict[str, Masks] = field(default_factory=dict)
    last_kept: dict[str, float] = field(default_factory=dict)
    """Fraction of each tensor some site kept in the last aggregation (for reports)."""

    def download(self, site: str, round_: int) -> bytes:
        """What ``site`` receives in ``round_``: the global values on its last mask;
        nothing in round 1 after Jump-Start (the site starts from its own weights); the
        whole model while its mask is unknown."""
        masks = self.site_masks.get(site)
        if masks is None:
            if round_ == 1 and self.spec.jump_start_epochs > 0:
                return b""
            return sparse.encode(self.weights)
        return sparse.encode(apply_masks(self.weights, masks), masks)

    def aggregate(self, uploads: Sequence[tuple[str, bytes, float]]) -> None:
        """Decode ``(site, payload, weight)`` uploads, masked mean, server momentum."""
        decoded: list[SparseUpload] = []
        for site, payload, weight in uploads:
            values, masks = sparse.decode(payload)
            unknown = sorted(set(values) ^ set(self.weights))
            if unknown:
                raise ValueError(f"update from '{site}': tensors {unknown} do not match")
            self.site_masks[site] = {k: masks[k] for k in prunable_keys(self.weights)}
            decoded.append(SparseUpload(values, masks, weight))
        mean, kept = masked_mean(self.weights, decoded)
        self.weights, self.momentum = server_step(
            self.weights,
            mean,
            kept,
            self.momentum,
            self.spec.server_momentum,
            self.spec.server_lr,
        )
        self.last_kept = {k: float(v.mean()) for k, v in kept.items()}

    def aggregate_secure(
        self,
        total: np.ndarray,
        survivors: int,
        keys: Sequence[str],
        mask_keys: Sequence[str],
        clip: float,
    ) -> None:
        """The same server step from a securely aggregated sum (:func:`secure_input`); the
        coordinator learns no site's mask, so downloads stay dense."""
        mean, kept = mean_from_secure_sum(self.weights, total, survivors, keys, mask_keys, clip)
        self.weights, self.momentum = server_step(
            self.weights,
            mean,
            kept,
            self.momentum,
            self.spec.server_momentum,
            self.spec.server_lr,
        )
        self.last_kept = {k: float(v.mean()) for k, v in kept.items()}

    def state_dict(self) -> dict[str, dict[str, np.ndarray]]:
        """Checkpoint: weights, momentum, and each site's last mask (as uint8)."""
        out: dict[str, dict[str, np.ndarray]] = {
            "weights": copy_weights(self.weights),
            "momentum": copy_weights(self.momentum),
        }
        for site, masks in self.site_masks.items():
            out[f"mask/{site}"] = {k: m.astype(np.uint8) for k, m in masks.items()}
        return out

    def load_state_dict(self, state: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        self.weights = copy_weights(state["weights"])
        self.momentum = copy_weights(state.get("momentum", {}))
        self.site_masks = {
            key.removeprefix("mask/"): {k: np.asarray(m).astype(bool) for k, m in masks.items()}
            for key, masks in state.items()
            if key.startswith("mask/")
        }
