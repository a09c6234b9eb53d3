"""Modular arithmetic: the ring Z_(2^bits) of masked vectors, the prime field of shares.

Masked vectors live in Z_(2^bits) (Bonawitz et al. 2017, Sec. 3: inputs are vectors
in Z_R with R = 2^bits). They are ``uint64`` arrays whose values are below
``2^bits``: numpy's ``uint64`` addition wraps modulo 2^64 and 2^bits divides 2^64, so
reducing once at the end with a bit mask is exact.

``bits`` is at most 53 so that every element, read as a signed integer, is an exact
``float64`` (decoding in :mod:`medsilo.secagg.quantize` is then exact).

>>> ring = Ring(8)
>>> ring.reduce(np.array([255, 1], dtype=np.uint64) + np.uint64(1)).tolist()
[0, 2]
>>> ring.to_signed(np.array([255, 127, 128], dtype=np.uint64)).tolist()
[-1, 127, -128]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from medsilo.secagg.errors import ParameterError

MIN_BITS = 2
MAX_BITS = 53

SHAMIR_PRIME = 2**521 - 1
"""The Mersenne prime M521: a field that holds any 256-bit secret (Shamir 1979)."""

SHARE_BYTES = (SHAMIR_PRIME.bit_length() + 7) // 8
"""Bytes of one field element on the wire (66)."""


@dataclass(frozen=True)
class Ring:
    """Z_(2^bits), on ``uint64`` numpy vectors."""

    bits: int

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise ParameterError("bits", "must be an int", self.bits)
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ParameterError(
                "bits",
                f"must be in [{MIN_BITS}, {MAX_BITS}] (53 keeps every sum an exact float64)",
                self.bits,
            )

    @property
    def modulus(self) -> int:
        """``2^bits``."""
        return 1 << self.bits

    def reduce(self, values: NDArray[np.uint64]) -> NDArray[np.uint64]:
        """``values mod 2^bits``, in place; returns ``values``."""
        np.bitwise_and(values, np.uint64(self.modulus - 1), out=values)
        return values

    def to_signed(self, values: NDArray[np.uint64]) -> NDArray[np.int64]:
        """Each element as the representative in ``[-2^(bits-1), 2^(bits-1))``."""
        signed = values.astype(np.int64)
        signed[values >= np.uint64(self.modulus // 2)] -= np.int64(self.modulus)
        return signed

    def flaw(self, vector: object, dim: int | None = None) -> str | None:
        """Why ``vector`` is not a vector of this ring (of length ``dim`` if given), or None."""
        if not isinstance(vector, np.ndarray):
            return f"expected a numpy array, got {type(vector).__name__}"
        if vector.dtype != np.uint64 or vector.ndim != 1:
            return f"expected a 1-D uint64 array, got {vector.ndim}-D {vector.dtype}"
        if dim is not None and vector.shape != (dim,):
            return f"expected length {dim}, got {vector.shape[0]}"
        if vector.size and int(vector.max()) >= self.modulus:
            return f"an element is >= 2^{self.bits}"
        return None
