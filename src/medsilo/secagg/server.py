"""The coordinator's side of secure aggregation (Bonawitz et al. 2017, Fig. 4, "Server";
SecAgg+ neighbourhoods of Bell et al. 2020), as pure stage functions.

:func:`start` opens a session; then each stage is ``(state, inbox) -> (state, outbox)``
where the inbox holds the messages that arrived before the stage's deadline (a site
whose message is missing has dropped out) and the outbox maps each live site to the
message it gets next. :func:`coordinator_step` picks the stage from the state's type.

* :class:`CollectingKeys` + AdvertiseKeys (U_1) -> KeyDirectory (round 0)
* :class:`CollectingShares` + ShareKeys (U_2) -> ShareDelivery (round 1)
* :class:`CollectingInputs` + MaskedInput (U_3) -> ConsistencyRequest (round 2)
* :class:`CollectingSignatures` + ConsistencySignature (U_4) -> UnmaskRequest (round 3)
* :class:`CollectingUnmasking` + UnmaskShares (U_5) -> :class:`Finished` (round 4)

The coordinator sees public keys, ciphertexts it cannot open, masked vectors (uniform
in Z_(2^bits) to it), signatures, and ``t`` shares of ``b_v`` for each survivor and of
``s_u^SK`` for each dropped site with surviving neighbours: enough to remove the masks
from the sum of U_3's inputs, and nothing else. A rejected message raises
:class:`~medsilo.secagg.errors.ProtocolError` (the engine may drop it and retry the
stage: states are never modified); fewer than ``t`` live parties anywhere they are
needed raises :class:`~medsilo.secagg.errors.AbortError` before anything is asked of
the sites.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeAlias, TypeVar

import numpy as np
from numpy.typing import NDArray

from medsilo.secagg import crypto, shamir
from medsilo.secagg.config import SessionConfig
from medsilo.secagg.crypto import Purpose
from medsilo.secagg.errors import AbortError, ParameterError, ProtocolError, Violation
from medsilo.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShare,
    KeyDirectory,
    MaskedInput,
    Setup,
    ShareDelivery,
    ShareKeys,
    Stage,
    ToCoordinator,
    ToSite,
    UnmaskRequest,
    UnmaskShares,
    advertisement_transcript,
    survivors_transcript,
)


@dataclass(frozen=True)
class CoordinatorContext:
    """The session and the registered Ed25519 verify keys of its sites."""

    config: SessionConfig
    verify_keys: Mapping[str, bytes]


@dataclass(frozen=True)
class CollectingKeys:
    """Session opened; collects :class:`AdvertiseKeys` (U_1)."""

    context: CoordinatorContext
    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS


@dataclass(frozen=True)
class CollectingShares:
    """Collects :class:`ShareKeys` (U_2)."""

    context: CoordinatorContext
    keys: Mapping[str, AdvertiseKeys]
    """U_1 and the keys each advertised."""
    stage: ClassVar[Stage] = Stage.SHARE_KEYS


@dataclass(frozen=True)
class CollectingInputs:
    """Collects :class:`MaskedInput` (U_3)."""

    context: CoordinatorContext
    keys: Mapping[str, AdvertiseKeys]
    shared: frozenset[str]
    """U_2: the sites whose encrypted shares were delivered."""
    stage: ClassVar[Stage] = Stage.MASKED_INPUT_COLLECTION


@dataclass(frozen=True, eq=False)
class CollectingSignatures:
    """Collects :class:`ConsistencySignature` of U_3 (U_4)."""

    context: CoordinatorContext
    keys: Mapping[str, AdvertiseKeys]
    shared: frozenset[str]
    masked: Mapping[str, NDArray[np.uint64]]
    """U_3 and each survivor's masked input."""
    stage: ClassVar[Stage] = Stage.CONSISTENCY_CHECK


@dataclass(frozen=True, eq=False)
class CollectingUnmasking:
    """Collects :class:`UnmaskShares` (U_5)."""

    context: CoordinatorContext
    keys: Mapping[str, AdvertiseKeys]
    shared: frozenset[str]
    masked: Mapping[str, NDArray[np.uint64]]
    requests: Mapping[str, UnmaskRequest]
    """U_4 and what each signer was asked to reveal."""
    stage: ClassVar[Stage] = Stage.UNMASKING


@dataclass(frozen=True, eq=False)
class Finished:
    """The sum of the survivors' (U_3's) inputs, in Z_(2^bits)."""

    total: NDArray[np.uint64]
    survivors: tuple[str, ...]


CoordinatorState: TypeAlias = (
    CollectingKeys
    | CollectingShares
    | CollectingInputs
    | CollectingSignatures
    | CollectingUnmasking
    | Finished
)
M = TypeVar("M", AdvertiseKeys, ShareKeys, MaskedInput, ConsistencySignature, UnmaskShares)


def start(
    config: SessionConfig, verify_keys: Mapping[str, bytes]
) -> tuple[CollectingKeys, dict[str, Setup]]:
    """Open a session: every site gets the configuration."""
    unregistered = sorted(set(config.sites) - set(verify_keys))
    if unregistered:
        raise ParameterError("verify_keys", "must hold a key for every session site", unregistered)
    setup = Setup(config)
    return CollectingKeys(CoordinatorContext(config, verify_keys)), dict.fromkeys(
        config.sites, setup
    )


def coordinator_step(
    state: CoordinatorState, inbox: Sequence[ToCoordinator]
) -> tuple[CoordinatorState, dict[str, ToSite]]:
    """Close the stage ``state`` is in with the messages that arrived."""
    if isinstance(state, Finished):
        names = sorted({type(message).__name__ for message in inbox}) or ["an empty inbox"]
        raise ProtocolError(", ".join(names), Violation.OUT_OF_ORDER, "the session is finished")
    context, stage = state.context, state.stage
    if isinstance(state, CollectingKeys):
        everyone = frozenset(context.config.sites)
        return collect_keys(state, _collect(context, stage, inbox, AdvertiseKeys, everyone))
    if isinstance(state, CollectingShares):
        advertised = frozenset(state.keys)
        return route_shares(state, _collect(context, stage, inbox, ShareKeys, advertised))
    if isinstance(state, CollectingInputs):
        return collect_inputs(state, _collect(context, stage, inbox, MaskedInput, state.shared))
    if isinstance(state, CollectingSignatures):
        survivors = frozenset(state.masked)
        signed = _collect(context, stage, inbox, ConsistencySignature, survivors)
        return collect_signatures(state, signed)
    answers = _collect(context, stage, inbox, UnmaskShares, frozenset(state.requests))
    return unmask_sum(state, answers)


def _collect(
    context: CoordinatorContext,
    stage: Stage,
    inbox: Sequence[ToCoordinator],
    kind: type[M],
    eligible: frozenset[str],
) -> dict[str, M]:
    """The inbox by sender, after the checks every stage shares; ``eligible`` are the
    sites that completed the previous stage."""
    config = context.config
    received: dict[str, M] = {}
    for message in inbox:
        name, sender = type(message).__name__, message.site
        if not isinstance(message, kind):
            raise ProtocolError(
                name, Violation.OUT_OF_ORDER, f"stage {stage} expects {kind.__name__}", sender
            )
        if message.session != config.digest:
            raise ProtocolError(name, Violation.REPLAY, "bound to another session", sender)
        if sender not in config.sites:
            raise ProtocolError(name, Violation.UNKNOWN_SENDER, "not a session site", sender)
        if sender not in eligible:
            raise ProtocolError(
                name, Violation.OUT_OF_ORDER, "sender did not complete the previous stage", sender
            )
        if sender in received:
            raise ProtocolError(name, Violation.DUPLICATE, "sent twice", sender)
        received[sender] = message
    return received


def _require_quorum(
    config: SessionConfig, stage: Stage, alive: frozenset[str], owners: frozenset[str], what: str
) -> None:
    shortfall = config.shortfall(alive, sorted(owners))
    if shortfall is not None:
        raise AbortError(stage, f"{what}: {shortfall}")


def collect_keys(
    state: CollectingKeys, received: Mapping[str, AdvertiseKeys]
) -> tuple[CollectingShares, dict[str, ToSite]]:
    """Round 0: verify each advertisement's signature; send each site its neighbours' keys."""
    context = state.context
    config = context.config
    for site, keys in received.items():
        transcript = advertisement_transcript(config.digest, site, keys.cipher_key, keys.mask_key)
        if not crypto.verify(context.verify_keys[site], keys.signature, transcript):
            raise ProtocolError("AdvertiseKeys", Violation.BAD_SIGNATURE, "key advertisement", site)
    alive = frozenset(received)
    _require_quorum(config, state.stage, alive, alive, "U_1 (keys advertised)")
    outbox: dict[str, ToSite] = {
        site: KeyDirectory(
            config.digest,
            tuple(received[v] for v in sorted(config.graph.neighbours(site) & alive)),
        )
        for site in sorted(alive)
    }
    return CollectingShares(context, dict(received)), outbox


def route_shares(
    state: CollectingShares, received: Mapping[str, ShareKeys]
) -> tuple[CollectingInputs, dict[str, ToSite]]:
    """Round 1: check each site encrypted one share pair to each neighbour in U_1 and
    deliver the shares of U_2 to their receivers in U_2."""
    config = state.context.config
    advertised = frozenset(state.keys)
    inboxes: dict[str, list[EncryptedShare]] = {}
    for site, message in received.items():
        receivers = [share.receiver for share in message.shares]
        expected = config.graph.neighbours(site) & advertised
        if any(share.sender != site for share in message.shares):
            raise ProtocolError("ShareKeys", Violation.INCONSISTENT, "a share of another", site)
        if len(set(receivers)) != len(receivers):
            raise ProtocolError("ShareKeys", Violation.DUPLICATE, "a receiver twice", site)
        if set(receivers) != expected:
            raise ProtocolError(
                "ShareKeys",
                Violation.INCONSISTENT,
                f"must address exactly its neighbours in U_1 {sorted(expected)}",
                site,
            )
        for share in message.shares:
            inboxes.setdefault(share.receiver, []).append(share)
    shared = frozenset(received)
    _require_quorum(config, state.stage, shared, shared, "U_2 (shares sent)")
    outbox: dict[str, ToSite] = {
        site: ShareDelivery(config.digest, tuple(sorted(inboxes.get(site, []), key=_sender)))
        for site in sorted(shared)
    }
    return CollectingInputs(state.context, state.keys, shared), outbox


def _sender(share: EncryptedShare) -> str:
    return share.sender


def collect_inputs(
    state: CollectingInputs, received: Mapping[str, MaskedInput]
) -> tuple[CollectingSignatures, dict[str, ToSite]]:
    """Round 2: keep the masked inputs; U_3 must reach ``t`` in every survivor's
    neighbourhood and be connected; ask U_3 to sign U_3."""
    config = state.context.config
    for site, message in received.items():
        flaw = config.ring.flaw(message.vector, config.dim)
        if flaw is not None:
            raise ProtocolError("MaskedInput", Violation.MALFORMED, flaw, site)
    survivors = frozenset(received)
    _require_quorum(config, state.stage, survivors, survivors, "U_3 (inputs sent)")
    if not config.graph.is_connected(survivors):
        raise AbortError(
            state.stage, "U_3 is disconnected in the graph: its parts' sums would leak"
        )
    masked = {site: message.vector for site, message in received.items()}
    request = ConsistencyRequest(config.digest, tuple(sorted(survivors)))
    outbox: dict[str, ToSite] = dict.fromkeys(sorted(survivors), request)
    return CollectingSignatures(state.context, state.keys, state.shared, masked), outbox


def _dropped_to_unmask(state: CollectingSignatures | CollectingUnmasking) -> frozenset[str]:
    """Sites of U_2 \\ U_3 whose pairwise masks some survivor added."""
    graph, survivors = state.context.config.graph, frozenset(state.masked)
    return frozenset(
        site for site in state.shared - survivors if graph.neighbours(site) & survivors
    )


def collect_signatures(
    state: CollectingSignatures, received: Mapping[str, ConsistencySignature]
) -> tuple[CollectingUnmasking, dict[str, ToSite]]:
    """Round 3: verify the signatures of U_3; ask each signer (U_4) for b-shares of its
    surviving neighbourhood and s^SK-shares of its dropped neighbours."""
    context = state.context
    config = context.config
    survivors = frozenset(state.masked)
    transcript = survivors_transcript(config.digest, tuple(sorted(survivors)))
    for site, message in received.items():
        if not crypto.verify(context.verify_keys[site], message.signature, transcript):
            raise ProtocolError(
                "ConsistencySignature", Violation.BAD_SIGNATURE, "signature of U_3", site
            )
    signers = frozenset(received)
    dropped = _dropped_to_unmask(state)
    _require_quorum(config, state.stage, signers, survivors | dropped, "U_4 (signed)")
    # Each site checks the signatures of its own neighbourhood only (Bell et al., CCS
    # 2020, the consistency check of SecAgg+): the complete graph sends all of them.
    requests = {
        site: UnmaskRequest(
            config.digest,
            tuple(received[v] for v in sorted(config.graph.neighbourhood(site) & signers)),
            tuple(sorted(config.graph.neighbourhood(site) & survivors)),
            tuple(sorted(config.graph.neighbours(site) & dropped)),
        )
        for site in sorted(signers)
    }
    unmasking = CollectingUnmasking(context, state.keys, state.shared, state.masked, requests)
    outbox: dict[str, ToSite] = dict(requests)
    return unmasking, outbox


def unmask_sum(
    state: CollectingUnmasking, received: Mapping[str, UnmaskShares]
) -> tuple[Finished, dict[str, ToSite]]:
    """Round 4: reconstruct b_v of every survivor and s_u^SK of every dropped site that
    needs it from ``t`` shares each, and remove all masks from the survivors' sum."""
    config = state.context.config
    for site, message in received.items():
        request = state.requests[site]
        answered = (
            tuple(share.owner for share in message.self_mask_shares),
            tuple(share.owner for share in message.mask_key_shares),
        )
        if answered != (request.self_mask_of, request.mask_key_of):
            raise ProtocolError(
                "UnmaskShares", Violation.INCONSISTENT, "does not answer its request", site
            )
    survivors = frozenset(state.masked)
    dropped = _dropped_to_unmask(state)
    responders = frozenset(received)
    _require_quorum(config, state.stage, responders, survivors | dropped, "U_5 (shares sent)")
    self_mask_shares: dict[str, dict[int, int]] = {}
    mask_key_shares: dict[str, dict[int, int]] = {}
    for site, message in sorted(received.items()):
        for share in message.self_mask_shares:
            self_mask_shares.setdefault(share.owner, {})[config.point(site)] = share.value
        for share in message.mask_key_shares:
            mask_key_shares.setdefault(share.owner, {})[config.point(site)] = share.value
    ring = config.ring
    total = np.zeros(config.dim, dtype=np.uint64)
    for site in sorted(survivors):
        seed = _reconstruct(config, site, self_mask_shares[site])
        total += state.masked[site]
        total -= crypto.prg(crypto.derive(seed, config.digest, Purpose.SELF_MASK), config.dim, ring)
    for site in sorted(dropped):
        mask_key = _reconstruct(config, site, mask_key_shares[site])
        if crypto.x25519_public(mask_key) != state.keys[site].mask_key:
            raise ProtocolError(
                "UnmaskShares", Violation.INCONSISTENT, f"shares of {site!r}'s mask key are wrong"
            )
        publics = {v: state.keys[v].mask_key for v in config.graph.neighbours(site) & survivors}
        pair_keys = crypto.agree(mask_key, publics, config.digest, Purpose.PAIRWISE_MASK)
        for survivor, pair_key in sorted(pair_keys.items()):
            mask = crypto.prg(pair_key, config.dim, ring)
            if config.point(survivor) < config.point(site):
                total -= mask
            else:
                total += mask
    return Finished(ring.reduce(total), tuple(sorted(survivors))), {}


def _reconstruct(config: SessionConfig, owner: str, shares: Mapping[int, int]) -> bytes:
    """The 256-bit secret from the first ``t`` shares (by evaluation point)."""
    chosen = {point: shares[point] for point in sorted(shares)[: config.threshold]}
    secret = shamir.reconstruct(chosen)
    if secret >= 1 << (8 * crypto.KEY_BYTES):
        raise ProtocolError(
            "UnmaskShares", Violation.INCONSISTENT, f"shares of {owner!r} give no 256-bit secret"
        )
    return secret.to_bytes(crypto.KEY_BYTES, "big")
