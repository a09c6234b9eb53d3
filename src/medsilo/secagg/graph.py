"""The SecAgg+ communication graph (Bell et al., CCS 2020) and how to size it.

SecAgg+ replaces the complete graph of Bonawitz et al. (2017) by a sparse regular graph
of degree ``k = O(log n)``: a site agrees pairwise masks with, and secret-shares its
keys among, only its ``k`` neighbours, and the threshold ``t`` holds per neighbourhood
(the site and its neighbours: ``k + 1`` share holders). As in Google's SecAgg+
implementation (fcp/secagg, ``SecretSharingHararyGraph``), the graph is a *random
Harary graph* ``H(k, n)``: the sites sit on a ring in a random order and each is joined
to the ``k/2`` nearest on either side. ``H(k, n)`` is k-connected (Harary 1962):
removing fewer than ``k`` sites never disconnects it. The ring order is public
randomness, an explicit ``numpy.random.Generator``.

Sizing (:func:`plan_graph`; the events are Bell et al.'s, the bounds are derived here).
With ``D = floor(dropout_rate * n)`` dropouts and ``C = floor(corrupt_rate * n)``
colluding sites placed uniformly at random:

* Connectivity: the surviving honest sites stay connected unless the ``D + C`` removed
  sites cover two disjoint runs of ``k/2`` consecutive ring positions. There are fewer
  than ``n (n - k - 1) / 2`` such pairs of runs, and ``k`` given positions are all
  removed with probability ``(D+C)! (n-k)! / (n! (D+C-k)!)``; the union bound must be
  at most ``2^-(security_bits + 1)``. (If the survivors were disconnected the coordinator
  would learn the sum of each component; sites also check it before unmasking.)
* Threshold: the number of a site's neighbours that are corrupt is hypergeometric
  ``Hyp(n-1, C, k)``; ``t`` must exceed it except with probability
  ``2^-(security_bits + 1) / n``. The share holders that survive when a site drops are
  ``Hyp(n-1, n-D, k)``; ``t`` must not exceed it except with probability
  ``2^-correctness_bits / n``. Within that range we take the largest ``t``, which
  tolerates the most colluding parties.

The smallest even ``k`` that meets both is chosen; for ``n <= full_graph_max`` (or if no
sparse ``k`` works) the graph is complete, which is Bonawitz et al.'s protocol.

>>> graph = harary_graph(["a", "b", "c", "d", "e", "f"], 2, np.random.default_rng(0))
>>> sorted(len(graph.neighbours(site)) for site in graph.ring)
[2, 2, 2, 2, 2, 2]
>>> plan_graph(10, dropout_rate=0.2)
GraphPlan(degree=9, threshold=8)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from medsilo.secagg.errors import ParameterError


@dataclass(frozen=True)
class Graph:
    """A Harary graph on ``ring`` with even ``degree``, or the complete graph
    (``degree == len(ring) - 1``)."""

    ring: tuple[str, ...]
    degree: int

    def __post_init__(self) -> None:
        n = len(self.ring)
        names = all(isinstance(s, str) and s for s in self.ring)
        if n < 2 or not names or len(set(self.ring)) != n:
            raise ParameterError("ring", "must hold >= 2 distinct non-empty site names", self.ring)
        if isinstance(self.degree, bool) or not isinstance(self.degree, int):
            raise ParameterError("degree", "must be an int", self.degree)
        if self.degree != n - 1 and not (2 <= self.degree < n - 1 and self.degree % 2 == 0):
            raise ParameterError(
                "degree", f"must be even in [2, {n - 2}] or equal n - 1 = {n - 1}", self.degree
            )

    @cached_property
    def _adjacency(self) -> dict[str, frozenset[str]]:
        n, half = len(self.ring), self.degree // 2
        if self.degree == n - 1:
            return {site: frozenset(self.ring) - {site} for site in self.ring}
        return {
            site: frozenset(self.ring[(i + step) % n] for step in range(-half, half + 1) if step)
            for i, site in enumerate(self.ring)
        }

    def neighbours(self, site: str) -> frozenset[str]:
        """The ``degree`` sites ``site`` masks with and shares its keys among."""
        return self._adjacency[site]

    def neighbourhood(self, site: str) -> frozenset[str]:
        """``site`` and its neighbours: the holders of ``site``'s shares."""
        return self._adjacency[site] | {site}

    def is_connected(self, sites: Set[str]) -> bool:
        """Whether the subgraph induced by ``sites`` is connected (True when empty)."""
        if not sites:
            return True
        start = next(iter(sites))
        seen, frontier = {start}, [start]
        while frontier:
            for other in self._adjacency[frontier.pop()] & sites:
                if other not in seen:
                    seen.add(other)
                    frontier.append(other)
        return len(seen) == len(sites)


def harary_graph(sites: Iterable[str], degree: int, rng: np.random.Generator) -> Graph:
    """A random Harary graph: ``sites`` in a ring ordered by ``rng``, each joined to the
    ``degree/2`` nearest on each side (complete when ``degree == len(sites) - 1``)."""
    ordered = sorted(sites)
    return Graph(tuple(ordered[i] for i in rng.permutation(len(ordered))), degree)


def complete_graph(sites: Iterable[str]) -> Graph:
    """Every site joined to every other: Bonawitz et al.'s original protocol."""
    ordered = tuple(sorted(sites))
    return Graph(ordered, len(ordered) - 1)


@dataclass(frozen=True)
class GraphPlan:
    """A degree and a per-neighbourhood threshold from :func:`plan_graph`."""

    degree: int
    threshold: int


def plan_graph(
    n: int,
    dropout_rate: float,
    corrupt_rate: float = 0.0,
    full_graph_max: int = 20,
    security_bits: int = 40,
    correctness_bits: int = 20,
) -> GraphPlan:
    """The smallest even degree (complete graph if ``n <= full_graph_max``) and the largest
    threshold that meet the bounds in the module docstring."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ParameterError("n", "must be an int >= 2", n)
    for name, rate in (("dropout_rate", dropout_rate), ("corrupt_rate", corrupt_rate)):
        if not 0 <= rate < 1:
            raise ParameterError(name, "must be in [0, 1)", rate)
    dropouts = math.floor(dropout_rate * n)
    corrupt = math.floor(corrupt_rate * n)
    security = math.log(2) * -(security_bits + 1)
    sparse = range(2, n - 1, 2) if n > full_graph_max else range(0)
    for degree in [*sparse, n - 1]:
        if degree < n - 1 and log_disconnection_bound(n, degree, dropouts + corrupt) > security:
            continue
        lowest = _upper_quantile(_hypergeometric(n - 1, corrupt, degree), security - math.log(n))
        highest = _threshold_reached(n, degree, dropouts, correctness_bits)
        if max(lowest + 1, 2) <= highest:
            return GraphPlan(degree, highest)
    raise ParameterError(
        "dropout_rate + corrupt_rate",
        f"leave no threshold t with corrupt neighbours < t <= surviving holders for n = {n}",
        dropout_rate + corrupt_rate,
    )


def log_disconnection_bound(n: int, degree: int, removed: int) -> float:
    """Natural log of the union bound on the probability that the sites left after
    removing ``removed`` uniformly random sites from a random H(degree, n) (even degree
    < n - 1) are disconnected; ``-inf`` when ``removed < degree`` (k-connectivity)."""
    if removed < degree:
        return -math.inf
    pairs = math.log(n) + math.log(n - degree - 1) - math.log(2)
    return (
        pairs
        + math.lgamma(removed + 1)
        + math.lgamma(n - degree + 1)
        - math.lgamma(n + 1)
        - math.lgamma(removed - degree + 1)
    )


def _hypergeometric(population: int, successes: int, draws: int) -> list[float]:
    """Probabilities of 0..draws successes in ``draws`` draws without replacement."""

    def log_comb(a: int, b: int) -> float:
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)

    total = log_comb(population, draws)
    return [
        math.exp(log_comb(successes, x) + log_comb(population - successes, draws - x) - total)
        if 0 <= draws - x <= population - successes and x <= successes
        else 0.0
        for x in range(draws + 1)
    ]


def _upper_quantile(pmf: Sequence[float], log_tail: float) -> int:
    """The smallest ``c`` with ``P(X > c) <= exp(log_tail)``."""
    tails = itertools.accumulate(reversed(pmf))  # P(X >= c) for c = len - 1, ..., 0
    return next(len(pmf) - 1 - i for i, tail in enumerate(tails) if tail > math.exp(log_tail))


def _threshold_reached(n: int, degree: int, dropouts: int, correctness_bits: int) -> int:
    """The largest ``t`` with ``P(surviving share holders < t) <= 2^-correctness_bits / n``."""
    if dropouts == 0:
        return degree + 1
    cumulative = itertools.accumulate(_hypergeometric(n - 1, n - dropouts, degree))
    limit = 2.0**-correctness_bits / n
    return next(t for t, below in enumerate(cumulative) if below > limit)  # P(X <= t) > limit
