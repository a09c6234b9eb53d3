"""Post-processing: a graphical model from noisy measurements, and records sampled from it.

Estimation is Private-PGM (McKenna, Sheldon & Miklau, "Graphical-model based estimation and
inference for differential privacy", ICML 2019): mirror descent over the marginal polytope
of a Markov random field whose cliques are the measured marginals, minimising the L2
distance to the noisy measurements (mbi 2.x ``estimation.MirrorDescent``).

Sampling draws records one column at a time along the junction tree's elimination order,
each from its conditional given the columns already drawn (i.i.d. samples, as mbi's
``synthetic_data(method="sample")``), but with an explicit random generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medsilo.clone import _mbi

Clique = tuple[str, ...]


def estimate(
    sizes: dict[str, int],
    measurements: Sequence[Any],
    iters: int,
    warm_start: Any = None,
    known_total: float | None = None,
) -> Any:
    """A ``MarkovRandomField`` fitted to ``measurements`` (mbi ``LinearMeasurement``s);
    the number of records is ``known_total`` (itself estimated from noisy counts)."""
    mbi = _mbi.load()
    domain = mbi.Domain.fromdict(sizes)
    return mbi.estimation.MirrorDescent().estimate(
        domain, list(measurements), known_total=known_total, iters=iters, warm_start=warm_start
    )


def total_from_oneway(noisy: Sequence[np.ndarray], sigma: float) -> float:
    """Minimum-variance unbiased estimate of the number of records from noisy one-way
    marginals that share the noise std ``sigma``: the sums weighted by ``1 / size``."""
    sums = np.array([float(np.sum(y)) for y in noisy])
    weights = np.array([1.0 / (sigma**2 * len(y)) for y in noisy])
    return max(1.0, float(np.sum(weights * sums) / np.sum(weights)))


def linear(clique: Clique, values: np.ndarray, sigma: float, query: Any = None) -> Any:
    """An mbi ``LinearMeasurement`` (identity query unless ``query`` is given)."""
    mbi = _mbi.load()
    if query is None:
        return mbi.LinearMeasurement(np.asarray(values), tuple(clique), stddev=float(sigma))
    return mbi.LinearMeasurement(np.asarray(values), tuple(clique), float(sigma), query=query)


def marginal(model: Any, clique: Clique) -> np.ndarray:
    """The model's marginal counts on ``clique`` (which a clique of the model must cover),
    flattened in C order."""
    return marginals(model, [clique], np.random.default_rng(0), draws=0)[tuple(clique)]


def marginals(
    model: Any, cliques: Sequence[Clique], rng: np.random.Generator, draws: int = 100_000
) -> dict[Clique, np.ndarray]:
    """The model's marginal counts on each clique: exact where one of the model's cliques
    covers it (summed out of that clique's marginal in numpy: mbi's ``project`` compiles a
    JAX program per clique, about 1 s each), otherwise from ``draws`` records sampled from
    the model (scaled to its total). Exact inference on an uncovered clique would compile
    one program per clique too, while the Monte Carlo error here, about
    ``total / sqrt(draws)`` per marginal in L1, is far below the noise AIM scores against
    (``sqrt(2/pi) sigma`` per cell)."""
    tables = {
        tuple(c): np.asarray(f.datavector(flatten=False), dtype=np.float64)
        for c, f in model.marginals.tables.items()
    }
    out: dict[Clique, np.ndarray] = {}
    uncovered = []
    for c in map(tuple, cliques):
        home = next((k for k in tables if set(c) <= set(k)), None)
        if home is None:
            uncovered.append(c)
            continue
        summed = tables[home].sum(axis=tuple(i for i, a in enumerate(home) if a not in c))
        kept = [a for a in home if a in c]
        out[c] = np.transpose(summed, [kept.index(a) for a in c]).ravel()
    if uncovered:
        if draws < 1:
            raise ValueError(f"the model's cliques do not cover {uncovered[0]}")
        draw = {a: v.astype(np.int32) for a, v in sample(model, draws, rng).items()}
        sizes = model.domain.config
        scale = float(model.total) / draws
        for c in uncovered:
            index = draw[c[0]]
            for a in c[1:]:  # C-order cell index, as np.ravel_multi_index
                index = index * sizes[a] + draw[a]
            cells = int(np.prod([sizes[a] for a in c]))
            out[c] = np.bincount(index, minlength=cells) * scale
    return out


def sample(model: Any, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``rows`` i.i.d. records from the model, as codes per column."""
    mbi = _mbi.load()
    domain = model.domain
    jtree, order = mbi.junction_tree.make_junction_tree(domain, [tuple(c) for c in model.cliques])
    nodes = list(jtree.nodes)
    potentials = model.potentials.expand(nodes)
    marginals = mbi.marginal_oracles.message_passing_stable(potentials, 1.0)
    cliques = [set(n) for n in nodes]
    data: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for col in order[::-1]:
        neighbours = set().union(*(c for c in cliques if col in c))
        parents = tuple(a for a in domain.attributes if a in used and a in neighbours)
        joint = np.clip(
            np.asarray(marginals.project((*parents, col)).datavector(flatten=False)), 0.0, None
        )
        alone = joint.reshape(-1, joint.shape[-1]).sum(axis=0)
        alone = alone / alone.sum() if alone.sum() > 0 else np.full(len(alone), 1 / len(alone))
        if parents:
            mass = joint.sum(axis=-1, keepdims=True)
            cond = np.where(mass > 0, joint / np.where(mass > 0, mass, 1.0), alone)
            probs = cond[tuple(data[p] for p in parents)]  # (rows, size of col)
        else:
            probs = np.broadcast_to(alone, (rows, len(alone)))
        cdf = np.cumsum(probs, axis=-1)
        u = rng.random(rows) * cdf[:, -1]
        choice = (cdf <= u[:, None]).sum(axis=-1)
        data[col] = np.minimum(choice, len(alone) - 1).astype(np.int64)
        used.add(col)
    return data
