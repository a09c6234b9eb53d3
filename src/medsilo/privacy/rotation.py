"""Randomized Hadamard rotation: flattens a vector before it is rounded to integers.

A clipped update may put all its mass on a few coordinates; after rounding and summing,
those coordinates are the ones that wrap around the modulus of secure aggregation.
Rotating by ``R = H D / sqrt(n)`` first (``D`` a diagonal of independent random signs,
``H`` the n x n Walsh-Hadamard matrix, ``n`` the dimension padded with zeros to a power
of two) spreads the mass evenly: for a fixed ``x`` each coordinate
``(Rx)_j = sum_k s_k H_jk x_k / sqrt(n)`` is a Rademacher sum, so by Hoeffding's
inequality ``P(|(Rx)_j| >= a) <= 2 exp(-a^2 n / (2 ||x||^2))``. This is the flattening
of Kairouz, Liu, Steinke (ICML 2021, "The distributed discrete Gaussian mechanism",
Sec. 4) used by Agarwal, Kairouz, Liu (NeurIPS 2021, "The Skellam mechanism") before
their rounding step.

``R`` is orthogonal (``H H = n I``), so norms are preserved (the L2 clip of a vector is
the clip of its rotation) and ``R^-1 = D H / sqrt(n)`` undoes it. The signs come from a
**public** seed shared by every site for the round (the coordinator needs it to rotate the
sum back); the guarantee above only needs the data to be chosen independently of it.

>>> rotation = HadamardRotation(dim=3, seed=7)
>>> rotation.padded_dim
4
>>> y = rotation.forward(np.array([3.0, 0.0, 0.0]))
>>> np.abs(y).tolist()  # all mass spread evenly: 3 / sqrt(4) per coordinate
[1.5, 1.5, 1.5, 1.5]
>>> rotation.inverse(y).round(12).tolist()
[3.0, 0.0, 0.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from medsilo.privacy import _validate as check

__all__ = ["HadamardRotation", "fwht", "padded_dim"]

FloatArray: TypeAlias = npt.NDArray[np.float64]


def padded_dim(dim: int) -> int:
    """The smallest power of two ``>= dim``.

    >>> [padded_dim(d) for d in (1, 2, 3, 1000, 1024, 100_000)]
    [1, 2, 4, 1024, 1024, 131072]
    """
    dim = check.count("dim", dim)
    return 1 << (dim - 1).bit_length()


def fwht(values: npt.ArrayLike) -> FloatArray:
    """Unnormalized fast Walsh-Hadamard transform ``H x`` along the last axis (a power of
    two long), in Sylvester order; ``O(n log n)``. ``fwht(fwht(x)) == n x``.

    >>> fwht([1.0, 0.0, 0.0, 0.0]).tolist(), fwht([1.0, 1.0, 1.0, 1.0]).tolist()
    ([1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0])
    """
    out = np.array(values, dtype=np.float64)
    n = out.shape[-1] if out.ndim else 0
    if n == 0 or n & (n - 1):
        raise check.fail("values", "an array whose last axis is a power of two long", out.shape)
    lead = out.shape[:-1]
    h = 1
    while h < n:
        blocks = out.reshape(*lead, n // (2 * h), 2, h)
        first, second = blocks[..., 0, :], blocks[..., 1, :]
        out = np.stack((first + second, first - second), axis=-2).reshape(*lead, n)
        h *= 2
    return out


@dataclass(frozen=True)
class HadamardRotation:
    """``R = H D / sqrt(n)`` on vectors of length ``dim`` (zero-padded to ``n``), with the
    signs ``D`` drawn from the public ``seed`` (PCG64). Works on a vector or on the rows of
    a matrix."""

    dim: int
    seed: int

    def __post_init__(self) -> None:
        check.count("dim", self.dim)
        check.count("seed", self.seed, minimum=0)

    @property
    def padded_dim(self) -> int:
        """``n``: ``dim`` rounded up to a power of two."""
        return padded_dim(self.dim)

    @cached_property
    def signs(self) -> FloatArray:
        """The diagonal of ``D``: ``n`` independent uniform signs from ``seed``."""
        rng = np.random.Generator(np.random.PCG64(self.seed))
        return rng.choice(np.array([-1.0, 1.0]), size=self.padded_dim)

    def forward(self, values: npt.ArrayLike) -> FloatArray:
        """``R x`` for ``x`` of length ``dim`` (or each row of a matrix): length ``n``."""
        x = np.asarray(values, dtype=np.float64)
        if x.ndim not in (1, 2) or x.shape[-1] != self.dim:
            raise check.fail(
                "values", f"a vector of length {self.dim} or a matrix of such rows", x.shape
            )
        padded = np.zeros((*x.shape[:-1], self.padded_dim))
        padded[..., : self.dim] = x
        rotated: FloatArray = fwht(padded * self.signs) / math.sqrt(self.padded_dim)
        return rotated

    def inverse(self, values: npt.ArrayLike) -> FloatArray:
        """``R^-1 y = D H y / sqrt(n)``, truncated to the first ``dim`` coordinates."""
        y = np.asarray(values, dtype=np.float64)
        if y.ndim not in (1, 2) or y.shape[-1] != self.padded_dim:
            raise check.fail(
                "values", f"a vector of length {self.padded_dim} or a matrix of such rows", y.shape
            )
        x: FloatArray = fwht(y) * self.signs / math.sqrt(self.padded_dim)
        return x[..., : self.dim]
