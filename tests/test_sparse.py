"""The sparse wire format: exact round trip, exact byte counts, the smaller support."""

from __future__ import annotations

import doctest
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from medsilo.fed import sparse
from medsilo.fed.sparse import SparseFormatError, decode, encode, encoded_size, supports


def test_docstring_examples() -> None:
    assert doctest.testmod(sparse).failed == 0


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


arrays_and_masks = st.integers(1, 3).flatmap(
    lambda ndim: hnp.array_shapes(min_dims=ndim, max_dims=ndim, max_side=9).flatmap(
        lambda shape: st.tuples(
            hnp.arrays(
                st.sampled_from([np.float32, np.float64, np.float16]),
                shape,
            ),
            hnp.arrays(np.bool_, shape),
        )
    )
)


@settings(max_examples=60, deadline=None)
@given(st.lists(arrays_and_masks, min_size=1, max_size=4), st.lists(st.booleans(), max_size=4))
def test_round_trip_is_bit_exact(
    pairs: list[tuple[np.ndarray, np.ndarray]], sent: list[bool]
) -> None:
    arrays = {f"t{i}": a for i, (a, _) in enumerate(pairs)}
    masks = {f"t{i}": m for i, (_, m) in enumerate(pairs) if i < len(sent) and sent[i]}
    payload = encode(arrays, masks)
    values, got_masks = decode(payload)
    assert list(values) == list(arrays)
    for name, array in arrays.items():
        mask = masks.get(name, np.ones(array.shape, bool))
        assert np.array_equal(got_masks[name], mask)
        expected = np.where(mask, array, np.zeros((), array.dtype))
        assert _same_bits(values[name], expected), name
    assert encoded_size(arrays, masks) == len(payload)


def test_signed_zero_and_nan_payload_survive() -> None:
    a = np.array([-0.0, np.nan, 1.0], dtype=np.float32)
    a.view(np.uint32)[1] = 0x7FC00123  # a NaN with a payload
    values, _ = decode(encode({"a": a}, {"a": np.array([True, True, False])}))
    assert values["a"].view(np.uint32)[:2].tolist() == a.view(np.uint32)[:2].tolist()


def test_byte_count_is_the_layout() -> None:
    """The body is exactly header + name + dtype + shape + support + kept values."""
    w = np.arange(64, dtype=np.float32).reshape(8, 8)
    mask = np.zeros((8, 8), bool)
    mask[::3, ::2] = True  # scattered: a bitmap
    payload = encode({"w": w}, {"w": mask})
    body = zlib.decompress(payload[4:])
    kept = int(mask.sum())
    expected = 4 + (2 + 1) + (1 + 3) + (1 + 2 * 4) + 1 + 64 // 8 + 4 * kept
    assert len(body) == expected
    assert payload[:4] == sparse.MAGIC
    assert len(payload) == 4 + len(zlib.compress(body, 6))
    assert struct.unpack_from("<I", body)[0] == 1


def test_smaller_support_is_chosen() -> None:
    w = np.ones((40, 40), np.float32)
    contiguous = np.zeros((40, 40), bool)
    contiguous[:4] = True  # one kept stretch: 3 varints beat a 200-byte bitmap
    scattered = np.random.default_rng(0).random((40, 40)) < 0.3
    full = np.ones((40, 40), bool)
    payload = encode({"a": w, "b": w, "c": w}, {"a": contiguous, "b": scattered, "c": full})
    kinds = supports(payload)
    assert kinds["a"].kind == "runs" and kinds["a"].nbytes < 200
    assert kinds["b"].kind == "bitmap" and kinds["b"].nbytes == 200
    assert kinds["c"].kind == "dense" and kinds["c"].nbytes == 0


def test_empty_mask_and_runs_helpers() -> None:
    w = np.ones((3, 5), np.float32)
    values, masks = decode(encode({"w": w}, {"w": np.zeros((3, 5), bool)}))
    assert not masks["w"].any() and not values["w"].any()
    for mask in ([True, False, False, True], [False], [True, True], []):
        m = np.array(mask, bool)
        assert np.array_equal(sparse.runs_to_mask(sparse.mask_to_runs(m), m.size), m)


def test_ninety_percent_sparse_is_much_smaller() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(64, 64, 3, 3)).astype(np.float32)
    keep = np.abs(w) >= np.quantile(np.abs(w), 0.9)
    dense = encoded_size({"w": w})
    assert dense >= 0.9 * w.nbytes
    assert encoded_size({"w": w}, {"w": keep}) < dense / 6.5
    assert sparse.nonzeros({"w": w}, {"w": keep}) == int(keep.sum())


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"XXXX" + zlib.compress(b"\0\0\0\0"), "does not start"),
        (sparse.MAGIC + b"not zlib", "not valid zlib"),
        (sparse.MAGIC + zlib.compress(b"\1\0\0\0\5\0ab"), "truncated"),
        (sparse.MAGIC + zlib.compress(b"\0\0\0\0extra"), "unexpected bytes"),
    ],
)
def test_bad_payloads_are_rejected(payload: bytes, match: str) -> None:
    with pytest.raises(SparseFormatError, match=match):
        decode(payload)


def test_truncated_values_are_rejected() -> None:
    body = zlib.decompress(encode({"w": np.ones(4, np.float32)})[4:])
    with pytest.raises(SparseFormatError, match="values truncated"):
        decode(sparse.MAGIC + zlib.compress(body[:-1]))


def test_bad_masks_are_rejected() -> None:
    w = {"w": np.ones((2, 2), np.float32)}
    with pytest.raises(ValueError, match="shape"):
        encode(w, {"w": np.ones(4, bool)})
    with pytest.raises(ValueError, match="boolean"):
        encode(w, {"w": np.ones((2, 2))})
    with pytest.raises(ValueError, match="not sent"):
        encode(w, {"v": np.ones((2, 2), bool)})
