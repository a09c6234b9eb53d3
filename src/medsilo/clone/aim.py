"""AIM (McKenna, Mullins, Sheldon & Miklau, "AIM: an adaptive and iterative mechanism for
differentially private synthetic data", VLDB 2022), Algorithm 1, as in upstream's
``mechanisms/aim.py`` but on mbi 2.x.

* Workload W (weight 1 each): every pair of columns; with a ``target`` (the column a model
  will predict from the clone) also every triple that contains the target. The paper's
  experiments use all 3-way marginals; AIM is defined for any weighted workload (Sec. 3),
  and when the clone's purpose is a classifier of the target, the target's triples are
  the 3-way marginals that classifier needs (the pair's interaction with the label; the
  "task-aware" workloads of Sec. 7), while all 3-way marginals of the 39-column eICU table
  would be 9,139 queries. Candidates are W's downward closure, each scored
  ``w_r = sum over workload marginals s of |r & s|``. The workload is public (it comes
  from the declared schema and target, never from the data).
* Initialisation: every one-way marginal is measured with ``sigma = sqrt(T / (2 * 0.9 rho))``,
  T = rounds (default 16 d).
* Each round spends ``1/(2 sigma^2) + epsilon^2/8`` with ``epsilon = sqrt(8 * 0.1 rho / T)``:
  the exponential mechanism picks the candidate r whose marginal the current model gets
  most wrong, quality ``w_r (||x_r - xhat_r||_1 - sqrt(2/pi) sigma n_r)``, sensitivity
  ``max w_r``, among candidates that keep the junction tree under ``max_model_size`` MB
  (scaled by the budget used so far); r is measured with Gaussian noise sigma, and the model
  is re-estimated (warm-started).
* Annealing: when the model's estimate of r barely moved (L1 change <= sqrt(2/pi) sigma n_r),
  sigma halves and epsilon doubles. When what is left is less than two rounds' cost, the last
  round spends all of it (90 % measurement, 10 % selection).

Two exact shortcuts keep a run to minutes on a laptop-class CPU (upstream's run takes hours
on eICU's 39 columns): the junction-tree size of each candidate is computed by
:func:`model_size` (the same greedy elimination as mbi's ``hypothetical_model_size``, on
bit sets, about 100x faster), and a clique measured twice is kept as one measurement, the
inverse-variance average of the two (:func:`merge`), which has the same L2 loss up to a
constant, so that mbi's compiled estimation program is reused instead of recompiled.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medsilo.clone import _mbi
from medsilo.clone import model as pgm
from medsilo.clone.curator import Clique, Curator
from medsilo.errors import ConfigError

Progress = Callable[[str, float], None]


def _no_progress(step: str, fraction: float) -> None:
    del step, fraction


def workload_candidates(
    columns: list[str], sizes: dict[str, int], max_cells: int, target: str | None = None
) -> dict[Clique, float]:
    """The workload (all pairs; with ``target`` also every triple containing it), each of
    at most ``max_cells`` cells, and its downward closure, with AIM's weights
    ``w_r = sum_s |r & s|`` (upstream's ``compile_workload``)."""
    workload: list[Clique] = list(itertools.combinations(columns, 2))
    if target is not None:
        others = [c for c in columns if c != target]
        workload += [(a, b, target) for a, b in itertools.combinations(others, 2)]
    workload = [s for s in workload if math.prod(sizes[c] for c in s) <= max_cells]
    closure: set[Clique] = {(c,) for c in columns}
    for s in workload:
        closure |= {r for k in range(2, len(s) + 1) for r in itertools.combinations(s, k)}
    return {r: float(sum(len(set(r) & set(s)) for s in workload)) or 1.0 for r in closure}


def aim(
    curator: Curator,
    rounds: int | None = None,
    max_model_size: float = 80.0,
    max_cells: int = 10_000,
    iters: int = 200,
    final_iters: int = 2000,
    progress: Progress = _no_progress,
    target: str | None = None,
) -> Any:
    """Run AIM on ``curator``'s table; returns the fitted model. ``target``: add the
    target's triples to the workload (module docstring)."""
    columns = list(curator.sizes)
    d = len(columns)
    rounds = rounds if rounds is not None else 16 * d
    if rounds <= d:
        raise ConfigError(
            f"AIM rounds must be > the number of columns ({d}); got {rounds}. "
            f"The paper's default is 16 x columns = {16 * d}."
        )
    rho = curator.rho
    sigma = math.sqrt(rounds / (2 * 0.9 * rho))
    epsilon = math.sqrt(8 * 0.1 * rho / rounds)
    candidates = workload_candidates(columns, curator.sizes, max_cells, target)

    progress("measuring one-way marginals", 0.0)
    measurements = [pgm.linear((c,), curator.measure((c,), sigma), sigma) for c in columns]
    fitted = pgm.estimate(curator.sizes, measurements, iters=iters)

    done, round_ = False, 0
    while not done:
        left = curator.remaining
        if left <= 1e-9 * rho:
            break
        if left < 2 * (0.5 / sigma**2 + epsilon**2 / 8):
            sigma = math.sqrt(1 / (2 * 0.9 * left))
            epsilon = math.sqrt(8 * 0.1 * left)
            done = True
        used_after = curator.spent + 0.5 / sigma**2 + epsilon**2 / 8
        size_limit = max_model_size * used_after / rho
        small = _filter(candidates, fitted, curator.sizes, size_limit)
        estimates = pgm.marginals(fitted, list(small), curator.rng)

        def quality(
            r: Clique, x: np.ndarray, s: float = sigma, xhat: dict[Clique, Any] = estimates
        ) -> float:
            bias = math.sqrt(2 / math.pi) * s * x.size
            return candidates[r] * (float(np.abs(x - xhat[r]).sum()) - bias)

        sensitivity = max(abs(candidates[r]) for r in small)
        chosen = curator.select(list(small), quality, epsilon, sensitivity)
        y = curator.measure(chosen, sigma)
        measurements = merge(measurements, pgm.linear(chosen, y, sigma))
        before = estimates[chosen]
        fitted = pgm.estimate(curator.sizes, measurements, iters=iters, warm_start=fitted)
        after = pgm.marginal(fitted, chosen)
        _mbi.release_compiled()
        round_ += 1
        progress(
            f"round {round_}: measured {' x '.join(chosen)}",
            min(0.95, curator.spent / rho),
        )
        if not done and np.abs(after - before).sum() <= math.sqrt(2 / math.pi) * sigma * y.size:
            sigma /= 2
            epsilon *= 2
    progress("final estimation", 0.97)
    return pgm.estimate(curator.sizes, measurements, iters=final_iters, warm_start=fitted)


def merge(measurements: Sequence[Any], new: Any) -> list[Any]:
    """``measurements`` plus ``new``; if its clique was measured before (identity queries
    both), the two become one measurement: y = (y1/s1^2 + y2/s2^2) / (1/s1^2 + 1/s2^2)
    with 1/s^2 = 1/s1^2 + 1/s2^2, whose loss ||x - y||^2 / s^2 equals the sum of the two
    losses up to a constant in x (the sufficient statistic of two Gaussian measurements)."""
    out = list(measurements)
    for i, old in enumerate(out):
        if tuple(old.clique) == tuple(new.clique):
            w1, w2 = 1 / float(old.stddev) ** 2, 1 / float(new.stddev) ** 2
            y1 = np.asarray(old.noisy_measurement, dtype=np.float64)
            y2 = np.asarray(new.noisy_measurement, dtype=np.float64)
            out[i] = pgm.linear(new.clique, (w1 * y1 + w2 * y2) / (w1 + w2), (w1 + w2) ** -0.5)
            return out
    return [*out, new]


def model_size(sizes: dict[str, int], cliques: Sequence[Clique]) -> float:
    """Megabytes of float64 cells of the junction tree of ``cliques``: the value of mbi's
    ``junction_tree.hypothetical_model_size`` (same greedy elimination order, ties broken
    in column order; a tree-shaped graph needs no fill-in), computed on bit sets.

    Eliminating column a in the greedy order costs the domain size of a and its current
    neighbours; the junction tree's nodes are the maximal sets {a} + neighbours met along
    the elimination (the maximal cliques of the triangulated graph)."""
    names = list(sizes)
    index = {c: i for i, c in enumerate(names)}
    adjacency = [0] * len(names)
    members = 0
    for clique in cliques:
        bits = sum(1 << index[c] for c in clique)
        members |= bits
        for c in clique:
            adjacency[index[c]] |= bits & ~(1 << index[c])

    def cells(bits: int) -> int:
        out = 1
        while bits:
            low = bits & -bits
            out *= sizes[names[low.bit_length() - 1]]
            bits ^= low
        return out

    edges = _edges(adjacency, names)
    if edges and len(edges) == len(names) - 1 and _connected(adjacency):
        return sum(sizes[a] * sizes[b] for a, b in edges) * 8 / 2**20
    left = list(range(len(names)))
    created: list[int] = []
    while left:
        # in no clique: mbi's cost is the size of the empty domain, 1
        best = min(left, key=lambda i: cells(adjacency[i] | 1 << i) if members >> i & 1 else 1)
        near = adjacency[best]
        created.append(near | 1 << best)
        rest = near
        while rest:
            low = rest & -rest
            j = low.bit_length() - 1
            adjacency[j] = (adjacency[j] | near) & ~low & ~(1 << best)
            rest ^= low
        adjacency[best] = 0
        left.remove(best)
    maximal = {c for c in created if not any(c != o and c & o == c for o in created)}
    return sum(cells(c) for c in maximal) * 8 / 2**20


def _connected(adjacency: list[int]) -> bool:
    seen, frontier = 1, 1
    while frontier:
        reach = 0
        for i in range(len(adjacency)):
            if frontier >> i & 1:
                reach |= adjacency[i]
        frontier = reach & ~seen
        seen |= reach
    return seen == (1 << len(adjacency)) - 1


def _edges(adjacency: list[int], names: list[str]) -> list[tuple[str, str]]:
    return [
        (names[i], names[j])
        for i in range(len(names))
        for j in range(i + 1, len(names))
        if adjacency[i] >> j & 1
    ]


def _filter(
    candidates: dict[Clique, float], fitted: Any, sizes: dict[str, int], size_limit: float
) -> dict[Clique, float]:
    """Candidates whose addition keeps the model under ``size_limit`` MB, or that the model
    already covers (upstream's ``filter_candidates``)."""
    mbi = _mbi.load()
    cliques = [tuple(c) for c in fitted.cliques]
    free = set(mbi.clique_utils.downward_closure(cliques))
    return {
        r: w
        for r, w in candidates.items()
        if r in free or model_size(sizes, [*cliques, r]) <= size_limit
    }
