"""Make a clone: encode the table over the schema's domain, run MST or AIM under
(epsilon, delta), sample, decode; and record the release in the site's privacy ledger.

>>> import pandas as pd
>>> from medsilo.clone.schema import parse_schema
>>> s = parse_schema({"columns": {"x": {"type": "categorical", "categories": ["a", "b"]}}})
>>> minimum_epsilon(s, rows=100, delta=1e-6, mechanism="mst")
0.45
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from medsilo.clone import mst as mst_module
from medsilo.clone.accounting import rho_for
from medsilo.clone.aim import aim
from medsilo.clone.curator import Curator
from medsilo.clone.domain import ClipReport, TableDomain, check_columns
from medsilo.clone.model import sample
from medsilo.clone.schema import CloneSchema
from medsilo.errors import ConfigError

MechanismName = Literal["mst", "aim"]
MECHANISMS: tuple[MechanismName, ...] = ("mst", "aim")
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class CloneResult:
    """A clone and how it was made. ``clipped`` is about the private table: keep it local."""

    frame: pd.DataFrame
    mechanism: MechanismName
    epsilon: float
    delta: float
    rho: float
    rho_spent: float
    clipped: ClipReport
    details: dict[str, Any] = field(default_factory=dict)

    def csv_bytes(self) -> bytes:
        """The clone as the CSV bytes that leave the site."""
        buffer = io.StringIO()
        self.frame.to_csv(buffer, index=False)
        return buffer.getvalue().encode("utf-8")


def oneway_sigma(mechanism: MechanismName, rho: float, columns: int, rounds: int | None) -> float:
    """Noise std of each one-way marginal in MST (``sqrt(3 d / (2 rho))``) or AIM's first
    round (``sqrt(T / (1.8 rho))``, T = rounds, default 16 d)."""
    if mechanism == "mst":
        return math.sqrt(3.0 * columns / (2.0 * rho))
    t = rounds if rounds is not None else 16 * columns
    return math.sqrt(t / (2 * 0.9 * rho))


def _signal_ratio(
    schema: CloneSchema, rows: int, rho: float, mechanism: MechanismName, rounds: int | None
) -> float:
    """``3 sigma / (rows / 2)`` for the one-way measurements: at 1 or more, at most one value
    of a column can have a count above 3 sigma (MST's cut-off for telling a value from
    noise), so every column of the clone would be (nearly) constant."""
    sigma = oneway_sigma(mechanism, rho, len(schema.synthesized), rounds)
    return 3 * sigma / (rows / 2)


def minimum_epsilon(
    schema: CloneSchema,
    rows: int,
    delta: float,
    mechanism: MechanismName,
    rounds: int | None = None,
) -> float:
    """Smallest epsilon (2 significant digits, rounded up) whose one-way noise passes
    :func:`_signal_ratio` < 1."""
    lo, hi = 1e-4, 1e4
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if _signal_ratio(schema, rows, rho_for(mid, delta), mechanism, rounds) < 1:
            hi = mid
        else:
            lo = mid
    digits = 1 - math.floor(math.log10(hi))
    return float(math.ceil(hi * 10**digits) / 10**digits)


def make_clone(
    frame: pd.DataFrame,
    schema: CloneSchema,
    *,
    epsilon: float,
    delta: float,
    rows: int | None = None,
    mechanism: MechanismName = "mst",
    seed: int | None = None,
    rounds: int | None = None,
    iters: int | None = None,
    source: str = "data",
    progress: Progress | None = None,
) -> CloneResult:
    """A clone of ``frame`` (text columns as read by :func:`~medsilo.clone.domain.read_csv`)
    that is (epsilon, delta)-DP for adding or removing one row.

    ``rows``: how many rows to sample (default: the model's noisy estimate of the table's
    size). Bad input (a schema that does not fit, an empty table, an epsilon too small for
    the columns) raises before anything is measured.
    """
    if mechanism not in MECHANISMS:
        raise ConfigError(f"mechanism must be one of {', '.join(MECHANISMS)}; got {mechanism!r}")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise ConfigError(f"rows must be a whole number >= 1; got {rows!r}")
    rho = rho_for(epsilon, delta)
    check_columns(frame, schema, source)
    domain = TableDomain(schema)
    encoded = domain.encode(frame, source)
    if _signal_ratio(schema, encoded.rows, rho, mechanism, rounds) >= 1:
        need = minimum_epsilon(schema, encoded.rows, delta, mechanism, rounds)
        sigma = oneway_sigma(mechanism, rho, len(domain.columns), rounds)
        raise ConfigError(
            f"epsilon={epsilon:g} is too small for {len(domain.columns)} columns and "
            f"{encoded.rows} rows: each one-way count gets noise of std {sigma:.0f}, so at "
            f"most one value per column could stand out (3 sigma >= rows / 2) and the clone "
            f"would be noise. Raise epsilon to at least {need:g}, or clone fewer columns."
        )
    notify = progress or (lambda step, fraction: None)
    rng = np.random.default_rng(seed)
    curator = Curator(encoded.codes, dict(domain.sizes), rho, rng)
    details: dict[str, Any] = {}
    if mechanism == "mst":
        fitted, mapping, oneway = mst_module.mst(curator, iters=iters or 3000, progress=notify)
        n = rows or max(1, round(float(fitted.total)))
        codes = mst_module.decompress(sample(fitted, n, rng), mapping, oneway, rng)
        details["tree"] = [list(s.clique) for s in curator.spends if s.kind == "exponential"]
    else:
        fitted = aim(curator, rounds=rounds, final_iters=iters or 2000, progress=notify)
        n = rows or max(1, round(float(fitted.total)))
        codes = sample(fitted, n, rng)
        details["measured"] = [
            list(s.clique) for s in curator.spends if s.kind == "gaussian" and len(s.clique) > 1
        ]
    details.update(curator.summary())
    clone = domain.decode(codes, rng)
    return CloneResult(
        frame=clone,
        mechanism=mechanism,
        epsilon=float(epsilon),
        delta=float(delta),
        rho=rho,
        rho_spent=curator.spent,
        clipped=encoded.clipped,
        details=details,
    )
