"""Secure aggregation (Bonawitz et al. 2017, Bell et al. 2020): pure, no torch, no I/O.

The coordinator learns the sum of the sites' (quantized, clipped) updates and nothing
else about any one of them: Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning" (CCS 2017), with the sparse neighbourhood graph of
Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead" (CCS 2020,
"SecAgg+").

Threat model
    * The coordinator is honest but curious: it follows the protocol and tries to learn
      from what it sees. It sees public keys, ciphertexts it cannot open, the masked
      vectors (each uniform in Z_(2^bits) to it), signatures, the unmasked sum of the
      survivors' inputs, and shares from which it rebuilds only the masks it must remove.
    * Sites are authenticated: each registers a long-term Ed25519 verify key up front;
      key advertisements and the survivor set are signed, so the coordinator can neither
      impersonate a site in the key exchange nor claim a live site dropped to unmask it
      (the consistency check, Bonawitz et al. round 3).
    * Up to ``t - 1`` parties may collude (per neighbourhood in SecAgg+): together they
      hold fewer than ``t`` shares of any secret, which reveal nothing (Shamir).
    * Dropouts are tolerated as long as ``t`` parties remain wherever shares are needed;
      otherwise every party aborts and releases nothing more.

Modules: :mod:`~.field` (Z_(2^bits), the share field), :mod:`~.shamir`, :mod:`~.crypto`
(X25519, HKDF, AES-GCM, Ed25519, AES-CTR PRG), :mod:`~.quantize` (fixed point and its
error bound), :mod:`~.graph` (Harary graphs and their sizing), :mod:`~.config`,
:mod:`~.messages`, :mod:`~.client` (site stages), :mod:`~.server` (coordinator stages),
:mod:`~.simulate` (one session in memory), :mod:`~.errors`.

An engine: quantizes with :class:`Quantizer`, builds a :class:`SessionConfig` (graph from
:func:`plan_graph` and :func:`harary_graph`), calls :func:`start`, then relays messages,
calling :func:`site_step` at each site and :func:`coordinator_step` at each deadline
until :class:`Finished`; :meth:`Quantizer.decode` turns the total back into floats.
:class:`Simulation` and :func:`run_session` do exactly this in one process.
"""

from medsilo.secagg.client import SiteInit, SiteState, site_step
from medsilo.secagg.config import SessionConfig
from medsilo.secagg.crypto import ed25519_keypair
from medsilo.secagg.errors import (
    AbortError,
    ParameterError,
    ProtocolError,
    SecAggError,
    Violation,
)
from medsilo.secagg.graph import Graph, GraphPlan, complete_graph, harary_graph, plan_graph
from medsilo.secagg.messages import Stage, ToCoordinator, ToSite, from_dict, to_dict
from medsilo.secagg.quantize import Quantizer, choose_scale
from medsilo.secagg.server import CoordinatorState, Finished, coordinator_step, start
from medsilo.secagg.simulate import Aborted, Simulation, Summed, run_session

__all__ = [
    "AbortError",
    "Aborted",
    "CoordinatorState",
    "Finished",
    "Graph",
    "GraphPlan",
    "ParameterError",
    "ProtocolError",
    "Quantizer",
    "SecAggError",
    "SessionConfig",
    "Simulation",
    "SiteInit",
    "SiteState",
    "Stage",
    "Summed",
    "ToCoordinator",
    "ToSite",
    "Violation",
    "choose_scale",
    "complete_graph",
    "coordinator_step",
    "ed25519_keypair",
    "from_dict",
    "harary_graph",
    "plan_graph",
    "run_session",
    "site_step",
    "start",
    "to_dict",
]
