"""Partitioners: assign the rows of a dataset to sites.

Each returns one sorted index array per site; the arrays are disjoint and together
cover every row (tested). Randomness comes only from the ``rng`` argument.

* :func:`natural` -- the real site of each row (a site column, a hospital id);
* :func:`iid` -- uniform random equal-size split;
* :func:`dirichlet` -- label skew: for every class, site shares ~ Dir(alpha)
  (Hsu, Qi & Brown 2019, "Measuring the effects of non-identical data distribution");
  alpha -> infinity approaches IID, alpha -> 0 one class per site;
* :func:`quantity_skew` -- IID labels, site sizes ~ Dir(alpha) (Li et al. 2022, NIID-Bench);
* :func:`shards` -- sort by label, cut into ``num_sites * k`` shards, give each site
  ``k`` shards, so each site sees at most ``k`` classes (McMahan et al. 2017).
"""

from __future__ import annotations

import numpy as np

from medsilo.errors import ConfigError

MAX_DRAWS = 1000


def natural(sites: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
    """Group rows by their site label, sites in order of first appearance."""
    names = list(dict.fromkeys(sites.tolist()))
    return [str(n) for n in names], [np.flatnonzero(sites == n) for n in names]


def _check_sites(n: int, num_sites: int, min_size: int = 1) -> None:
    if num_sites < 1:
        raise ConfigError(f"data.num_sites: must be >= 1, got {num_sites}")
    if n < num_sites * min_size:
        raise ConfigError(
            f"data.num_sites: {num_sites} sites x at least {min_size} rows need "
            f"{num_sites * min_size} rows, the dataset has {n}; use fewer sites"
        )


def iid(n: int, num_sites: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniform random split into ``num_sites`` parts whose sizes differ by at most one.

    >>> [len(p) for p in iid(10, 3, np.random.default_rng(0))]
    [4, 3, 3]
    """
    _check_sites(n, num_sites)
    return [np.sort(p) for p in np.array_split(rng.permutation(n), num_sites)]


def dirichlet(
    labels: np.ndarray, num_sites: int, alpha: float, rng: np.random.Generator, min_size: int = 10
) -> list[np.ndarray]:
    """Label-skewed split; redraws until every site has at least ``min_size`` rows."""
    if not alpha > 0:
        raise ConfigError(f"data.alpha: must be > 0, got {alpha}")
    _check_sites(len(labels), num_sites, min_size)
    classes = np.unique(labels)
    for _ in range(MAX_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_sites, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for site, chunk in enumerate(np.split(idx, cuts)):
                parts[site].append(chunk)
        merged = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in merged) >= min_size:
            return merged
    raise ConfigError(
        f"data.alpha: no Dirichlet(alpha={alpha}) draw in {MAX_DRAWS} gave every one of "
        f"{num_sites} sites {min_size} rows; raise alpha or use fewer sites"
    )


def quantity_skew(
    n: int, num_sites: int, alpha: float, rng: np.random.Generator, min_size: int = 10
) -> list[np.ndarray]:
    """IID rows, site sizes proportional to a Dirichlet(alpha) draw (at least ``min_size``)."""
    if not alpha > 0:
        raise ConfigError(f"data.alpha: must be > 0, got {alpha}")
    _check_sites(n, num_sites, min_size)
    free = n - num_sites * min_size
    shares = rng.dirichlet(np.full(num_sites, alpha))
    sizes = min_size + np.floor(shares * free).astype(int)
    sizes[: n - sizes.sum()] += 1  # hand out the rounding remainder
    cuts = np.cumsum(sizes)[:-1]
    return [np.sort(p) for p in np.split(rng.permutation(n), cuts)]


def shards(
    labels: np.ndarray, num_sites: int, classes_per_site: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """McMahan et al.'s pathological non-IID split: ``classes_per_site`` shards each."""
    if classes_per_site < 1:
        raise ConfigError(f"data.classes_per_site: must be >= 1, got {classes_per_site}")
    num_shards = num_sites * classes_per_site
    _check_sites(len(labels), num_shards)
    # Stable sort after a random permutation: shards are contiguous label runs and the
    # rows inside a class are shuffled.
    perm = rng.permutation(len(labels))
    order = perm[np.argsort(labels[perm], kind="stable")]
    pieces = np.array_split(order, num_shards)
    owner = rng.permutation(num_shards)
    return [
        np.sort(np.concatenate([pieces[k] for k in owner[s::num_sites]])) for s in range(num_sites)
    ]
