"""Shamir t-of-n sharing: any t shares reconstruct; t - 1 shares reveal nothing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from medsilo.secagg.errors import ParameterError
from medsilo.secagg.field import SHAMIR_PRIME
from medsilo.secagg.shamir import evaluate_polynomial, reconstruct, split

SMALL_PRIMES = (2, 3, 7, 97, 257)


def test_shamir_prime_is_prime() -> None:
    """M521 passes Miller-Rabin with the first 20 prime bases (an independent check)."""
    p = SHAMIR_PRIME
    d, r = p - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for base in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71):
        x = pow(base, d, p)
        assert x in (1, p - 1) or any(pow(x, 2**i, p) == p - 1 for i in range(1, r))
    assert p.bit_length() == 521 and p > 2**256


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 12))
def test_any_t_shares_reconstruct(data: st.DataObject, n: int) -> None:
    threshold = data.draw(st.integers(1, n), label="threshold")
    secret = data.draw(st.integers(0, SHAMIR_PRIME - 1), label="secret")
    xs = data.draw(st.lists(st.integers(1, 10**6), min_size=n, max_size=n, unique=True))
    shares = split(secret, threshold, xs)
    subset = data.draw(st.lists(st.sampled_from(xs), min_size=threshold, unique=True))
    assert reconstruct({x: shares[x] for x in subset}) == secret


@settings(max_examples=40, deadline=None)
@given(data=st.data(), prime=st.sampled_from(SMALL_PRIMES[2:]))
def test_any_t_shares_reconstruct_in_small_fields(data: st.DataObject, prime: int) -> None:
    n = data.draw(st.integers(1, min(prime - 1, 8)))
    threshold = data.draw(st.integers(1, n))
    secret = data.draw(st.integers(0, prime - 1))
    xs = data.draw(st.lists(st.integers(1, prime - 1), min_size=n, max_size=n, unique=True))
    shares = split(secret, threshold, xs, prime)
    subset = data.draw(st.permutations(xs))[:threshold]
    assert reconstruct({x: shares[x] for x in subset}, prime) == secret


@pytest.mark.parametrize(("prime", "threshold"), [(7, 2), (7, 3), (11, 3), (5, 4)])
def test_t_minus_1_shares_are_consistent_with_every_secret(prime: int, threshold: int) -> None:
    """Exhaustive: for every secret, the p^(t-1) coefficient vectors map one-to-one onto
    the p^(t-1) possible values of t - 1 shares, so every share vector is equally likely
    under every secret (perfect secrecy)."""
    xs = list(range(1, threshold))
    for secret in range(prime):
        seen = {
            tuple(evaluate_polynomial([secret, *rest], x, prime) for x in xs)
            for rest in itertools.product(range(prime), repeat=threshold - 1)
        }
        assert len(seen) == prime ** (threshold - 1)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_t_minus_1_real_shares_fit_any_claimed_secret(data: st.DataObject) -> None:
    """Given t - 1 shares of one secret, for any other secret the degree-(t-1) polynomial
    through them and (0, other) exists: interpolating it back at zero gives ``other``."""
    threshold = data.draw(st.integers(2, 6))
    secret, other = data.draw(st.lists(st.integers(0, SHAMIR_PRIME - 1), min_size=2, max_size=2))
    shares = split(secret, threshold, list(range(1, threshold + 2)))
    partial = {x: shares[x] for x in range(1, threshold)}
    completed = {**partial, threshold + 5: _value_through(partial, other, threshold + 5)}
    assert reconstruct(completed) == other


def _value_through(points: dict[int, int], secret: int, x: int) -> int:
    """f(x) for the polynomial of degree len(points) through points and (0, secret)."""
    p = SHAMIR_PRIME
    nodes = {0: secret, **points}
    total = 0
    for xi, yi in nodes.items():
        term = yi
        for xj in nodes:
            if xj != xi:
                term = term * (x - xj) * pow(xi - xj, -1, p) % p
        total += term
    return total % p


def test_t_minus_1_shares_look_uniform_whatever_the_secret() -> None:
    """Statistical: with t = 3, the low 4 bits of two shares are uniform on 256 cells and
    distributed alike for secrets 0 and p - 1 (chi-square, alpha = 1e-6)."""
    samples = 4000
    histograms = []
    for secret in (0, SHAMIR_PRIME - 1):
        counts = np.zeros(256)
        for _ in range(samples):
            shares = split(secret, 3, [1, 2, 3, 4, 5])
            counts[(shares[1] % 16) * 16 + shares[2] % 16] += 1
        assert stats.chisquare(counts).pvalue > 1e-6
        histograms.append(counts)
    assert stats.chi2_contingency(np.array(histograms)).pvalue > 1e-6


def test_split_rejects_bad_parameters() -> None:
    with pytest.raises(ParameterError, match="threshold"):
        split(5, 0, [1, 2])
    with pytest.raises(ParameterError, match="threshold"):
        split(5, 3, [1, 2])
    with pytest.raises(ParameterError, match="secret"):
        split(SHAMIR_PRIME, 1, [1])
    with pytest.raises(ParameterError, match="xs"):
        split(5, 2, [1, 1])
    with pytest.raises(ParameterError, match="xs"):
        split(5, 1, [0])
    with pytest.raises(ParameterError, match="shares"):
        reconstruct({})
