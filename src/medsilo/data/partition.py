"""Partitioners: assign the rows of a dataset to sites.

Each returns one sorted index array per site; the arrays are disjoint and together
cover every row (tested). Randomness comes only from the ``rng`` argument.

* :func:`natural` -- the real site of each row (a site column, a hospital id);
* :func:`iid` -- uniform random equal-size split;
* :func:`dirichlet` -- label skew: for every class, site shares ~ Dir(alpha)
  (Hsu, Qi & Brown 2019, "Measuring the effects of non-identical data distribution");
  alpha -> infinity approaches IID, alpha -> 0 one class per site;
* :func:`quantity_skew` -- IID labels, site sizes ~ Dir(alpha) (Li et al. 2022, NIID-Bench);
* :func:`shards` -- cut every class into single-class shards, ``num_sites * k`` in all,
  give each site ``k`` shards, so each site sees at most ``k`` classes (after McMahan
  et al. 2017).
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
    """Pathological non-IID split after McMahan et al. (2017): ``classes_per_site`` shards
    per site, every shard of a single class, so a site sees at most ``classes_per_site``
    classes.

    McMahan et al. cut the label-sorted rows into equal shards; a shard then straddles two
    classes whenever a class size is not a multiple of the shard size, and a site can see
    up to twice as many classes as it has shards. Here each class is cut into its own
    shards instead: every class gets one, and each further shard goes to the class with
    the most rows per shard, which keeps shard sizes as even as the classes allow.

    >>> y = np.array([0] * 5 + [1] * 5 + [2] * 5)
    >>> [np.unique(y[p]).size for p in shards(y, 3, 1, np.random.default_rng(0))]
    [1, 1, 1]
    """
    if classes_per_site < 1:
        raise ConfigError(f"data.classes_per_site: must be >= 1, got {classes_per_site}")
    _check_sites(len(labels), num_sites, classes_per_site)
    num_shards = num_sites * classes_per_site
    classes, counts = np.unique(labels, return_counts=True)
    if num_shards < len(classes):
        raise ConfigError(
            f"data.classes_per_site: {num_sites} sites x {classes_per_site} shards = "
            f"{num_shards} single-class shards cannot hold the {len(classes)} classes; "
            f"raise data.classes_per_site to at least {-(-len(classes) // num_sites)} "
            "or use more sites"
        )
    per_class = np.ones(len(classes), dtype=np.int64)
    for _ in range(num_shards - len(classes)):
        per_class[np.argmax(counts / per_class)] += 1
    pieces: list[np.ndarray] = []
    for c, k in zip(classes, per_class, strict=True):
        pieces += np.array_split(rng.permutation(np.flatnonzero(labels == c)), k)
    owner = rng.permutation(num_shards)
    return [
        np.sort(np.concatenate([pieces[k] for k in owner[s::num_sites]])) for s in range(num_sites)
    ]
