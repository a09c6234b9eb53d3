"""The messages of one session (Bonawitz et al. 2017, Fig. 4), as plain frozen data.

Coordinator -> site: :class:`Setup`, :class:`KeyDirectory`, :class:`ShareDelivery`,
:class:`ConsistencyRequest`, :class:`UnmaskRequest`. Site -> coordinator:
:class:`AdvertiseKeys`, :class:`ShareKeys`, :class:`MaskedInput`,
:class:`ConsistencySignature`, :class:`UnmaskShares`. Fields are ``str``, ``int``,
``bytes``, tuples of those or of nested messages, and one ``uint64`` numpy vector, so an
engine can carry them; :func:`to_dict` / :func:`from_dict` give a dict form of the same
plain values (with a ``"kind"`` key). Construction checks types and sizes and raises
:class:`~medsilo.secagg.errors.ProtocolError` (``MALFORMED``); whether a message fits
the stage, the session and the sender is checked by the stage that receives it.

Every site -> coordinator message and every signature carries the session digest
(:attr:`~medsilo.secagg.config.SessionConfig.digest`).

>>> signature = ConsistencySignature(session=bytes(32), site="a", signature=bytes(64))
>>> from_dict(to_dict(signature)) == signature
True
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

from medsilo.secagg.config import SessionConfig
from medsilo.secagg.crypto import KEY_BYTES, NONCE_BYTES, SIGNATURE_BYTES, TAG_BYTES, frame
from medsilo.secagg.errors import ParameterError, ProtocolError, Violation
from medsilo.secagg.field import SHAMIR_PRIME, SHARE_BYTES


class Stage(StrEnum):
    """The five stages of a session, in order; each names the message a site sends in it."""

    ADVERTISE_KEYS = "advertise-keys"
    SHARE_KEYS = "share-keys"
    MASKED_INPUT_COLLECTION = "masked-input-collection"
    CONSISTENCY_CHECK = "consistency-check"
    UNMASKING = "unmasking"


DIGEST_BYTES = 32
CIPHERTEXT_BYTES = NONCE_BYTES + 2 * SHARE_BYTES + TAG_BYTES
"""An encrypted pair of shares: nonce, two field elements, GCM tag."""


def _check(message: object, ok: bool, detail: str) -> None:
    if not ok:
        raise ProtocolError(
            type(message).__name__, Violation.MALFORMED, detail, getattr(message, "site", None)
        )


def _check_bytes(message: object, name: str, size: int) -> None:
    value = getattr(message, name)
    _check(message, isinstance(value, bytes) and len(value) == size, f"{name} must be {size} bytes")


def _check_names(message: object, name: str) -> None:
    value = getattr(message, name)
    _check(
        message,
        isinstance(value, tuple) and all(isinstance(v, str) and v for v in value),
        f"{name} must be a tuple of non-empty site names",
    )


def _check_items(message: object, name: str, kind: type) -> None:
    value = getattr(message, name)
    _check(
        message,
        isinstance(value, tuple) and all(isinstance(v, kind) for v in value),
        f"{name} must be a tuple of {kind.__name__}",
    )


def _check_site(message: object, name: str = "site") -> None:
    value = getattr(message, name)
    _check(message, isinstance(value, str) and bool(value), f"{name} must be a non-empty str")


# --- site -> coordinator ----------------------------------------------------------


@dataclass(frozen=True)
class AdvertiseKeys:
    """Round 0: ``site``'s fresh X25519 public keys, signed with its long-term Ed25519 key.

    ``cipher_key`` (c_u^PK) encrypts shares, ``mask_key`` (s_u^PK) seeds pairwise masks.
    """

    session: bytes
    site: str
    cipher_key: bytes
    mask_key: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_site(self)
        _check_bytes(self, "session", DIGEST_BYTES)
        _check_bytes(self, "cipher_key", KEY_BYTES)
        _check_bytes(self, "mask_key", KEY_BYTES)
        _check_bytes(self, "signature", SIGNATURE_BYTES)


@dataclass(frozen=True)
class EncryptedShare:
    """Round 1: ``sender``'s shares of its mask key and self-mask seed for ``receiver``."""

    sender: str
    receiver: str
    ciphertext: bytes

    def __post_init__(self) -> None:
        _check_site(self, "sender")
        _check_site(self, "receiver")
        _check_bytes(self, "ciphertext", CIPHERTEXT_BYTES)


@dataclass(frozen=True)
class ShareKeys:
    """Round 1: one encrypted share pair per neighbour whose keys ``site`` received."""

    session: bytes
    site: str
    shares: tuple[EncryptedShare, ...]

    def __post_init__(self) -> None:
        _check_site(self)
        _check_bytes(self, "session", DIGEST_BYTES)
        _check_items(self, "shares", EncryptedShare)


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Round 2: ``y_u = x_u + PRG(b_u) + sum_v +-PRG(s_uv) mod 2^bits`` (a read-only copy)."""

    session: bytes
    site: str
    vector: NDArray[np.uint64]

    def __post_init__(self) -> None:
        _check_site(self)
        _check_bytes(self, "session", DIGEST_BYTES)
        vector = self.vector
        _check(
            self,
            isinstance(vector, np.ndarray) and vector.dtype == np.uint64 and vector.ndim == 1,
            "vector must be a 1-D uint64 numpy array",
        )
        frozen = vector.copy()
        frozen.flags.writeable = False
        object.__setattr__(self, "vector", frozen)


@dataclass(frozen=True)
class ConsistencySignature:
    """Round 3: ``site``'s signature of the survivor set U_3 it was sent."""

    session: bytes
    site: str
    signature: bytes

    def __post_init__(self) -> None:
        _check_site(self)
        _check_bytes(self, "session", DIGEST_BYTES)
        _check_bytes(self, "signature", SIGNATURE_BYTES)


@dataclass(frozen=True)
class RevealedShare:
    """Round 4: the share (a field element) that the sender holds of ``owner``'s secret."""

    owner: str
    value: int

    def __post_init__(self) -> None:
        _check_site(self, "owner")
        value = self.value
        _check(
            self,
            isinstance(value, int) and not isinstance(value, bool) and 0 <= value < SHAMIR_PRIME,
            "value must be an int in [0, p)",
        )


@dataclass(frozen=True)
class UnmaskShares:
    """Round 4: shares of b_v for survivors v and of s_v^SK for dropped v, never both."""

    session: bytes
    site: str
    self_mask_shares: tuple[RevealedShare, ...]
    mask_key_shares: tuple[RevealedShare, ...]

    def __post_init__(self) -> None:
        _check_site(self)
        _check_bytes(self, "session", DIGEST_BYTES)
        _check_items(self, "self_mask_shares", RevealedShare)
        _check_items(self, "mask_key_shares", RevealedShare)


# --- coordinator -> site ----------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """Opens a session: the configuration every party checks and binds to."""

    config: SessionConfig

    def __post_init__(self) -> None:
        _check(self, isinstance(self.config, SessionConfig), "config must be a SessionConfig")


@dataclass(frozen=True)
class KeyDirectory:
    """Round 1 input: the signed key advertisements of the site's neighbours in U_1."""

    session: bytes
    keys: tuple[AdvertiseKeys, ...]

    def __post_init__(self) -> None:
        _check_bytes(self, "session", DIGEST_BYTES)
        _check_items(self, "keys", AdvertiseKeys)


@dataclass(frozen=True)
class ShareDelivery:
    """Round 2 input: the encrypted shares addressed to the site by its neighbours in U_2."""

    session: bytes
    shares: tuple[EncryptedShare, ...]

    def __post_init__(self) -> None:
        _check_bytes(self, "session", DIGEST_BYTES)
        _check_items(self, "shares", EncryptedShare)


@dataclass(frozen=True)
class ConsistencyRequest:
    """Round 3 input: the survivor set U_3 (sites whose masked input arrived), sorted."""

    session: bytes
    survivors: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_bytes(self, "session", DIGEST_BYTES)
        _check_names(self, "survivors")


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 4 input: U_4's signatures of U_3, and whose shares the site should reveal."""

    session: bytes
    signatures: tuple[ConsistencySignature, ...]
    self_mask_of: tuple[str, ...]
    mask_key_of: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_bytes(self, "session", DIGEST_BYTES)
        _check_items(self, "signatures", ConsistencySignature)
        _check_names(self, "self_mask_of")
        _check_names(self, "mask_key_of")


ToSite: TypeAlias = Setup | KeyDirectory | ShareDelivery | ConsistencyRequest | UnmaskRequest
ToCoordinator: TypeAlias = (
    AdvertiseKeys | ShareKeys | MaskedInput | ConsistencySignature | UnmaskShares
)
Message: TypeAlias = ToSite | ToCoordinator

_KINDS: dict[str, type[Message]] = {
    kind.__name__: kind
    for kind in (
        Setup,
        KeyDirectory,
        ShareDelivery,
        ConsistencyRequest,
        UnmaskRequest,
        AdvertiseKeys,
        ShareKeys,
        MaskedInput,
        ConsistencySignature,
        UnmaskShares,
    )
}


# --- what is signed and authenticated ---------------------------------------------


def advertisement_transcript(
    session: bytes, site: str, cipher_key: bytes, mask_key: bytes
) -> bytes:
    """The bytes an :class:`AdvertiseKeys` signature covers."""
    return frame(b"advertise-keys", session, site.encode(), cipher_key, mask_key)


def survivors_transcript(session: bytes, survivors: tuple[str, ...]) -> bytes:
    """The bytes a :class:`ConsistencySignature` covers: the sorted survivor set U_3."""
    return frame(b"consistency-check", session, *(site.encode() for site in survivors))


def share_associated_data(session: bytes, sender: str, receiver: str) -> bytes:
    """AES-GCM associated data of an :class:`EncryptedShare`: session, sender, receiver."""
    return frame(b"encrypted-share", session, sender.encode(), receiver.encode())


# --- dict form --------------------------------------------------------------------


def to_dict(message: Message) -> dict[str, Any]:
    """``message`` as a dict of plain values: str, int, bytes, lists, dicts, numpy arrays."""
    return {"kind": type(message).__name__, **_plain(message)}


def content_bytes(message: Message, bits: int) -> int:
    """Bytes of ``message``'s content, without framing: byte strings and names at their
    length, integers at 8 bytes, ring vectors at ceil(bits / 8) bytes per element (what
    any encoding must carry at least; an engine's wire format adds its own framing).

    >>> content_bytes(MaskedInput(bytes(32), "a", np.zeros(10, np.uint64)), 32)
    73
    """
    per_element = -(-bits // 8)

    def size(value: Any) -> int:
        if isinstance(value, np.ndarray):
            return int(value.size) * per_element
        if isinstance(value, bytes | bytearray):
            return len(value)
        if isinstance(value, str):
            return len(value.encode())
        if isinstance(value, bool | int | float):
            return 8
        if isinstance(value, Mapping):  # a dataclass's fields: names are framing
            return sum(size(v) for v in value.values())
        if isinstance(value, list | tuple | set | frozenset):
            return sum(size(item) for item in value)
        raise TypeError(f"cannot size a {type(value).__name__} in a secure-aggregation message")

    return size(_plain(message))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def from_dict(data: Mapping[str, Any]) -> Message:
    """The message :func:`to_dict` made; a malformed dict raises ``ProtocolError``."""
    kind = data.get("kind") if isinstance(data, Mapping) else None
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ProtocolError(
            repr(kind), Violation.MALFORMED, f"kind must be one of {sorted(_KINDS)}"
        )
    message: Message = _build(_KINDS[kind], {k: v for k, v in data.items() if k != "kind"}, kind)
    return message


def _build(cls: type[Any], data: Any, kind: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(data, Mapping) or set(data) != names:
        keys = sorted(map(str, data)) if isinstance(data, Mapping) else type(data).__name__
        raise ProtocolError(
            kind, Violation.MALFORMED, f"{cls.__name__} needs keys {sorted(names)}, got {keys}"
        )
    hints = typing.get_type_hints(cls)
    try:
        return cls(**{name: _convert(hints[name], data[name], kind) for name in names})
    except ParameterError as error:
        raise ProtocolError(kind, Violation.MALFORMED, str(error)) from error


def _convert(hint: Any, value: Any, kind: str) -> Any:
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list | tuple):
            raise ProtocolError(kind, Violation.MALFORMED, f"expected a list, got {value!r:.60}")
        return tuple(_convert(typing.get_args(hint)[0], item, kind) for item in value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, kind)
    return value
