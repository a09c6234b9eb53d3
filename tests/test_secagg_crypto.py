"""Primitives: the PRG uses the full 256-bit key and is uniform; AEAD binds its
associated data; signatures bind their message; key agreement is symmetric."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from medsilo.secagg import crypto
from medsilo.secagg.crypto import Purpose
from medsilo.secagg.errors import ParameterError
from medsilo.secagg.field import Ring


def test_prg_is_deterministic_and_in_the_ring() -> None:
    key = bytes(range(32))
    first = crypto.prg(key, 1000, Ring(20))
    assert np.array_equal(first, crypto.prg(key, 1000, Ring(20)))
    assert first.dtype == np.uint64 and int(first.max()) < 2**20
    assert np.array_equal(crypto.prg(key, 10, Ring(20)), first[:10])


@pytest.mark.parametrize("byte", [0, 4, 16, 31])
def test_prg_depends_on_every_key_byte(byte: int) -> None:
    """Unlike a 32-bit seed (flower#7522), each of the 32 key bytes changes the stream."""
    key = bytearray(32)
    other = bytearray(key)
    other[byte] ^= 1
    a = crypto.prg(bytes(key), 64, Ring(32))
    b = crypto.prg(bytes(other), 64, Ring(32))
    assert np.mean(a == b) < 0.1


def test_prg_output_is_uniform() -> None:
    """Chi-square on 256 cells of Z_(2^8) elements and on the top byte of Z_(2^53) ones."""
    small = crypto.prg(crypto.random_seed(), 256 * 200, Ring(8))
    assert stats.chisquare(np.bincount(small.astype(np.int64), minlength=256)).pvalue > 1e-6
    large = crypto.prg(crypto.random_seed(), 256 * 200, Ring(53))
    top = (large >> np.uint64(45)).astype(np.int64)
    assert stats.chisquare(np.bincount(top, minlength=256)).pvalue > 1e-6


def test_agreement_is_symmetric_and_bound_to_session_and_purpose() -> None:
    a_private, a_public = crypto.x25519_keypair()
    b_private, b_public = crypto.x25519_keypair()
    ab = crypto.agree(a_private, {"b": b_public}, b"s1", Purpose.PAIRWISE_MASK)["b"]
    ba = crypto.agree(b_private, {"a": a_public}, b"s1", Purpose.PAIRWISE_MASK)["a"]
    assert ab == ba and len(ab) == 32
    assert crypto.agree(a_private, {"b": b_public}, b"s2", Purpose.PAIRWISE_MASK)["b"] != ab
    assert crypto.agree(a_private, {"b": b_public}, b"s1", Purpose.SHARE_ENCRYPTION)["b"] != ab
    assert crypto.x25519_public(a_private) == a_public


def test_agreement_rejects_a_low_order_point_naming_the_peer() -> None:
    private, _ = crypto.x25519_keypair()
    with pytest.raises(ParameterError, match="low-order") as raised:
        crypto.agree(private, {"evil": bytes(32)}, b"s", Purpose.PAIRWISE_MASK)
    assert raised.value.value == "evil"


def test_aead_authenticates_ciphertext_and_associated_data() -> None:
    key = crypto.random_seed()
    sealed = crypto.encrypt(key, b"share", b"session|a|b")
    assert crypto.decrypt(key, sealed, b"session|a|b") == b"share"
    assert crypto.decrypt(key, sealed, b"session|a|c") is None
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    assert crypto.decrypt(key, tampered, b"session|a|b") is None
    assert crypto.decrypt(crypto.random_seed(), sealed, b"session|a|b") is None
    assert crypto.encrypt(key, b"share", b"x") != crypto.encrypt(key, b"share", b"x")


def test_signatures_bind_message_and_key() -> None:
    private, public = crypto.ed25519_keypair()
    _, other_public = crypto.ed25519_keypair()
    signature = crypto.sign(private, b"U_3 = {a, b}")
    assert crypto.verify(public, signature, b"U_3 = {a, b}")
    assert not crypto.verify(public, signature, b"U_3 = {a}")
    assert not crypto.verify(other_public, signature, b"U_3 = {a, b}")
    assert not crypto.verify(public, signature[:-1], b"U_3 = {a, b}")


def test_frame_is_unambiguous() -> None:
    assert crypto.frame(b"ab", b"c") != crypto.frame(b"a", b"bc")
    assert crypto.frame(b"", b"a") != crypto.frame(b"a", b"")
