"""The cryptographic primitives of Bonawitz et al. (CCS 2017, Sec. 3), from ``cryptography``.

* Key agreement (Sec. 3.2): X25519 (RFC 7748), then HKDF-SHA256 (RFC 5869) with the
  session digest as salt and a purpose label as info, giving a 256-bit key. Every key
  is therefore bound to one session and one use.
* Authenticated encryption of shares (Sec. 3.3): AES-256-GCM with a fresh random
  96-bit nonce; the associated data binds session, sender and receiver.
* Signatures (Sec. 3.5, site authentication): Ed25519 (RFC 8032).
* Pseudorandom generator (Sec. 3.4): AES-256-CTR keyed with the full 256-bit derived
  key (not a short seed into a non-cryptographic RNG, cf. flower#7522). Each key expands
  exactly one stream, so the zero IV is never reused under one key. Every element takes
  8 bytes of keystream and keeps its low ``bits`` bits: since 2^bits divides 2^64 the
  elements are exactly uniform in Z_(2^bits) (given a uniform keystream).

Secret material comes only from ``cryptography`` key generation and :mod:`secrets`.

>>> a_private, a_public = x25519_keypair()
>>> b_private, b_public = x25519_keypair()
>>> agree(a_private, {"b": b_public}, b"session", Purpose.PAIRWISE_MASK)["b"] == agree(
...     b_private, {"a": a_public}, b"session", Purpose.PAIRWISE_MASK)["a"]
True
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from enum import Enum

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import NDArray

from medsilo.secagg.errors import ParameterError
from medsilo.secagg.field import Ring

KEY_BYTES = 32
SIGNATURE_BYTES = 64
NONCE_BYTES = 12
TAG_BYTES = 16


class Purpose(Enum):
    """HKDF ``info`` labels: one per use of a derived key (domain separation)."""

    PAIRWISE_MASK = b"medsilo/secagg/v1/pairwise-mask"
    SELF_MASK = b"medsilo/secagg/v1/self-mask"
    SHARE_ENCRYPTION = b"medsilo/secagg/v1/share-encryption"


def frame(*parts: bytes) -> bytes:
    """An unambiguous concatenation: each part prefixed with its 4-byte length."""
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def random_seed() -> bytes:
    """A fresh 256-bit secret (the self-mask seed b_u of Bonawitz et al.)."""
    return secrets.token_bytes(KEY_BYTES)


def x25519_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw ``(private, public)`` bytes."""
    private = X25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def x25519_public(private: bytes) -> bytes:
    """The raw public key of a raw X25519 private key."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def ed25519_keypair() -> tuple[bytes, bytes]:
    """A fresh Ed25519 signing key pair as raw ``(private, public)`` bytes."""
    private = Ed25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def derive(seed: bytes, session: bytes, purpose: Purpose) -> bytes:
    """HKDF-SHA256(seed, salt=session, info=purpose): a 256-bit key."""
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=session, info=purpose.value).derive(seed)


def agree(
    private: bytes, peer_publics: Mapping[str, bytes], session: bytes, purpose: Purpose
) -> dict[str, bytes]:
    """X25519 then HKDF with each peer: the key both ends of each pair derive.

    Raises :class:`~medsilo.secagg.errors.ParameterError` naming the peer whose public
    key is a low-order point (the X25519 secret would be all zero).
    """
    own = X25519PrivateKey.from_private_bytes(private)
    keys = {}
    for peer, public in peer_publics.items():
        try:
            shared = own.exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError as error:
            raise ParameterError(
                "peer_publics", f"must not be low-order points ({error})", peer
            ) from error
        keys[peer] = derive(shared, session, purpose)
    return keys


def encrypt(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM: ``nonce || ciphertext || tag`` with a fresh random nonce."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def decrypt(key: bytes, ciphertext: bytes, associated_data: bytes) -> bytes | None:
    """The plaintext of :func:`encrypt`'s output, or None if it does not authenticate."""
    try:
        return AESGCM(key).decrypt(
            ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], associated_data
        )
    except InvalidTag:
        return None


def sign(private: bytes, data: bytes) -> bytes:
    """Ed25519 signature of ``data``."""
    return Ed25519PrivateKey.from_private_bytes(private).sign(data)


def verify(public: bytes, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``data`` under ``public``."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def prg(key: bytes, length: int, ring: Ring) -> NDArray[np.uint64]:
    """``length`` uniform elements of ``ring`` expanded from a 256-bit key by AES-256-CTR."""
    encryptor = Cipher(algorithms.AES256(key), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(8 * length)) + encryptor.finalize()
    return ring.reduce(np.frombuffer(stream, dtype="<u8").astype(np.uint64))
