"""Shamir t-of-n secret sharing over a prime field (Shamir, CACM 1979).

A secret ``s`` in F_p is the constant term of a random polynomial ``f`` of degree
``t - 1``; party ``x`` (an integer in ``1..p-1``) holds ``f(x)``. Any ``t`` shares give
``f(0) = s`` by Lagrange interpolation. Any ``t - 1`` shares reveal nothing: for each
secret, the map from the ``t - 1`` random coefficients to the ``t - 1`` shares is a
bijection (an invertible Vandermonde system at distinct non-zero points), so the shares
are uniform and independent of the secret. Bonawitz et al. (2017, Sec. 3.1) use it to share each
site's mask key and self-mask seed.

The coefficients come from :mod:`secrets` (secret material).

>>> shares = split(42, threshold=2, xs=[1, 2, 3], prime=97)
>>> reconstruct({x: shares[x] for x in (1, 3)}, prime=97)
42
>>> evaluate_polynomial([42, 5], 3, prime=97)  # 42 + 5 * 3
57
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from medsilo.secagg.errors import ParameterError
from medsilo.secagg.field import SHAMIR_PRIME


def evaluate_polynomial(coefficients: Sequence[int], x: int, prime: int = SHAMIR_PRIME) -> int:
    """``sum(c_i * x^i) mod prime`` by Horner's rule (``coefficients[0]`` is the constant)."""
    value = 0
    for coefficient in reversed(coefficients):
        value = (value * x + coefficient) % prime
    return value


def split(
    secret: int, threshold: int, xs: Sequence[int], prime: int = SHAMIR_PRIME
) -> dict[int, int]:
    """Shares ``{x: f(x)}`` of ``secret`` such that any ``threshold`` of them reconstruct it."""
    if not 0 <= secret < prime:
        raise ParameterError("secret", f"must be in [0, prime={prime})", secret)
    if not 1 <= threshold <= len(xs):
        raise ParameterError("threshold", f"must be in [1, number of shares={len(xs)}]", threshold)
    if len(set(xs)) != len(xs) or not all(0 < x < prime for x in xs):
        raise ParameterError("xs", f"must be distinct and in [1, {prime})", list(xs))
    coefficients = [secret, *(secrets.randbelow(prime) for _ in range(threshold - 1))]
    return {x: evaluate_polynomial(coefficients, x, prime) for x in xs}


def reconstruct(shares: Mapping[int, int], prime: int = SHAMIR_PRIME) -> int:
    """``f(0)`` from shares ``{x: f(x)}`` by Lagrange interpolation at zero.

    With fewer shares than the threshold the result is a uniformly random field
    element, not the secret; callers check the count first.
    """
    if not shares:
        raise ParameterError("shares", "must not be empty", {})
    xs = list(shares)
    secret = 0
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                numerator = numerator * xj % prime
                denominator = denominator * (xj - xi) % prime
        secret += shares[xi] * numerator * pow(denominator, -1, prime)
    return secret % prime
