"""Sparse wire format: named arrays, each with an optional keep-mask, as exact bytes.

A pruned model (FedLTN, Mugunthan, Lin et al., ECCV 2022; LotteryFL, Li et al. 2020)
sends only the coordinates its mask keeps. For each tensor this format stores the
*support* (which coordinates are kept) and the kept *values*, then compresses the whole
body with zlib (RFC 1950, DEFLATE). Counting ``len(payload)`` counts exactly what
crosses the wire: nothing is estimated.

Layout (all integers little-endian)::

    payload = b"MSZ1" + zlib(body)
    body    = u32 tensor count, then per tensor (in the order given):
              u16 name length, name (UTF-8)
              u8 dtype length, numpy dtype string (e.g. "<f4")
              u8 ndim, ndim x u32 dims
              u8 support: 0 dense (every coordinate kept, nothing stored)
                          1 bitmap: ceil(n / 8) bytes, numpy.packbits of the C-order mask
                          2 runs: LEB128 varints, the run count then the run lengths,
                            alternating dropped / kept and starting with dropped
                            (a first run may be 0)
              kept values, C order, the dtype's little-endian bytes

For each tensor the smaller of the bitmap and the runs is stored (ties: bitmap): a
bitmap costs n/8 bytes whatever the density, runs cost about two varints per kept
stretch, so runs win for long contiguous stretches (a pruned whole filter, a nearly
full or nearly empty mask) and bitmaps for scattered magnitude pruning.

Values are stored bit for bit, so :func:`decode` returns exactly what :func:`encode`
was given (NaN payloads and signed zeros included) on the kept coordinates, and zeros
elsewhere:

>>> w = {"w": np.array([[0.5, 0.0], [0.0, -2.0]], np.float32), "b": np.ones(2, np.float32)}
>>> m = {"w": np.array([[True, False], [False, True]])}
>>> payload = encode(w, m)
>>> values, masks = decode(payload)
>>> values["w"].tolist(), masks["w"].tolist(), masks["b"].tolist()
([[0.5, 0.0], [0.0, -2.0]], [[True, False], [False, True]], [True, True])
>>> len(payload) == encoded_size(w, m)
True
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MAGIC",
    "SparseFormatError",
    "Support",
    "decode",
    "dense_bytes",
    "encode",
    "encoded_size",
    "mask_to_runs",
    "nonzeros",
    "runs_to_mask",
    "supports",
]

MAGIC = b"MSZ1"
"""The first four bytes of every payload (format version 1)."""


class SparseFormatError(ValueError):
    """A payload is not in this format (wrong magic, truncated, inconsistent lengths)."""


@dataclass(frozen=True)
class Support:
    """How one tensor's kept coordinates were stored, and in how many bytes."""

    kind: str
    """``"dense"``, ``"bitmap"`` or ``"runs"``."""
    nbytes: int


_DENSE, _BITMAP, _RUNS = 0, 1, 2
_KINDS = {_DENSE: "dense", _BITMAP: "bitmap", _RUNS: "runs"}


def _varint(value: int, out: bytearray) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise SparseFormatError("payload ends inside a varint (truncated run lengths)")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise SparseFormatError("varint longer than 64 bits")


def mask_to_runs(mask: np.ndarray) -> list[int]:
    """Alternating run lengths (dropped, kept, dropped, ...) of a C-order mask.

    >>> mask_to_runs(np.array([True, True, False, True]))
    [0, 2, 1, 1]
    """
    flat = np.ascontiguousarray(mask, dtype=bool).ravel()
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def runs_to_mask(runs: list[int], size: int) -> np.ndarray:
    """Inverse of :func:`mask_to_runs` (flat). ``sum(runs)`` must equal ``size``."""
    if sum(runs) != size:
        raise SparseFormatError(f"run lengths sum to {sum(runs)}, the tensor has {size} entries")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    return np.repeat(values, runs)


def _support(mask: np.ndarray) -> tuple[int, bytes]:
    if bool(mask.all()):
        return _DENSE, b""
    bitmap = np.packbits(mask.ravel()).tobytes()
    runs = bytearray()
    lengths = mask_to_runs(mask)
    _varint(len(lengths), runs)
    for length in lengths:
        _varint(length, runs)
    if len(runs) < len(bitmap):
        return _RUNS, bytes(runs)
    return _BITMAP, bitmap


def _check(arrays: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> None:
    unknown = sorted(set(masks) - set(arrays))
    if unknown:
        raise ValueError(f"masks given for arrays that are not sent: {unknown}")
    for name, mask in masks.items():
        shape, mshape = np.shape(arrays[name]), np.shape(mask)
        if shape != mshape:
            raise ValueError(f"mask of '{name}' has shape {mshape}, its array has shape {shape}")
        if np.asarray(mask).dtype != np.bool_:
            raise ValueError(f"mask of '{name}' must be boolean, got {np.asarray(mask).dtype}")


def encode(
    arrays: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray] | None = None,
    level: int = 6,
) -> bytes:
    """The payload for ``arrays``; an array with an entry in ``masks`` sends only the
    coordinates its (boolean, same-shape) mask keeps, any other array is sent whole."""
    masks = masks or {}
    _check(arrays, masks)
    body = bytearray(struct.pack("<I", len(arrays)))
    for name, value in arrays.items():
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise ValueError(f"array '{name}' is not numeric ({array.dtype})")
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        key = name.encode("utf-8")
        dtype = array.dtype.str.encode("ascii")
        if len(key) > 0xFFFF or array.ndim > 0xFF:
            raise ValueError(f"array '{name}': name or number of dimensions too large")
        body += struct.pack("<H", len(key)) + key
        body += struct.pack("<B", len(dtype)) + dtype
        body += struct.pack(f"<B{array.ndim}I", array.ndim, *array.shape)
        mask = masks.get(name)
        if mask is None:
            body += struct.pack("<B", _DENSE)
            body += array.tobytes()
            continue
        kind, support = _support(np.asarray(mask))
        body += struct.pack("<B", kind) + support
        body += array.ravel()[np.asarray(mask).ravel()].tobytes()
    return MAGIC + zlib.compress(bytes(body), level)


def encoded_size(
    arrays: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray] | None = None,
    level: int = 6,
) -> int:
    """``len(encode(arrays, masks, level))``: the exact bytes on the wire."""
    return len(encode(arrays, masks, level))


@dataclass(frozen=True)
class _Entry:
    name: str
    kind: int
    support_bytes: int
    mask: np.ndarray
    """Flat boolean mask."""
    values: np.ndarray
    """Flat kept values."""
    shape: tuple[int, ...]


def _body(payload: bytes) -> memoryview:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise SparseFormatError(f"payload must be bytes, got {type(payload).__name__}")
    raw = bytes(payload)
    if raw[:4] != MAGIC:
        raise SparseFormatError(f"payload does not start with {MAGIC!r} (got {raw[:4]!r})")
    try:
        return memoryview(zlib.decompress(raw[4:]))
    except zlib.error as exc:
        raise SparseFormatError(f"payload body is not valid zlib data: {exc}") from None


def _parse(payload: bytes) -> list[_Entry]:
    data = _body(payload)
    entries: list[_Entry] = []
    try:
        (count,), pos = struct.unpack_from("<I", data, 0), 4
        for _ in range(count):
            (nlen,) = struct.unpack_from("<H", data, pos)
            name = bytes(data[pos + 2 : pos + 2 + nlen]).decode("utf-8")
            pos += 2 + nlen
            (dlen,) = struct.unpack_from("<B", data, pos)
            dtype = np.dtype(bytes(data[pos + 1 : pos + 1 + dlen]).decode("ascii"))
            pos += 1 + dlen
            (ndim,) = struct.unpack_from("<B", data, pos)
            shape = tuple(int(d) for d in struct.unpack_from(f"<{ndim}I", data, pos + 1))
            pos += 1 + 4 * ndim
            (kind,) = struct.unpack_from("<B", data, pos)
            pos += 1
            start = pos
            size = int(np.prod(shape, dtype=np.int64))
            if kind == _DENSE:
                mask = np.ones(size, dtype=bool)
            elif kind == _BITMAP:
                nbytes = (size + 7) // 8
                bits = np.frombuffer(data[pos : pos + nbytes], dtype=np.uint8)
                if len(bits) != nbytes:
                    raise SparseFormatError(f"'{name}': bitmap truncated")
                mask = np.unpackbits(bits, count=size).astype(bool)
                pos += nbytes
            elif kind == _RUNS:
                nruns, pos = _read_varint(data, pos)
                runs = []
                for _ in range(nruns):
                    length, pos = _read_varint(data, pos)
                    runs.append(length)
                mask = runs_to_mask(runs, size)
            else:
                raise SparseFormatError(f"'{name}': unknown support kind {kind}")
            support_bytes = pos - start
            kept = int(mask.sum())
            nbytes = kept * dtype.itemsize
            if pos + nbytes > len(data):
                raise SparseFormatError(f"'{name}': values truncated")
            values = np.frombuffer(data[pos : pos + nbytes], dtype=dtype)
            pos += nbytes
            entries.append(_Entry(name, kind, support_bytes, mask, values, shape))
    except (struct.error, UnicodeDecodeError, TypeError) as exc:
        raise SparseFormatError(f"payload truncated or corrupt: {exc}") from None
    if pos != len(data):
        raise SparseFormatError(f"{len(data) - pos} unexpected bytes after the last tensor")
    return entries


def decode(payload: bytes) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(arrays, masks)``: each array in its dtype and shape with zeros where its mask
    drops a coordinate, and every mask (all True for a tensor sent whole)."""
    arrays: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for e in _parse(payload):
        full = np.zeros(e.mask.size, dtype=e.values.dtype)
        full[e.mask] = e.values
        arrays[e.name] = full.reshape(e.shape)
        masks[e.name] = e.mask.reshape(e.shape)
    return arrays, masks


def supports(payload: bytes) -> dict[str, Support]:
    """Per tensor, the support encoding chosen and its size before compression."""
    return {e.name: Support(_KINDS[e.kind], e.support_bytes) for e in _parse(payload)}


def dense_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Raw size of the arrays (what an uncompressed dense copy would take)."""
    return sum(int(np.asarray(a).nbytes) for a in arrays.values())


def nonzeros(
    arrays: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray] | None = None
) -> int:
    """Coordinates a model stores: kept by its mask (arrays without a mask: all)."""
    masks = masks or {}
    return sum(
        int(np.count_nonzero(masks[k])) if k in masks else int(np.size(a))
        for k, a in arrays.items()
    )
