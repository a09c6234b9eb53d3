"""Fixed point: the decoded sum is within the proven bound of the exact sum of clipped
values; every unsafe parameter is a ValueError naming parameter, rule and value."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medsilo.secagg.client import SiteInit, site_step
from medsilo.secagg.config import SessionConfig
from medsilo.secagg.crypto import ed25519_keypair
from medsilo.secagg.errors import ParameterError
from medsilo.secagg.graph import complete_graph
from medsilo.secagg.messages import Setup
from medsilo.secagg.quantize import Quantizer, choose_scale

clips = st.floats(1e-3, 1e3)
finite = st.floats(-1e4, 1e4, allow_nan=False)


def _exact_clipped_sum(rows: list[list[float]], clip: float) -> list[Fraction]:
    columns = zip(*rows, strict=True)
    return [sum(Fraction(min(max(x, -clip), clip)) for x in column) for column in columns]


@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    clip=clips,
    n_sites=st.integers(1, 40),
    bits=st.integers(16, 53),
    stochastic=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_decoded_sum_is_within_the_bound(
    data: st.DataObject, clip: float, n_sites: int, bits: int, stochastic: bool, seed: int
) -> None:
    quantizer = Quantizer(clip, n_sites, bits, choose_scale(clip, n_sites, bits))
    count = data.draw(st.integers(1, n_sites), label="count")
    dim = data.draw(st.integers(1, 6), label="dim")
    rows = data.draw(
        st.lists(st.lists(finite, min_size=dim, max_size=dim), min_size=count, max_size=count)
    )
    rng = np.random.default_rng(seed) if stochastic else None
    total = np.zeros(dim, dtype=np.uint64)
    for row in rows:
        total += quantizer.encode(np.array(row), rng)
    decoded = quantizer.decode(quantizer.ring.reduce(total), count)
    bound = Fraction(quantizer.error_bound(count, stochastic))
    for value, exact in zip(decoded.tolist(), _exact_clipped_sum(rows, clip), strict=True):
        error = abs(Fraction(value) - exact)
        assert error < bound if stochastic else error <= bound


def test_round_to_nearest_bound_is_attained() -> None:
    """The bound m / (2 scale) is tight: values halfway between grid points."""
    quantizer = Quantizer(1.0, 4, 16, 2.0**10)
    half = 0.5 / quantizer.scale
    total = quantizer.ring.reduce(
        sum(quantizer.encode(np.array([half + k / 1024])) for k in (1, 3))
    )
    error = abs(quantizer.decode(total, 2)[0] - (2 * half + 4 / 1024))
    assert error == quantizer.error_bound(2, stochastic=False)


def test_stochastic_rounding_is_unbiased() -> None:
    quantizer = Quantizer(1.0, 2, 32, 2.0**4)
    value = 0.3 / quantizer.scale  # 0.3 of a grid step
    rng = np.random.default_rng(7)
    encoded = quantizer.encode(np.full(200_000, value), rng)
    decoded = quantizer.ring.to_signed(encoded) / quantizer.scale
    assert abs(decoded.mean() - value) < 5 * math.sqrt(0.21 / 200_000) / quantizer.scale


@settings(max_examples=60, deadline=None)
@given(clip=clips, n_sites=st.integers(1, 10_000), bits=st.integers(16, 53))
def test_choose_scale_is_the_largest_safe_power_of_two(
    clip: float, n_sites: int, bits: int
) -> None:
    scale = choose_scale(clip, n_sites, bits)
    assert math.frexp(scale)[0] == 0.5
    Quantizer(clip, n_sites, bits, scale)
    with pytest.raises(ParameterError, match=r"2\^\(bits-1\)"):
        Quantizer(clip, n_sites, bits, 2 * scale)


@pytest.mark.parametrize(
    ("kwargs", "parameter", "fragment"),
    [
        ({"clip": 0.0}, "clip", "> 0"),
        ({"clip": -1.0}, "clip", "> 0"),
        ({"clip": math.nan}, "clip", "finite"),
        ({"n_sites": 0}, "n_sites", ">= 1"),
        ({"bits": 1}, "bits", "[2, 53]"),
        ({"bits": 64}, "bits", "[2, 53]"),
        ({"scale": 0.0}, "scale", "> 0"),
        ({"scale": 3.0}, "scale", "power of two"),
        ({"n_sites": 10, "bits": 8, "scale": 16.0}, "scale", "wrap around the modulus"),
    ],
)
def test_unsafe_parameters_name_parameter_rule_and_value(
    kwargs: dict[str, object], parameter: str, fragment: str
) -> None:
    arguments: dict[str, object] = {"clip": 1.0, "n_sites": 4, "bits": 16, "scale": 2.0**8}
    arguments |= kwargs
    with pytest.raises(ValueError, match="got") as raised:
        Quantizer(**arguments)  # type: ignore[arg-type]
    error = raised.value
    assert isinstance(error, ParameterError)
    assert error.parameter == parameter and fragment in str(error)
    assert repr(arguments[parameter]) in str(error)


def test_overflow_message_gives_the_numbers() -> None:
    """n * ceil(clip * scale) = 10 * 16 = 160 >= 2^7 = 128."""
    with pytest.raises(ParameterError, match="reaches 160") as raised:
        Quantizer(1.0, 10, 8, 16.0)
    assert "2^(bits-1) = 128" in str(raised.value)


def test_encode_and_decode_reject_bad_vectors() -> None:
    quantizer = Quantizer(1.0, 4, 16, 2.0**8)
    with pytest.raises(ParameterError, match="finite"):
        quantizer.encode(np.array([0.0, np.nan]))
    with pytest.raises(ParameterError, match="count"):
        quantizer.decode(np.zeros(2, dtype=np.uint64), 5)
    with pytest.raises(ParameterError, match=r"Z_\(2\^16\)"):
        quantizer.decode(np.full(2, 2**16, dtype=np.uint64), 1)  # from a wider modulus
    with pytest.raises(ParameterError, match="uint64"):
        quantizer.decode(np.zeros(2, dtype=np.int64), 1)  # type: ignore[arg-type]


def test_a_modulus_mismatch_between_site_and_session_is_a_value_error() -> None:
    signing, verify = ed25519_keypair()
    keys = {"a": verify, "b": verify}
    site = SiteInit("a", signing, keys, 16, np.zeros(3, dtype=np.uint64))
    config = SessionConfig(b"s", complete_graph(["a", "b"]), 2, 32, 3)
    with pytest.raises(ValueError, match="modulus 2\\^32") as raised:
        site_step(site, Setup(config))
    assert isinstance(raised.value, ParameterError) and raised.value.parameter == "bits"
    assert "got 32" in str(raised.value)
