"""Propose a clone schema from a table, for a human to review.

Everything here is read from the private data: bounds are the observed minimum and
maximum (an extreme value is one patient's value), category lists are the values that
occur (a rare category can single a patient out). A schema inferred this way and used
unchanged leaks outside epsilon: replace bounds with public knowledge (age 0-120, lab
reference ranges) and categories with the code list of the source system before cloning.

>>> import pandas as pd
>>> s = infer_schema(pd.DataFrame({"age": ["61", "70", ""], "sex": ["F", "M", "F"],
...                                "mrn": ["A1", "B2", "C3"]}))
>>> {name: spec.type for name, spec in s.columns.items()}
{'age': 'integer', 'sex': 'categorical', 'mrn': 'identifier'}
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from medsilo.clone.schema import DEFAULT_BINS, CloneSchema, parse_schema
from medsilo.data.schema import DEFAULT_NA_VALUES
from medsilo.errors import DataError

WARNING = (
    "WARNING: this schema was read from the private data. Its bounds are the observed "
    "minimum and maximum and its categories are the values present: both reveal patients "
    "and are NOT covered by epsilon. Replace them with public knowledge (clinical ranges, "
    "the source system's code lists) before cloning."
)
_ID_NAME = re.compile(r"(^|_)(id|mrn|name|ssn|nhs|patient_?id|record|phone|email)($|_)", re.I)
MAX_CATEGORIES = 50


def infer_schema(frame: pd.DataFrame) -> CloneSchema:
    """A proposal: numeric/integer/date/categorical/identifier per column (see module)."""
    if len(frame) == 0:
        raise DataError("the table has no rows: nothing to infer a schema from")
    columns: dict[str, dict[str, Any]] = {}
    na = set(DEFAULT_NA_VALUES)
    for name in frame.columns:
        text = frame[name].astype(str).str.strip()
        present = text[~text.isin(na)]
        columns[str(name)] = _infer_column(str(name), present, len(frame))
    return parse_schema({"columns": columns}, "inferred schema")


def _infer_column(name: str, present: pd.Series, rows: int) -> dict[str, Any]:
    if present.empty:
        return {"type": "categorical", "categories": ["?"]}
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.notna().all():
        lo, hi = float(numbers.min()), float(numbers.max())
        integer = bool(np.all(numbers == np.round(numbers)))
        if integer and set(numbers.unique()) <= {0.0, 1.0}:  # a 0/1 flag
            return {"type": "categorical", "categories": sorted(present.unique().tolist())}
        if _ID_NAME.search(name) and numbers.nunique() == len(present):
            return {"type": "identifier", "action": "drop"}
        if hi == lo:
            hi = lo + 1
        return {
            "type": "integer" if integer else "numeric",
            "lower": lo,
            "upper": hi,
            "bins": DEFAULT_BINS,
        }
    dates = pd.to_datetime(present, errors="coerce", format="ISO8601")
    if dates.notna().mean() >= 0.95:
        lo_d, hi_d = dates.min().date(), dates.max().date()
        if hi_d == lo_d:
            hi_d = lo_d + pd.Timedelta(days=1)
        return {"type": "date", "lower": lo_d, "upper": hi_d, "bins": DEFAULT_BINS}
    uniques = int(present.nunique())
    if _ID_NAME.search(name) or uniques > MAX_CATEGORIES or uniques == len(present) > 10:
        return {"type": "identifier", "action": "drop"}
    return {"type": "categorical", "categories": sorted(present.unique().tolist())}
