"""What every party of one secure-aggregation session agrees on up front.

The coordinator sends a :class:`SessionConfig` in :class:`~medsilo.secagg.messages.Setup`;
each site checks it against its own expectations (its name, its modulus, its vector
length) before it advertises keys. Every later message, key derivation (HKDF salt),
AES-GCM associated data and signature is bound to :attr:`SessionConfig.digest`, a
SHA-256 of the whole configuration: a message from another session, or from a party
with another view of the configuration, fails as a replay or a bad signature.

Each site's Shamir evaluation point is ``1 +`` its position in :attr:`sites` (sorted
names); the same order fixes the sign of a pairwise mask (Bonawitz et al. 2017, Sec. 4:
``+PRG(s_uv)`` for ``u < v``, ``-PRG(s_uv)`` for ``u > v``), so the pair cancels in the sum.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Set
from dataclasses import dataclass
from functools import cached_property

from medsilo.secagg.crypto import frame
from medsilo.secagg.errors import ParameterError
from medsilo.secagg.field import Ring
from medsilo.secagg.graph import Graph

PROTOCOL = b"medsilo/secagg/v1"


@dataclass(frozen=True)
class SessionConfig:
    """One session: its id, graph, per-neighbourhood threshold, modulus and vector length."""

    session_id: bytes
    """Unique per session (e.g. study id + round), chosen by the engine; not secret."""
    graph: Graph
    threshold: int
    """``t``: shares needed to reconstruct a secret; at most ``t - 1`` parties may collude."""
    bits: int
    """Masked vectors live in Z_(2^bits)."""
    dim: int
    """Length of every input vector."""

    def __post_init__(self) -> None:
        if not isinstance(self.session_id, bytes) or not 1 <= len(self.session_id) <= 256:
            raise ParameterError("session_id", "must be 1 to 256 bytes", self.session_id)
        if not isinstance(self.graph, Graph):
            raise ParameterError("graph", "must be a Graph", self.graph)
        Ring(self.bits)
        holders = self.graph.degree + 1
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int):
            raise ParameterError("threshold", "must be an int", self.threshold)
        if not 2 <= self.threshold <= holders:
            raise ParameterError(
                "threshold",
                f"must be in [2, degree + 1 = {holders}] (t = 1 lets any one holder reconstruct)",
                self.threshold,
            )
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ParameterError("dim", "must be an int >= 1", self.dim)

    @cached_property
    def sites(self) -> tuple[str, ...]:
        """Every site of the session, sorted."""
        return tuple(sorted(self.graph.ring))

    @cached_property
    def _points(self) -> dict[str, int]:
        return {site: i + 1 for i, site in enumerate(self.sites)}

    def point(self, site: str) -> int:
        """``site``'s Shamir evaluation point (1-based position in :attr:`sites`)."""
        return self._points[site]

    def shortfall(self, alive: Set[str], owners: Iterable[str]) -> str | None:
        """Why ``alive`` is too few (below ``t`` overall, or in the neighbourhood of one of
        ``owners``: the holders of its shares), or None if every count reaches ``t``."""
        if len(alive) < self.threshold:
            return f"{len(alive)} parties < threshold t = {self.threshold}"
        for owner in owners:
            holders = len(self.graph.neighbourhood(owner) & alive)
            if holders < self.threshold:
                return (
                    f"{holders} parties in the neighbourhood of {owner!r}"
                    f" < threshold t = {self.threshold}"
                )
        return None

    @property
    def ring(self) -> Ring:
        """Z_(2^bits)."""
        return Ring(self.bits)

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 of the whole configuration: the session binding of every message."""
        fields = [
            PROTOCOL,
            self.session_id,
            frame(*(site.encode() for site in self.graph.ring)),
            *(
                v.to_bytes(8, "big")
                for v in (self.graph.degree, self.threshold, self.bits, self.dim)
            ),
        ]
        return hashlib.sha256(frame(*fields)).digest()
