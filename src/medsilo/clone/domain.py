"""A table as integer codes over a domain fixed by the schema, and back.

Graphical-model synthesizers (mbi) work on a finite domain: each column becomes a code in
``0 .. size-1``. The codes depend on the schema only, never on the data:

* numeric and integer columns: ``bins`` equal-width bins over ``[lower, upper]`` (an
  integer column with fewer values than bins gets one code per value), or the bins
  between declared cut points ``edges`` (``[lower, e1), [e1, e2), ..., [ek, upper]``);
* dates: the same over days;
* categorical: one code per declared category;
* every column gets one more code, last, for "missing".

A value outside the declared bounds is clipped into the first or last bin and counted
(:class:`ClipReport`): the bounds are never widened to fit the data, since that would
reveal the extreme value. Decoding draws a value uniformly inside the bin, so the clone's
values lie inside the declared bounds.
"""

from __future__ import annotations

import datetime as dt
import difflib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medsilo.clone.schema import CloneSchema, ColumnSpec
from medsilo.errors import DataError

_EPOCH = dt.date(1970, 1, 1)


@dataclass(frozen=True)
class ClipReport:
    """How many values of each column fell outside the declared bounds (and were clipped).

    These counts are about the private table: show them to the data owner, never release
    them with the clone.
    """

    below: dict[str, int]
    above: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.below.values()) + sum(self.above.values())

    def lines(self) -> list[str]:
        out = []
        for name in sorted(set(self.below) | set(self.above)):
            lo, hi = self.below.get(name, 0), self.above.get(name, 0)
            if lo or hi:
                out.append(f"{name}: {lo} below the lower bound, {hi} above the upper bound")
        return out


@dataclass(frozen=True)
class EncodedTable:
    """Codes per synthesized column (``int64``, one per row) and the clip counts."""

    codes: dict[str, np.ndarray]
    clipped: ClipReport

    @property
    def rows(self) -> int:
        return len(next(iter(self.codes.values())))


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read a CSV (or Parquet) as text, exactly as written; :class:`DataError` if unusable."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"data file not found: {file}")
    try:
        if file.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(file).astype(object)
            frame = frame.where(frame.notna(), "").map(str)
        else:
            frame = pd.read_csv(file, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas/pyarrow parse errors, with the file name
        raise DataError(f"{file}: cannot be read as a table: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def check_columns(frame: pd.DataFrame, schema: CloneSchema, source: str) -> None:
    """The file must have the schema's columns (any order; identifier columns may be
    absent, as in a clone) and nothing else, and at least 2 rows."""
    present = list(frame.columns)
    missing = [c for c in schema.synthesized if c not in present]
    if missing:
        hints = []
        for col in missing:
            close = difflib.get_close_matches(col, present, n=1)
            hints.append(f"'{col}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise DataError(
            f"{source}: column {', '.join(hints)} declared in the schema is not in the file; "
            f"columns present: {', '.join(present)}"
        )
    extra = [c for c in present if c not in schema.columns]
    if extra:
        raise DataError(
            f"{source}: column(s) {', '.join(repr(c) for c in extra)} are not in the schema; "
            "declare every column (type = 'identifier' drops one from the clone)"
        )
    if len(frame) < 2:
        raise DataError(
            f"{source}: the table has {len(frame)} row(s); a clone needs at least 2 "
            "(and realistically hundreds) of rows"
        )


class TableDomain:
    """Maps the schema's synthesized columns to codes and back.

    >>> from medsilo.clone.schema import parse_schema
    >>> s = parse_schema({"columns": {"age": {"type": "integer", "lower": 0, "upper": 9,
    ...     "bins": 5}, "sex": {"type": "categorical", "categories": ["F", "M"]}}})
    >>> d = TableDomain(s)
    >>> d.sizes
    {'age': 6, 'sex': 3}
    >>> enc = d.encode(pd.DataFrame({"age": ["0", "9", "12", ""], "sex": ["F", "M", "", "F"]}))
    >>> enc.codes["age"].tolist(), enc.codes["sex"].tolist(), enc.clipped.above
    ([0, 4, 4, 5], [0, 1, 2, 0], {'age': 1})
    """

    def __init__(self, schema: CloneSchema) -> None:
        self.schema = schema
        self.columns = schema.synthesized
        self._edges: dict[str, np.ndarray] = {}
        self._integer_values: dict[str, np.ndarray] = {}
        self.sizes: dict[str, int] = {}
        for name in self.columns:
            spec = schema.columns[name]
            self.sizes[name] = self._values(name, spec) + 1  # + "missing"

    def _values(self, name: str, spec: ColumnSpec) -> int:
        if spec.type == "categorical":
            return len(spec.categories or ())
        lo, hi = _as_number(spec.lower), _as_number(spec.upper)
        if spec.edges is not None:
            cuts = [_as_number(e) for e in spec.edges]
            self._edges[name] = np.array([lo, *cuts, hi], dtype=np.float64)
            return spec.n_bins
        if spec.type in ("integer", "date"):
            lo_i, hi_i = int(np.ceil(lo)), int(np.floor(hi))
            if hi_i - lo_i + 1 <= spec.n_bins:
                self._integer_values[name] = np.arange(lo_i, hi_i + 1)
                return hi_i - lo_i + 1
        self._edges[name] = np.linspace(lo, hi, spec.n_bins + 1)
        return spec.n_bins

    def missing_code(self, name: str) -> int:
        return self.sizes[name] - 1

    # ------------------------------------------------------------------ encode

    def encode(self, frame: pd.DataFrame, source: str = "data") -> EncodedTable:
        """Codes of every synthesized column of ``frame`` (text as read by :func:`read_csv`)."""
        codes: dict[str, np.ndarray] = {}
        below: dict[str, int] = {}
        above: dict[str, int] = {}
        na = set(self.schema.na_values)
        for name in self.columns:
            spec = self.schema.columns[name]
            text = frame[name].astype(str).str.strip()
            missing = text.isin(na | set(spec.missing_values)).to_numpy()
            if spec.type == "categorical":
                codes[name] = self._encode_category(name, spec, text, missing, source)
                continue
            values = self._parse(name, spec, text, missing, source)
            lo, hi = _as_number(spec.lower), _as_number(spec.upper)
            present = ~missing
            n_below = int(np.sum(present & (values < lo)))
            n_above = int(np.sum(present & (values > hi)))
            if n_below:
                below[name] = n_below
            if n_above:
                above[name] = n_above
            clipped = np.clip(values, lo, hi)
            code = np.full(len(text), self.missing_code(name), dtype=np.int64)
            if name in self._integer_values:
                first = int(self._integer_values[name][0])
                last = len(self._integer_values[name]) - 1
                rounded = np.rint(clipped[present]).astype(np.int64) - first
                code[present] = np.clip(rounded, 0, last)
            else:
                edges = self._edges[name]
                idx = np.searchsorted(edges, clipped[present], side="right") - 1
                code[present] = np.clip(idx, 0, len(edges) - 2)
            codes[name] = code
        return EncodedTable(codes, ClipReport(below, above))

    def _encode_category(
        self, name: str, spec: ColumnSpec, text: pd.Series, missing: np.ndarray, source: str
    ) -> np.ndarray:
        categories = list(spec.categories or ())
        lookup = {c: i for i, c in enumerate(categories)}
        for i, c in enumerate(categories):  # "1.0" names the category "1"
            lookup.setdefault(_canonical(c), i)
        out = np.full(len(text), self.missing_code(name), dtype=np.int64)
        for row, (value, is_missing) in enumerate(zip(text, missing, strict=True)):
            if is_missing:
                continue
            code = lookup.get(value, lookup.get(_canonical(value)))
            if code is None:
                raise DataError(
                    f"{source}, row {row + 1}, column '{name}': category {value!r} is not "
                    f"among the declared categories {categories}; add it to the schema or "
                    "mark it missing (missing_values)"
                )
            out[row] = code
        return out

    def _parse(
        self, name: str, spec: ColumnSpec, text: pd.Series, missing: np.ndarray, source: str
    ) -> np.ndarray:
        kept = text.where(~missing)
        if spec.type == "date":
            parsed = pd.to_datetime(kept, errors="coerce", format="ISO8601")
            values = np.asarray((parsed - pd.Timestamp(_EPOCH)).dt.days.to_numpy(dtype=np.float64))
            rule = "a date (YYYY-MM-DD)"
        else:
            values = np.asarray(pd.to_numeric(kept, errors="coerce"), dtype=np.float64)
            rule = "a number"
        bad = np.flatnonzero(~missing & ~np.isfinite(values))
        if len(bad):
            row = int(bad[0])
            raise DataError(
                f"{source}, row {row + 1}, column '{name}': value {text.iloc[row]!r} is not "
                f"{rule}; fix it or mark it missing (missing_values = [...]) in the schema"
            )
        return values

    # ------------------------------------------------------------------ decode

    def decode(
        self, codes: dict[str, np.ndarray], rng: np.random.Generator, identifiers: int = 0
    ) -> pd.DataFrame:
        """Values for codes: a uniform draw inside each bin; "missing" -> empty text.

        Identifier columns with ``action = "surrogate"`` get fresh values ``ID-000001`` ...
        in random order (they carry nothing of the real identifiers); dropped ones are absent.
        """
        rows = len(next(iter(codes.values())))
        out: dict[str, object] = {}
        for name, spec in self.schema.columns.items():
            if not spec.synthesized:
                if spec.action == "surrogate":
                    width = max(6, len(str(rows)))
                    order = rng.permutation(rows) + 1 + identifiers
                    out[name] = [f"ID-{i:0{width}d}" for i in order]
                continue
            out[name] = self._decode_column(name, spec, np.asarray(codes[name]), rng)
        return pd.DataFrame(out)

    def _decode_column(
        self, name: str, spec: ColumnSpec, code: np.ndarray, rng: np.random.Generator
    ) -> list[str]:
        missing = code == self.missing_code(name)
        text = np.full(len(code), "", dtype=object)
        present = ~missing
        if spec.type == "categorical":
            categories = np.array(spec.categories, dtype=object)
            text[present] = categories[code[present]]
            return list(text)
        if name in self._integer_values:
            values = self._integer_values[name][code[present]].astype(np.float64)
        else:
            edges = self._edges[name]
            k = code[present]
            lo, hi = edges[k], edges[k + 1]
            if spec.type in ("integer", "date"):  # the whole numbers that encode to bin k
                first = np.ceil(lo)
                last = np.where(k == len(edges) - 2, np.floor(hi), np.ceil(hi) - 1)
                last = np.maximum(last, first)
                values = first + np.floor(rng.random(len(k)) * (last - first + 1))
            else:
                values = lo + (hi - lo) * rng.random(len(k))
        if spec.type == "date":
            text[present] = [(_EPOCH + dt.timedelta(days=int(v))).isoformat() for v in values]
        elif spec.type == "integer":
            text[present] = [str(int(v)) for v in values]
        else:
            text[present] = [f"{v:.6g}" for v in values]
        return list(text)


def _as_number(value: float | dt.date | None) -> float:
    if isinstance(value, dt.date):
        return float((value - _EPOCH).days)
    if value is None:
        raise ValueError("a bounded column without bounds")  # the schema forbids it
    return float(value)


def _canonical(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    if np.isfinite(number) and number == int(number):
        return str(int(number))
    return value
