"""Make a clone: encode the table over the schema's domain, run MST or AIM under
(epsilon, delta), sample, decode; and record the release in the site's privacy ledger.

With a ``ledger`` (:class:`medsilo.privacy.ledger.Ledger`, the one the site's federated
training writes to), the clone is one ``ZcdpEvent(rho)``: checked against the site's
budget before anything is measured (over budget: :class:`BudgetExceededError`, nothing
measured), and recorded, with the SHA-256 of the clone's CSV bytes, before the clone is
returned, so cloning and training share one budget.

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
from dataclasses import dataclass, field, replace
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
from medsilo.privacy.errors import BudgetExceededError
from medsilo.privacy.events import ZcdpEvent
from medsilo.privacy.ledger import Ledger, LedgerEntry, Release

MechanismName = Literal["mst", "aim"]
MECHANISMS: tuple[MechanismName, ...] = ("mst", "aim")
Progress = Callable[[str, float], None]


class EpsilonTooSmallError(ConfigError):
    """The one-way noise at this epsilon would swamp a table this small (see
    :func:`minimum_epsilon`): nothing was measured."""


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
    ledger_entry: LedgerEntry | None = None

    def csv_bytes(self) -> bytes:
        """The clone as the CSV bytes that leave the site."""
        buffer = io.StringIO()
        self.frame.to_csv(buffer, index=False)
        return buffer.getvalue().encode("utf-8")


def oneway_sigma(
    mechanism: MechanismName,
    rho: float,
    columns: int,
    rounds: int | None,
    target: str | None = None,
) -> float:
    """Noise std of each one-way marginal in MST (``sqrt(3 d / (2 rho))``; with a target
    ``sqrt(2 d / (2 rho))``) or AIM's first round (``sqrt(T / (1.8 rho))``, T = rounds,
    default 16 d)."""
    if mechanism == "mst":
        return math.sqrt(mst_module.budget_parts(target) * columns / (2.0 * rho))
    t = rounds if rounds is not None else 16 * columns
    return math.sqrt(t / (2 * 0.9 * rho))


def _signal_ratio(
    schema: CloneSchema,
    rows: int,
    rho: float,
    mechanism: MechanismName,
    rounds: int | None,
    target: str | None = None,
) -> float:
    """``3 sigma / (rows / 2)`` for the one-way measurements: at 1 or more, at most one value
    of a column can have a count above 3 sigma (MST's cut-off for telling a value from
    noise), so every column of the clone would be (nearly) constant."""
    sigma = oneway_sigma(mechanism, rho, len(schema.synthesized), rounds, target)
    return 3 * sigma / (rows / 2)


def minimum_epsilon(
    schema: CloneSchema,
    rows: int,
    delta: float,
    mechanism: MechanismName,
    rounds: int | None = None,
    target: str | None = None,
) -> float:
    """Smallest epsilon (2 significant digits, rounded up) whose one-way noise passes
    :func:`_signal_ratio` < 1."""
    lo, hi = 1e-4, 1e4
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if _signal_ratio(schema, rows, rho_for(mid, delta), mechanism, rounds, target) < 1:
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
    ledger: Ledger | None = None,
    target: str | None = None,
) -> CloneResult:
    """A clone of ``frame`` (text columns as read by :func:`~medsilo.clone.domain.read_csv`)
    that is (epsilon, delta)-DP for adding or removing one row.

    ``rows``: how many rows to sample (default: the model's noisy estimate of the table's
    size). ``target``: the column a model will predict from the clone; MST then measures
    every column's pair with it instead of a tree selected from the data
    (:mod:`medsilo.clone.mst`, target-aware tree), and AIM adds every triple with it to
    its workload (:mod:`medsilo.clone.aim`). Bad input (a schema that does not fit,
    an empty table, an epsilon too small for the columns, a release over the ``ledger``'s
    budget) raises before anything is measured.
    """
    if mechanism not in MECHANISMS:
        raise ConfigError(f"mechanism must be one of {', '.join(MECHANISMS)}; got {mechanism!r}")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise ConfigError(f"rows must be a whole number >= 1; got {rows!r}")
    if target is not None and target not in schema.synthesized:
        raise ConfigError(
            f"target {target!r} must be a synthesized column of the schema: {schema.synthesized}"
        )
    rho = rho_for(epsilon, delta)
    check_columns(frame, schema, source)
    domain = TableDomain(schema)
    encoded = domain.encode(frame, source)
    if _signal_ratio(schema, encoded.rows, rho, mechanism, rounds, target) >= 1:
        need = minimum_epsilon(schema, encoded.rows, delta, mechanism, rounds, target)
        sigma = oneway_sigma(mechanism, rho, len(domain.columns), rounds, target)
        raise EpsilonTooSmallError(
            f"epsilon={epsilon:g} is too small for {len(domain.columns)} columns and "
            f"{encoded.rows} rows: each one-way count gets noise of std {sigma:.0f}, so at "
            f"most one value per column could stand out (3 sigma >= rows / 2) and the clone "
            f"would be noise. Raise epsilon to at least {need:g}, or clone fewer columns."
        )
    if ledger is not None:
        check_budget(ledger, rho, epsilon)
    notify = progress or (lambda step, fraction: None)
    rng = np.random.default_rng(seed)
    curator = Curator(encoded.codes, dict(domain.sizes), rho, rng)
    details: dict[str, Any] = {}
    if mechanism == "mst":
        fitted, mapping, oneway = mst_module.mst(
            curator, iters=iters or 3000, progress=notify, target=target
        )
        n = rows or max(1, round(float(fitted.total)))
        codes = mst_module.decompress(sample(fitted, n, rng), mapping, oneway, rng)
        details["tree"] = [
            list(s.clique) for s in curator.spends if s.kind == "gaussian" and len(s.clique) == 2
        ]
    else:
        fitted = aim(
            curator, rounds=rounds, final_iters=iters or 2000, progress=notify, target=target
        )
        n = rows or max(1, round(float(fitted.total)))
        codes = sample(fitted, n, rng)
        details["measured"] = [
            list(s.clique) for s in curator.spends if s.kind == "gaussian" and len(s.clique) > 1
        ]
    details.update(curator.summary())
    result = CloneResult(
        frame=domain.decode(codes, rng),
        mechanism=mechanism,
        epsilon=float(epsilon),
        delta=float(delta),
        rho=rho,
        rho_spent=curator.spent,
        clipped=encoded.clipped,
        details=details,
    )
    if ledger is None:
        return result
    return replace(result, ledger_entry=record_release(ledger, result))


def check_budget(ledger: Ledger, rho: float, epsilon: float) -> None:
    """Refuse, before any measurement, a clone that the site's ledger would refuse."""
    exceeds, after = ledger.would_exceed(ZcdpEvent(rho))
    if exceeds:
        raise BudgetExceededError(
            f"site {ledger.site!r}: a clone at epsilon={epsilon:g} would bring the ledger "
            f"{ledger.path} to epsilon={after:.4g} (at its delta {ledger.budget.delta:g}), "
            f"over its budget {ledger.budget.epsilon:g} (spent "
            f"{ledger.epsilon_spent():.4g}). Refused: nothing was measured.",
            epsilon_after=after,
            budget_epsilon=ledger.budget.epsilon,
        )


def record_release(ledger: Ledger, result: CloneResult) -> LedgerEntry:
    """Record ``result`` as one ``ZcdpEvent(rho)`` with the digest of its CSV bytes (the
    payload that leaves the site); refused, with nothing written, over the budget."""
    release = Release.of_payload(
        round=0, event=ZcdpEvent(result.rho), clip=None, payload=result.csv_bytes()
    )
    return ledger.record(release)
