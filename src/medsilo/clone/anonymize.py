"""Traditional anonymization, the baseline the seed paper compares clones with:
k-anonymity (Sweeney 2002) by global generalization and record suppression (Datafly), or
by multidimensional local recoding (Mondrian).

The first algorithm is Datafly (Sweeney, "Achieving k-anonymity privacy protection using
generalization and suppression", IJUFKS 10(5), 2002) on the clone schema's domain:

* generalization hierarchies: a numeric, integer or date column at level L merges
  ``2^L`` adjacent bins (its top level is a single interval); a categorical column has two
  levels, the value itself and "*" (suppressed); "missing" stays a value of its own;
* while more than ``max_suppression`` of the rows lie in equivalence classes (rows equal
  on every quasi-identifier) smaller than k, generalize the quasi-identifier with the most
  distinct values by one level;
* then suppress (drop) the rows still in classes smaller than k.

Each equivalence class then has at least k rows: :func:`is_k_anonymous` checks it on the
output. Generalized numeric values are written as the midpoint of their interval, and a
suppressed category as missing, so that the output has the schema's columns and can train
the same model as the real table and the clone.

Datafly recodes globally: one level per column for the whole table. With many
quasi-identifiers (every clinical column, for an attacker who knows a whole record) almost
every row is unique and global recoding generalizes each column to its top level
(Aggarwal, "On k-anonymity and the curse of dimensionality", VLDB 2005). The second
algorithm, strict multidimensional Mondrian (LeFevre, DeWitt & Ramakrishnan, "Mondrian
multidimensional k-anonymity", ICDE 2006), recodes locally and keeps every row:

* recursively split the rows at the median code of the quasi-identifier with the widest
  normalized range in the partition (codes in schema order; a categorical column's
  declared order, as an ordinal), if both halves keep >= k rows; else try the next
  widest; a partition that no quasi-identifier can split is an equivalence class;
* release each class's quasi-identifiers as one value per column: the value itself if
  the class has one, else the middle code of the class's range (numeric), "missing" when
  the class holds only missing values or categories that differ (a suppressed category).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medsilo.clone.domain import TableDomain
from medsilo.errors import ConfigError


@dataclass(frozen=True)
class Anonymized:
    """The k-anonymous table (codes per column), the generalization level of each
    quasi-identifier, and how many rows were suppressed."""

    codes: dict[str, np.ndarray]
    """Codes over the original domain (generalized values mapped to a representative)."""
    classes: dict[str, np.ndarray]
    """Generalized codes of the quasi-identifiers: rows with equal tuples are one class."""
    levels: dict[str, int]
    """Datafly's generalization level per quasi-identifier (Mondrian: none, it recodes
    each class on its own)."""
    suppressed: int
    k: int
    algorithm: str = "datafly"

    @property
    def rows(self) -> int:
        return len(next(iter(self.codes.values())))


def _top_level(domain: TableDomain, column: str) -> int:
    spec = domain.schema.columns[column]
    if spec.type == "categorical":
        return 1
    values = domain.sizes[column] - 1
    return int(np.ceil(np.log2(max(values, 2))))


def _generalize(domain: TableDomain, column: str, code: np.ndarray, level: int) -> np.ndarray:
    """Generalized code at ``level``; missing keeps its own code."""
    if level == 0:
        return code
    missing = domain.missing_code(column)
    if domain.schema.columns[column].type == "categorical":
        return np.where(code == missing, 1, 0)
    return np.where(code == missing, -1, code // (2**level))


def _representative(domain: TableDomain, column: str, code: np.ndarray, level: int) -> np.ndarray:
    """A code of the original domain for each generalized value: the middle bin of the
    interval (numeric), or missing (a suppressed category)."""
    missing = domain.missing_code(column)
    if level == 0:
        return code
    if domain.schema.columns[column].type == "categorical":
        return np.full(len(code), missing)
    width = 2**level
    first = (code // width) * width
    last = np.minimum(first + width - 1, missing - 1)
    return np.where(code == missing, missing, (first + last) // 2)


def _checked_rows(codes: dict[str, np.ndarray], quasi_identifiers: Sequence[str], k: int) -> int:
    """The table's row count, once ``k`` and the quasi-identifiers are valid for it."""
    if k < 2:
        raise ConfigError(f"k must be >= 2; got {k}")
    unknown = [q for q in quasi_identifiers if q not in codes]
    if unknown:
        raise ConfigError(f"quasi-identifier(s) {unknown} are not synthesized columns")
    if not quasi_identifiers:
        raise ConfigError("k-anonymity needs at least one quasi-identifier column")
    return len(next(iter(codes.values())))


def k_anonymize(
    domain: TableDomain,
    codes: dict[str, np.ndarray],
    quasi_identifiers: Sequence[str],
    k: int,
    max_suppression: float = 0.05,
) -> Anonymized:
    """Datafly: generalize, then suppress, until every class has >= k rows."""
    n = _checked_rows(codes, quasi_identifiers, k)
    levels = dict.fromkeys(quasi_identifiers, 0)

    def classes() -> tuple[dict[str, np.ndarray], np.ndarray]:
        gen = {q: _generalize(domain, q, codes[q], levels[q]) for q in quasi_identifiers}
        keys = np.stack([gen[q] for q in quasi_identifiers], axis=1)
        _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        return gen, counts[inverse.ravel()]

    gen, size = classes()
    while np.sum(size < k) > max_suppression * n:
        open_ = [q for q in quasi_identifiers if levels[q] < _top_level(domain, q)]
        if not open_:
            break
        widest = max(open_, key=lambda q: len(np.unique(gen[q])))
        levels[widest] += 1
        gen, size = classes()
    keep = size >= k
    out = {}
    for column, code in codes.items():
        level = levels.get(column, 0)
        out[column] = _representative(domain, column, code[keep], level) if level else code[keep]
    return Anonymized(
        codes=out,
        classes={q: g[keep] for q, g in gen.items()},
        levels=levels,
        suppressed=int(n - keep.sum()),
        k=k,
    )


def is_k_anonymous(classes: dict[str, np.ndarray], k: int) -> bool:
    """Every combination of quasi-identifier values occurs at least k times (or the
    table is empty)."""
    keys = pd.DataFrame(classes)
    if keys.empty:
        return True
    return bool(keys.value_counts().min() >= k)


def mondrian(
    domain: TableDomain,
    codes: dict[str, np.ndarray],
    quasi_identifiers: Sequence[str],
    k: int,
) -> Anonymized:
    """Strict multidimensional Mondrian (LeFevre et al. 2006): median splits while both
    halves keep >= k rows, then one released value per class and quasi-identifier."""
    n = _checked_rows(codes, quasi_identifiers, k)
    if n < k:
        raise ConfigError(f"{n} rows cannot be {k}-anonymous without suppressing them all")
    width = {q: max(domain.sizes[q] - 1, 1) for q in quasi_identifiers}

    def split(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        spans = {q: float(np.ptp(codes[q][rows])) / width[q] for q in quasi_identifiers}
        for q in sorted(quasi_identifiers, key=lambda c: -spans[c]):
            if spans[q] == 0:
                return None
            values = codes[q][rows]
            median = np.sort(values)[len(values) // 2]
            for left in (values < median, values <= median):
                if k <= int(left.sum()) <= len(rows) - k:
                    return rows[left], rows[~left]
        return None

    leaves: list[np.ndarray] = []
    stack = [np.arange(n)]
    while stack:
        rows = stack.pop()
        halves = split(rows)
        if halves is None:
            leaves.append(rows)
        else:
            stack.extend(halves)
    out = {c: v.copy() for c, v in codes.items()}
    for rows in leaves:
        for q in quasi_identifiers:
            out[q][rows] = _released(domain, q, codes[q][rows])
    return Anonymized(
        codes=out,
        classes={q: out[q] for q in quasi_identifiers},
        levels={},
        suppressed=0,
        k=k,
        algorithm="mondrian",
    )


def _released(domain: TableDomain, column: str, values: np.ndarray) -> int:
    """One value for a class: its own if the class has one, else the middle code of its
    range (numeric) or missing (categorical, or nothing but missing values)."""
    if np.all(values == values[0]):
        return int(values[0])
    missing = domain.missing_code(column)
    present = values[values != missing]
    if domain.schema.columns[column].type == "categorical" or not len(present):
        return missing
    return int((present.min() + present.max()) // 2)
