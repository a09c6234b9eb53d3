"""A site's side of secure aggregation (Bonawitz et al. 2017, Fig. 4, "User"; SecAgg+
neighbourhoods of Bell et al. 2020), as pure stage functions.

Each stage is ``(state, inbox) -> (state, outbox)`` over frozen dataclasses: the inbox
is the one message the coordinator sent for the stage, the outbox the one message the
site answers. :func:`site_step` picks the stage from the state's type. A message that
does not fit (wrong stage, other session, unknown or duplicate sender, bad signature or
ciphertext) raises :class:`~medsilo.secagg.errors.ProtocolError` naming the message and
the rule; fewer than ``t`` live parties raises :class:`~medsilo.secagg.errors.AbortError`.
Either way the input state is untouched and nothing is released.

* :class:`SiteInit` + :class:`Setup` -> :class:`AdvertiseKeys` (round 0, advertise keys)
* :class:`SiteAdvertised` + :class:`KeyDirectory` -> :class:`ShareKeys` (round 1)
* :class:`SiteSharedKeys` + :class:`ShareDelivery` -> :class:`MaskedInput` (round 2)
* :class:`SiteMasked` + :class:`ConsistencyRequest` -> :class:`ConsistencySignature`
  (round 3, consistency check)
* :class:`SiteSigned` + :class:`UnmaskRequest` -> :class:`UnmaskShares` (round 4)
* :class:`SiteDone`: every message is out of order.

Secret state (X25519 private keys, self-mask seed, shares held) lives in these states
and leaves the site only as an encrypted share or, in round 4, as the one kind of share
each owner's fate allows: of the self-mask seed ``b_v`` if ``v`` signed as a survivor,
of the mask key ``s_v^SK`` if it dropped, never both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, TypeAlias, TypeVar

import numpy as np
from numpy.typing import NDArray

from medsilo.secagg import crypto, shamir
from medsilo.secagg.config import SessionConfig
from medsilo.secagg.crypto import Purpose
from medsilo.secagg.errors import AbortError, ParameterError, ProtocolError, Violation
from medsilo.secagg.field import SHAMIR_PRIME, SHARE_BYTES, Ring
from medsilo.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShare,
    KeyDirectory,
    MaskedInput,
    RevealedShare,
    Setup,
    ShareDelivery,
    ShareKeys,
    Stage,
    ToCoordinator,
    ToSite,
    UnmaskRequest,
    UnmaskShares,
    advertisement_transcript,
    share_associated_data,
    survivors_transcript,
)


@dataclass(frozen=True)
class ShareBundle:
    """The shares one holder has of one owner: of ``s^SK`` (mask key) and of ``b`` (seed)."""

    mask_key: int
    self_mask: int

    def to_bytes(self) -> bytes:
        return self.mask_key.to_bytes(SHARE_BYTES, "big") + self.self_mask.to_bytes(
            SHARE_BYTES, "big"
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ShareBundle | None:
        """The bundle in ``data``, or None unless it is two field elements."""
        halves = [int.from_bytes(data[i : i + SHARE_BYTES], "big") for i in (0, SHARE_BYTES)]
        if len(data) != 2 * SHARE_BYTES or max(halves) >= SHAMIR_PRIME:
            return None
        return cls(*halves)


@dataclass(frozen=True, eq=False)
class SiteInit:
    """A site before the session: its name, long-term Ed25519 signing key, the registered
    verify keys of all sites (site authentication), its modulus bits and its encoded input
    (from :meth:`~medsilo.secagg.quantize.Quantizer.encode`)."""

    site: str
    signing_key: bytes
    verify_keys: Mapping[str, bytes]
    bits: int
    vector: NDArray[np.uint64]
    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS

    def __post_init__(self) -> None:
        if not isinstance(self.signing_key, bytes) or len(self.signing_key) != crypto.KEY_BYTES:
            raise ParameterError(
                "signing_key", "must be a raw 32-byte Ed25519 private key", "<withheld>"
            )
        flaw = Ring(self.bits).flaw(self.vector)
        if flaw is not None:
            raise ParameterError("vector", f"must be a vector of Z_(2^{self.bits})", flaw)


@dataclass(frozen=True, eq=False)
class SiteContext:
    """What a site fixes when it joins a session: config, input and its fresh secrets."""

    site: str
    signing_key: bytes
    verify_keys: Mapping[str, bytes]
    config: SessionConfig
    vector: NDArray[np.uint64]
    cipher_key: bytes
    """c_u^SK: X25519 private key for the channels that carry shares."""
    mask_key: bytes
    """s_u^SK: X25519 private key of the pairwise masks; shared t-of-(k+1)."""
    self_mask_seed: bytes
    """b_u: 256-bit seed of the self mask; shared t-of-(k+1)."""

    @property
    def session(self) -> bytes:
        return self.config.digest


@dataclass(frozen=True, eq=False)
class SiteAdvertised:
    """Keys advertised; awaits the neighbours' keys (:class:`KeyDirectory`)."""

    context: SiteContext
    stage: ClassVar[Stage] = Stage.SHARE_KEYS


@dataclass(frozen=True, eq=False)
class SiteSharedKeys:
    """Shares sent; awaits the shares addressed to it (:class:`ShareDelivery`)."""

    context: SiteContext
    channel_keys: Mapping[str, bytes]
    """Per neighbour in U_1: the AES-GCM key of the channel carrying shares."""
    pair_keys: Mapping[str, bytes]
    """Per neighbour in U_1: the PRG key of the pairwise mask (from s_u^SK and s_v^PK)."""
    own_shares: ShareBundle
    stage: ClassVar[Stage] = Stage.MASKED_INPUT_COLLECTION


@dataclass(frozen=True, eq=False)
class SiteMasked:
    """Masked input sent; awaits the survivor set (:class:`ConsistencyRequest`)."""

    context: SiteContext
    held: Mapping[str, ShareBundle]
    """Shares held, per owner: this site and its neighbours in U_2."""
    stage: ClassVar[Stage] = Stage.CONSISTENCY_CHECK


@dataclass(frozen=True, eq=False)
class SiteSigned:
    """Survivor set signed; awaits the :class:`UnmaskRequest`."""

    context: SiteContext
    held: Mapping[str, ShareBundle]
    survivors: tuple[str, ...]
    """U_3, as signed: the only survivor set this site will ever unmask for."""
    stage: ClassVar[Stage] = Stage.UNMASKING


@dataclass(frozen=True, eq=False)
class SiteDone:
    """Shares revealed: the session is over for this site."""

    context: SiteContext


SiteState: TypeAlias = (
    SiteInit | SiteAdvertised | SiteSharedKeys | SiteMasked | SiteSigned | SiteDone
)
M = TypeVar("M", bound=ToSite)


def site_step(state: SiteState, inbox: ToSite) -> tuple[SiteState, ToCoordinator]:
    """Run the stage ``state`` awaits on ``inbox``; any other message is out of order."""
    if isinstance(state, SiteInit):
        return advertise_keys(state, _expect(state.site, state.stage, inbox, Setup))
    if isinstance(state, SiteDone):
        raise ProtocolError(
            type(inbox).__name__,
            Violation.OUT_OF_ORDER,
            f"site {state.context.site!r} has finished this session",
        )
    site = state.context.site
    if isinstance(state, SiteAdvertised):
        return share_keys(state, _expect(site, state.stage, inbox, KeyDirectory))
    if isinstance(state, SiteSharedKeys):
        return mask_input(state, _expect(site, state.stage, inbox, ShareDelivery))
    if isinstance(state, SiteMasked):
        return sign_survivors(state, _expect(site, state.stage, inbox, ConsistencyRequest))
    return unmask(state, _expect(site, state.stage, inbox, UnmaskRequest))


def _expect(site: str, stage: Stage, inbox: ToSite, kind: type[M]) -> M:
    if not isinstance(inbox, kind):
        raise ProtocolError(
            type(inbox).__name__,
            Violation.OUT_OF_ORDER,
            f"site {site!r} is at stage {stage} and expects {kind.__name__}",
        )
    return inbox


def _check_session(
    context: SiteContext, message: object, session: bytes, sender: str | None
) -> None:
    if session != context.session:
        raise ProtocolError(
            type(message).__name__, Violation.REPLAY, "bound to another session", sender
        )


def _require_quorum(context: SiteContext, stage: Stage, alive: set[str], what: str) -> None:
    shortfall = context.config.shortfall(alive, [context.site])
    if shortfall is not None:
        raise AbortError(stage, f"site {context.site!r} sees {what}: {shortfall}")


def advertise_keys(state: SiteInit, inbox: Setup) -> tuple[SiteAdvertised, AdvertiseKeys]:
    """Round 0: check the session against this site, make fresh keys, sign the public ones."""
    config = inbox.config
    if config.bits != state.bits:
        raise ParameterError(
            "bits",
            f"of the session (modulus 2^{config.bits}) must equal this site's"
            f" (modulus 2^{state.bits})",
            config.bits,
        )
    if config.dim != state.vector.shape[0]:
        raise ParameterError(
            "dim",
            f"of the session must equal this site's vector length {state.vector.shape[0]}",
            config.dim,
        )
    if state.site not in config.sites:
        raise ProtocolError(
            "Setup", Violation.INCONSISTENT, f"{state.site!r} is not a session site"
        )
    unregistered = sorted(set(config.sites) - set(state.verify_keys))
    if unregistered:
        raise ProtocolError(
            "Setup", Violation.UNKNOWN_SENDER, f"sites without a registered key: {unregistered}"
        )
    cipher_key, cipher_public = crypto.x25519_keypair()
    mask_key, mask_public = crypto.x25519_keypair()
    context = SiteContext(
        state.site,
        state.signing_key,
        state.verify_keys,
        config,
        state.vector,
        cipher_key,
        mask_key,
        crypto.random_seed(),
    )
    transcript = advertisement_transcript(config.digest, state.site, cipher_public, mask_public)
    signature = crypto.sign(state.signing_key, transcript)
    message = AdvertiseKeys(config.digest, state.site, cipher_public, mask_public, signature)
    return SiteAdvertised(context), message


def share_keys(state: SiteAdvertised, inbox: KeyDirectory) -> tuple[SiteSharedKeys, ShareKeys]:
    """Round 1: verify neighbours' signed keys, share s_u^SK and b_u t-of-(holders), and
    encrypt each holder's pair of shares to it."""
    context = state.context
    me, config = context.site, context.config
    _check_session(context, inbox, inbox.session, None)
    neighbours = config.graph.neighbours(me)
    peers: dict[str, AdvertiseKeys] = {}
    for keys in inbox.keys:
        _check_session(context, inbox, keys.session, keys.site)
        if keys.site not in neighbours:
            raise ProtocolError(
                "KeyDirectory", Violation.UNKNOWN_SENDER, f"not a neighbour of {me!r}", keys.site
            )
        if keys.site in peers:
            raise ProtocolError("KeyDirectory", Violation.DUPLICATE, "keys listed twice", keys.site)
        transcript = advertisement_transcript(
            context.session, keys.site, keys.cipher_key, keys.mask_key
        )
        if not crypto.verify(context.verify_keys[keys.site], keys.signature, transcript):
            raise ProtocolError(
                "KeyDirectory", Violation.BAD_SIGNATURE, "key advertisement", keys.site
            )
        peers[keys.site] = keys
    holders = sorted({me, *peers})
    _require_quorum(context, Stage.SHARE_KEYS, set(holders), "neighbours' keys")
    try:
        channel_keys = crypto.agree(
            context.cipher_key,
            {peer: keys.cipher_key for peer, keys in peers.items()},
            context.session,
            Purpose.SHARE_ENCRYPTION,
        )
        pair_keys = crypto.agree(
            context.mask_key,
            {peer: keys.mask_key for peer, keys in peers.items()},
            context.session,
            Purpose.PAIRWISE_MASK,
        )
    except ParameterError as error:
        raise ProtocolError(
            "KeyDirectory", Violation.MALFORMED, error.rule, str(error.value)
        ) from error
    points = [config.point(holder) for holder in holders]
    mask_shares = shamir.split(int.from_bytes(context.mask_key, "big"), config.threshold, points)
    seed_shares = shamir.split(
        int.from_bytes(context.self_mask_seed, "big"), config.threshold, points
    )

    def bundle(holder: str) -> ShareBundle:
        point = config.point(holder)
        return ShareBundle(mask_shares[point], seed_shares[point])

    encrypted = tuple(
        EncryptedShare(
            me,
            peer,
            crypto.encrypt(
                channel_keys[peer],
                bundle(peer).to_bytes(),
                share_associated_data(context.session, me, peer),
            ),
        )
        for peer in sorted(peers)
    )
    state_out = SiteSharedKeys(context, channel_keys, pair_keys, bundle(me))
    return state_out, ShareKeys(context.session, me, encrypted)


def mask_input(state: SiteSharedKeys, inbox: ShareDelivery) -> tuple[SiteMasked, MaskedInput]:
    """Round 2: decrypt the shares neighbours in U_2 sent, then mask the input with the
    self mask PRG(b_u) and, per such neighbour v, +-PRG(s_uv) (+ if u sorts before v)."""
    context = state.context
    me, config = context.site, context.config
    _check_session(context, inbox, inbox.session, None)
    held = {me: state.own_shares}
    for share in inbox.shares:
        held[share.sender] = _open_share(state, share, held)
    _require_quorum(context, Stage.MASKED_INPUT_COLLECTION, set(held), "shares delivered")
    ring = config.ring
    vector = context.vector.copy()
    vector += crypto.prg(
        crypto.derive(context.self_mask_seed, context.session, Purpose.SELF_MASK),
        config.dim,
        ring,
    )
    for peer in sorted(set(held) - {me}):
        mask = crypto.prg(state.pair_keys[peer], config.dim, ring)
        if config.point(me) < config.point(peer):
            vector += mask
        else:
            vector -= mask
    return SiteMasked(context, held), MaskedInput(context.session, me, ring.reduce(vector))


def _open_share(
    state: SiteSharedKeys, share: EncryptedShare, held: Mapping[str, object]
) -> ShareBundle:
    context = state.context
    me, sender = context.site, share.sender
    if share.receiver != me:
        raise ProtocolError(
            "ShareDelivery", Violation.INCONSISTENT, f"addressed to {share.receiver!r}", sender
        )
    if sender not in state.channel_keys:
        raise ProtocolError(
            "ShareDelivery", Violation.UNKNOWN_SENDER, "not a neighbour whose keys arrived", sender
        )
    if sender in held:
        raise ProtocolError("ShareDelivery", Violation.DUPLICATE, "shares sent twice", sender)
    associated = share_associated_data(context.session, sender, me)
    plaintext = crypto.decrypt(state.channel_keys[sender], share.ciphertext, associated)
    if plaintext is None:
        raise ProtocolError(
            "ShareDelivery", Violation.BAD_CIPHERTEXT, "AES-GCM tag does not verify", sender
        )
    bundle = ShareBundle.from_bytes(plaintext)
    if bundle is None:
        raise ProtocolError(
            "ShareDelivery", Violation.MALFORMED, "plaintext is not two field elements", sender
        )
    return bundle


def sign_survivors(
    state: SiteMasked, inbox: ConsistencyRequest
) -> tuple[SiteSigned, ConsistencySignature]:
    """Round 3 (consistency check): sign the survivor set U_3 after checking it against
    what this site saw; it will reveal shares for no other survivor set."""
    context = state.context
    me, config = context.site, context.config
    _check_session(context, inbox, inbox.session, None)
    survivors = inbox.survivors
    if len(set(survivors)) != len(survivors):
        raise ProtocolError("ConsistencyRequest", Violation.DUPLICATE, "a survivor listed twice")
    if list(survivors) != sorted(survivors):
        raise ProtocolError("ConsistencyRequest", Violation.MALFORMED, "survivors not sorted")
    unknown = sorted(set(survivors) - set(config.sites))
    if unknown:
        raise ProtocolError(
            "ConsistencyRequest", Violation.UNKNOWN_SENDER, f"not session sites: {unknown}"
        )
    if me not in survivors:
        raise ProtocolError(
            "ConsistencyRequest", Violation.INCONSISTENT, f"omits {me!r}, which sent its input"
        )
    unseen = sorted((set(survivors) & config.graph.neighbours(me)) - set(state.held))
    if unseen:
        raise ProtocolError(
            "ConsistencyRequest",
            Violation.INCONSISTENT,
            f"neighbours {unseen} survive but never delivered shares (not in U_2)",
        )
    _require_quorum(context, Stage.CONSISTENCY_CHECK, set(survivors), "survivors")
    signature = crypto.sign(context.signing_key, survivors_transcript(context.session, survivors))
    return (
        SiteSigned(context, state.held, survivors),
        ConsistencySignature(context.session, me, signature),
    )


def unmask(state: SiteSigned, inbox: UnmaskRequest) -> tuple[SiteDone, UnmaskShares]:
    """Round 4: check t signatures of the very U_3 this site signed, from its own
    neighbourhood (the sites whose shares it holds and that hold its own; Bell et al.,
    CCS 2020: in SecAgg+ both the consistency check and the threshold are per
    neighbourhood, so a site verifies ``degree + 1`` signatures, not n), and that U_3 is
    connected; then reveal b-shares of survivors and s^SK-shares of dropped sites."""
    context = state.context
    config, survivors = context.config, state.survivors
    _check_session(context, inbox, inbox.session, None)
    transcript = survivors_transcript(context.session, survivors)
    neighbourhood = config.graph.neighbourhood(context.site)
    signers: set[str] = set()
    for signature in inbox.signatures:
        signer = signature.site
        _check_session(context, inbox, signature.session, signer)
        if signer not in survivors:
            raise ProtocolError(
                "UnmaskRequest", Violation.INCONSISTENT, "signer not in U_3", signer
            )
        if signer not in neighbourhood:
            raise ProtocolError(
                "UnmaskRequest", Violation.INCONSISTENT, "signer outside the neighbourhood", signer
            )
        if signer in signers:
            raise ProtocolError("UnmaskRequest", Violation.DUPLICATE, "signed twice", signer)
        if not crypto.verify(context.verify_keys[signer], signature.signature, transcript):
            raise ProtocolError(
                "UnmaskRequest", Violation.BAD_SIGNATURE, "signature of U_3", signer
            )
        signers.add(signer)
    if len(signers) < config.threshold:
        raise AbortError(
            Stage.UNMASKING, f"{len(signers)} signatures of U_3 < threshold t = {config.threshold}"
        )
    if not config.graph.is_connected(set(survivors)):
        raise AbortError(
            Stage.UNMASKING, "U_3 is disconnected in the graph: its parts' sums would leak"
        )
    _check_reveal(state, inbox)
    self_mask = tuple(RevealedShare(v, state.held[v].self_mask) for v in inbox.self_mask_of)
    mask_key = tuple(RevealedShare(v, state.held[v].mask_key) for v in inbox.mask_key_of)
    return SiteDone(context), UnmaskShares(context.session, context.site, self_mask, mask_key)


def _check_reveal(state: SiteSigned, inbox: UnmaskRequest) -> None:
    """b-shares only of signed survivors, s^SK-shares only of the others; held ones only."""
    survivors = set(state.survivors)
    for name, owners, allowed in (
        ("self_mask_of", inbox.self_mask_of, True),
        ("mask_key_of", inbox.mask_key_of, False),
    ):
        if len(set(owners)) != len(owners):
            raise ProtocolError("UnmaskRequest", Violation.DUPLICATE, f"{name} lists a site twice")
        for owner in owners:
            if (owner in survivors) != allowed:
                fate = "a signed survivor" if owner in survivors else "not a signed survivor"
                raise ProtocolError(
                    "UnmaskRequest",
                    Violation.BOTH_SHARES,
                    f"{name} asks for {owner!r}, {fate}: with the other kind of share"
                    " its input would be unmasked",
                )
            if owner not in state.held:
                raise ProtocolError(
                    "UnmaskRequest", Violation.INCONSISTENT, f"{name}: no share of {owner!r} held"
                )
