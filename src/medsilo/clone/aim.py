"""AIM (McKenna, Mullins, Sheldon & Miklau, "AIM: an adaptive and iterative mechanism for
differentially private synthetic data", VLDB 2022), Algorithm 1, as in upstream's
``mechanisms/aim.py`` but on mbi 2.x.

* Workload W: every pair of columns (weight 1); candidates are W's downward closure, each
  scored ``w_r = sum over workload marginals s of |r & s|``.
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
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
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
    columns: list[str], sizes: dict[str, int], max_cells: int
) -> dict[Clique, float]:
    """All pairs (of at most ``max_cells`` cells) and their downward closure, with AIM's
    weights ``w_r = sum_s |r & s|`` (upstream's ``compile_workload``)."""
    workload = [
        (a, b) for a, b in itertools.combinations(columns, 2) if sizes[a] * sizes[b] <= max_cells
    ]
    closure: set[Clique] = {(c,) for c in columns} | set(workload)
    return {r: float(sum(len(set(r) & set(s)) for s in workload)) or 1.0 for r in closure}


def aim(
    curator: Curator,
    rounds: int | None = None,
    max_model_size: float = 80.0,
    max_cells: int = 10_000,
    iters: int = 200,
    final_iters: int = 2000,
    progress: Progress = _no_progress,
) -> Any:
    """Run AIM on ``curator``'s table; returns the fitted model."""
    mbi = _mbi.load()
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
    candidates = workload_candidates(columns, curator.sizes, max_cells)
    domain = mbi.Domain.fromdict(curator.sizes)

    progress("measuring one-way marginals", 0.0)
    measurements = [pgm.linear((c,), curator.measure((c,), sigma), sigma) for c in columns]
    fitted = pgm.estimate(curator.sizes, measurements, iters=iters)

    done = False
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
        small = _filter(candidates, fitted, domain, size_limit)
        estimates = pgm.marginals(fitted, list(small), curator.rng)

        def quality(
            r: Clique, x: np.ndarray, s: float = sigma, xhat: dict[Clique, Any] = estimates
        ) -> float:
            bias = math.sqrt(2 / math.pi) * s * x.size
            return candidates[r] * (float(np.abs(x - xhat[r]).sum()) - bias)

        sensitivity = max(abs(candidates[r]) for r in small)
        chosen = curator.select(list(small), quality, epsilon, sensitivity)
        y = curator.measure(chosen, sigma)
        measurements.append(pgm.linear(chosen, y, sigma))
        before = estimates[chosen]
        fitted = pgm.estimate(curator.sizes, measurements, iters=iters, warm_start=fitted)
        after = pgm.marginal(fitted, chosen)
        progress(
            f"round {len(measurements) - d}: measured {' x '.join(chosen)}",
            min(0.95, curator.spent / rho),
        )
        if not done and np.abs(after - before).sum() <= math.sqrt(2 / math.pi) * sigma * y.size:
            sigma /= 2
            epsilon *= 2
    progress("final estimation", 0.97)
    return pgm.estimate(curator.sizes, measurements, iters=final_iters, warm_start=fitted)


def _filter(
    candidates: dict[Clique, float], fitted: Any, domain: Any, size_limit: float
) -> dict[Clique, float]:
    """Candidates whose addition keeps the model under ``size_limit`` MB, or that the model
    already covers (upstream's ``filter_candidates``)."""
    mbi = _mbi.load()
    cliques = [tuple(c) for c in fitted.cliques]
    free = set(mbi.clique_utils.downward_closure(cliques))
    out = {}
    for r, w in candidates.items():
        if r in free or mbi.junction_tree.hypothetical_model_size(domain, [*cliques, r]) <= (
            size_limit
        ):
            out[r] = w
    return out
