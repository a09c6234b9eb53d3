"""One whole session in memory: the loop an engine mirrors, for tests and benchmarks.

:class:`Simulation` holds every party; :func:`run_session` runs it to the end. It
registers a long-term signing key per site, opens the session with
:func:`~medsilo.secagg.server.start`, then for each :class:`~medsilo.secagg.messages.Stage`
delivers the coordinator's outbox to the sites still alive, lets the sites listed in
``dropouts[stage]`` fall silent (they never send that stage's message nor any later
one), and closes the stage with the replies. An engine does the same with real
transport, deadlines and serialization (:func:`~medsilo.secagg.messages.to_dict`).

>>> import numpy as np
>>> vectors = {s: np.array([i, 10 * i], dtype=np.uint64) for i, s in enumerate("abcd", 1)}
>>> result = run_session(vectors, threshold=3, bits=16, dropouts={Stage.CONSISTENCY_CHECK: {"d"}})
>>> result.total.tolist(), result.survivors
([10, 100], ('a', 'b', 'c', 'd'))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from medsilo.secagg import crypto
from medsilo.secagg.client import SiteInit, SiteState, site_step
from medsilo.secagg.config import SessionConfig
from medsilo.secagg.errors import AbortError, ParameterError
from medsilo.secagg.graph import Graph, complete_graph
from medsilo.secagg.messages import Stage, ToCoordinator, ToSite
from medsilo.secagg.server import CoordinatorState, Finished, coordinator_step, start


@dataclass(frozen=True, eq=False)
class Summed:
    """The session succeeded: ``total`` is the sum mod 2^bits of the ``survivors``' inputs."""

    total: NDArray[np.uint64]
    survivors: tuple[str, ...]


@dataclass(frozen=True)
class Aborted:
    """The session aborted at ``stage``; ``reason`` says which count fell below ``t``."""

    stage: str
    reason: str


class Simulation:
    """Every party of one session in one process: the thin stateful shell around the pure
    stages. :meth:`deliver` hands the coordinator's outbox to the sites, :meth:`close`
    ends the stage with an inbox; tests use the two halves to inspect or forge messages."""

    def __init__(
        self,
        vectors: Mapping[str, NDArray[np.uint64]],
        threshold: int,
        *,
        bits: int = 32,
        graph: Graph | None = None,
        session_id: bytes = b"medsilo-simulated-session",
    ) -> None:
        graph = graph or complete_graph(vectors)
        if set(graph.ring) != set(vectors):
            raise ParameterError("graph", "must have exactly the sites of vectors", graph.ring)
        dims = {vector.shape for vector in vectors.values()}
        if len(dims) != 1 or len(next(iter(dims))) != 1:
            raise ParameterError("vectors", "must be 1-D and of one length", sorted(dims))
        self.config = SessionConfig(session_id, graph, threshold, bits, next(iter(dims))[0])
        self.signing_keys = {site: crypto.ed25519_keypair() for site in self.config.sites}
        self.verify_keys = {site: public for site, (_, public) in self.signing_keys.items()}
        self.sites: dict[str, SiteState] = {
            site: SiteInit(site, self.signing_keys[site][0], self.verify_keys, bits, vectors[site])
            for site in self.config.sites
        }
        self.coordinator: CoordinatorState
        self.outbox: dict[str, ToSite]
        self.coordinator, setup = start(self.config, self.verify_keys)
        self.outbox = dict(setup)

    def deliver(self, silent: Set[str] = frozenset()) -> dict[str, ToCoordinator]:
        """Each site in the outbox and not ``silent`` runs its stage; their replies."""
        replies: dict[str, ToCoordinator] = {}
        for site, message in self.outbox.items():
            if site not in silent:
                self.sites[site], replies[site] = site_step(self.sites[site], message)
        return replies

    def close(self, inbox: Sequence[ToCoordinator]) -> None:
        """The coordinator ends its stage with ``inbox``; its next outbox replaces this one."""
        self.coordinator, self.outbox = coordinator_step(self.coordinator, inbox)


def run_session(
    vectors: Mapping[str, NDArray[np.uint64]],
    threshold: int,
    dropouts: Mapping[Stage, Set[str]] | None = None,
    *,
    bits: int = 32,
    graph: Graph | None = None,
    session_id: bytes = b"medsilo-simulated-session",
) -> Summed | Aborted:
    """Sum ``vectors`` (site -> encoded vector in Z_(2^bits)) by secure aggregation over
    ``graph`` (complete by default), with the sites in ``dropouts[stage]`` going silent
    at ``stage``. Returns :class:`Summed`, or :class:`Aborted` when fewer than
    ``threshold`` parties remain where they are needed."""
    dropouts = dropouts or {}
    simulation = Simulation(vectors, threshold, bits=bits, graph=graph, session_id=session_id)
    silent: set[str] = set()
    try:
        for stage in Stage:
            silent |= dropouts.get(stage, set())
            simulation.close(list(simulation.deliver(silent).values()))
    except AbortError as error:
        return Aborted(error.stage, error.detail)
    state = simulation.coordinator
    assert isinstance(state, Finished), "five stages end in Finished"
    return Summed(state.total, state.survivors)
