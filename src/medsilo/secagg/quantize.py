"""Fixed-point encoding of clipped updates into Z_(2^bits), and decoding of their sum.

Secure aggregation sums ring elements (Bonawitz et al. 2017, Sec. 3), so a site
encodes its real-valued update ``x`` as ``q = round(clip(x) * scale) mod 2^bits`` and
the coordinator decodes the sum ``S = sum(q_i) mod 2^bits`` back to floats.

Headroom rule: each ``|round(clip(x) * scale)| <= ceil(clip * scale)``, so the sum of
``n_sites`` encodings never wraps around the modulus if
``n_sites * ceil(clip * scale) < 2^(bits-1)``; :class:`Quantizer` refuses parameters
that break it. :func:`choose_scale` returns the largest power of two that keeps it.

Error bound (proved here, tested in ``tests/test_secagg_quantize.py``). ``scale`` is a
power of two and ``bits <= 53``, so ``clip(x) * scale``, the decoding of the signed sum
and the division by ``scale`` are exact in float64. Rounding to nearest moves each value
by at most ``1/2`` unit, stochastic rounding (``floor(y) + Bernoulli(y - floor(y))``,
unbiased) by less than ``1``. Hence for ``m <= n_sites`` summands::

    |decode(sum encode(x_i)) - sum clip(x_i)| <= m / (2 * scale)   (round to nearest)
                                              <  m / scale         (stochastic)

per coordinate. Clipping is per coordinate to ``[-clip, clip]``; an L2 clip to norm
``C`` implies it with ``clip = C``.

>>> q = Quantizer(clip=1.0, n_sites=4, bits=16, scale=2.0**12)
>>> total = q.ring.reduce(q.encode(np.array([0.5, -0.25])) + q.encode(np.array([0.25, -1.5])))
>>> q.decode(total, count=2).tolist()
[0.75, -1.25]
>>> choose_scale(clip=1.0, n_sites=4, bits=16)
4096.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from medsilo.secagg.errors import ParameterError
from medsilo.secagg.field import Ring


def choose_scale(clip: float, n_sites: int, bits: int) -> float:
    """The largest power of two ``scale`` with ``n_sites * ceil(clip * scale) < 2^(bits-1)``."""
    _check_clip_and_sites(clip, n_sites)
    Ring(bits)
    if n_sites >= 2 ** (bits - 1):
        raise ParameterError("n_sites", f"must be < 2^(bits-1) = {2 ** (bits - 1)}", n_sites)
    exponent = math.floor(math.log2((2 ** (bits - 1) - 1) / n_sites / clip))
    while n_sites * math.ceil(clip * 2.0**exponent) >= 2 ** (bits - 1):
        exponent -= 1
    return 2.0**exponent


def _check_clip_and_sites(clip: float, n_sites: int) -> None:
    if not (isinstance(clip, int | float) and math.isfinite(clip) and clip > 0):
        raise ParameterError("clip", "must be a finite number > 0", clip)
    if isinstance(n_sites, bool) or not isinstance(n_sites, int) or n_sites < 1:
        raise ParameterError("n_sites", "must be an int >= 1", n_sites)


@dataclass(frozen=True)
class Quantizer:
    """Encodes values clipped to ``[-clip, clip]`` as ``round(x * scale)`` in Z_(2^bits)."""

    clip: float
    n_sites: int
    bits: int
    scale: float

    def __post_init__(self) -> None:
        _check_clip_and_sites(self.clip, self.n_sites)
        Ring(self.bits)
        scale = self.scale
        if not (isinstance(scale, float) and math.isfinite(scale) and scale > 0):
            raise ParameterError("scale", "must be a finite float > 0", scale)
        if math.frexp(scale)[0] != 0.5:
            raise ParameterError("scale", "must be a power of two (exact float64 scaling)", scale)
        peak = self.n_sites * math.ceil(self.clip * scale)
        if peak >= 2 ** (self.bits - 1):
            raise ParameterError(
                "scale",
                f"must satisfy n_sites * ceil(clip * scale) < 2^(bits-1) = {2 ** (self.bits - 1)}"
                f" (the sum would wrap around the modulus; here it reaches {peak}: lower scale"
                " or clip, or raise bits)",
                scale,
            )

    @property
    def ring(self) -> Ring:
        """Z_(2^bits)."""
        return Ring(self.bits)

    def encode(
        self, values: NDArray[np.floating], rng: np.random.Generator | None = None
    ) -> NDArray[np.uint64]:
        """Clip, scale and round ``values``; stochastically (unbiased) when ``rng`` is given."""
        values = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise ParameterError("values", "must all be finite", "a NaN or infinity")
        scaled = np.clip(values, -self.clip, self.clip) * self.scale
        if rng is None:
            rounded = np.rint(scaled)
        else:
            floor = np.floor(scaled)
            rounded = floor + (rng.random(scaled.shape) < scaled - floor)
        return self.ring.reduce(rounded.astype(np.int64).astype(np.uint64))

    def decode(self, total: NDArray[np.uint64], count: int) -> NDArray[np.float64]:
        """The float sum of ``count`` encoded vectors from their sum ``total`` mod 2^bits."""
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= self.n_sites:
            raise ParameterError(
                "count", f"must be in [1, n_sites={self.n_sites}] (the headroom rule)", count
            )
        flaw = self.ring.flaw(total)
        if flaw is not None:
            raise ParameterError("total", f"must be a vector of Z_(2^{self.bits}): {flaw}", total)
        return self.ring.to_signed(total).astype(np.float64) / self.scale

    def error_bound(self, count: int, stochastic: bool) -> float:
        """Largest per-coordinate error of a decoded sum of ``count`` encodings (strict if
        stochastic): ``count / (2 * scale)``, or ``count / scale`` with stochastic rounding."""
        return count / self.scale if stochastic else count / (2 * self.scale)
