"""Clone schemas for the built-in tabular datasets (``heart``, ``eicu``), with bounds and
categories from public clinical knowledge (physiological ranges, the APACHE IV variable
definitions, the UCI codebook), never read from the data; and the tables as text.

>>> sorted(SCHEMAS["heart"].columns)[:3]
['age', 'ca', 'chol']
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medsilo.clone.schema import CloneSchema, parse_schema
from medsilo.data import builtin
from medsilo.data.types import RawTable

_BINARY = {"type": "categorical", "categories": ["0", "1"]}


def _num(lower: float, upper: float, bins: int = 12, kind: str = "numeric") -> dict[str, object]:
    return {"type": kind, "lower": lower, "upper": upper, "bins": bins}


_HEART = {
    "age": _num(0, 120, 24, "integer"),
    "sex": _BINARY,
    "cp": {"type": "categorical", "categories": ["1", "2", "3", "4"]},
    "trestbps": _num(50, 250, 20, "integer"),
    "chol": _num(50, 650, 20, "integer"),
    "fbs": _BINARY,
    "restecg": {"type": "categorical", "categories": ["0", "1", "2"]},
    "thalach": _num(50, 250, 20, "integer"),
    "exang": _BINARY,
    "oldpeak": _num(-3, 7, 20),
    "slope": {"type": "categorical", "categories": ["1", "2", "3"]},
    "ca": _num(0, 3, 4, "integer"),
    "thal": {"type": "categorical", "categories": ["3", "6", "7"]},
    "label": {"type": "categorical", "categories": ["negative", "positive"]},
}

_EICU = {
    "age": _num(0, 90, 18, "integer"),  # the demo caps ages at 90 ("> 89")
    "gender": {"type": "categorical", "categories": ["Female", "Male"]},
    "unittype": {"type": "categorical", "categories": []},  # filled below
    "unitadmitsource": {"type": "categorical", "categories": []},
    "intubated": _BINARY,
    "vent": _BINARY,
    "dialysis": _BINARY,
    "eyes": _num(1, 4, 4, "integer"),  # Glasgow coma scale components
    "motor": _num(1, 6, 6, "integer"),
    "verbal": _num(1, 5, 5, "integer"),
    "meds": _BINARY,
    "urine": _num(0, 10000),  # mL/day
    "wbc": _num(0, 100),  # 10^3/uL
    "temperature": _num(25, 45),  # Celsius
    "respiratoryrate": _num(0, 80),
    "sodium": _num(100, 180),
    "heartrate": _num(0, 250),
    "meanbp": _num(0, 250),
    "ph": _num(6.5, 8.0),
    "hematocrit": _num(5, 75),
    "creatinine": _num(0, 20),
    "albumin": _num(0.5, 7),
    "pao2": _num(20, 700),
    "pco2": _num(5, 150),
    "bun": _num(0, 250),
    "glucose": _num(0, 1500),
    "bilirubin": _num(0, 50),
    "fio2": _num(20, 100),  # percent
    **{
        name: _BINARY
        for name in (
            "readmit",
            "thrombolytics",
            "diabetes",
            "hepaticfailure",
            "lymphoma",
            "metastaticcancer",
            "leukemia",
            "immunosuppression",
            "cirrhosis",
            "electivesurgery",
        )
    },
    "label": {"type": "categorical", "categories": ["Alive", "Expired"]},
}


def _eicu_schema() -> CloneSchema:
    from medsilo.data.builtin import eicu

    columns = dict(_EICU)
    for name, categories in eicu.PATIENT_CATEGORIES.items():
        if name in columns:
            columns[name] = {"type": "categorical", "categories": list(categories)}
    return parse_schema({"columns": columns}, "builtin eicu clone schema")


SCHEMAS: dict[str, CloneSchema] = {
    "heart": parse_schema({"columns": _HEART}, "builtin heart clone schema"),
    "eicu": _eicu_schema(),
}
LABEL = "label"


def as_text(raw: RawTable) -> pd.DataFrame:
    """A raw table as the text a CSV would hold: numbers with ``%g``, missing as ``""``,
    and the label as its class name in column ``label``."""
    frame = raw.frame.copy()
    out = pd.DataFrame(index=frame.index)
    for name in frame.columns:
        column = frame[name]
        if pd.api.types.is_float_dtype(column):
            out[name] = [("" if np.isnan(v) else f"{v:g}") for v in column]
        else:
            out[name] = ["" if v is None or v != v else str(v) for v in column]
    out[LABEL] = np.asarray(raw.class_names, dtype=object)[raw.labels]
    return out


def load(name: str) -> tuple[pd.DataFrame, CloneSchema, np.ndarray]:
    """Built-in dataset ``name`` as text, its clone schema and its natural sites."""
    raw = builtin.load(name)
    if not isinstance(raw, RawTable) or name not in SCHEMAS:
        raise KeyError(f"no clone schema for built-in dataset {name!r}; have {sorted(SCHEMAS)}")
    sites = raw.sites if raw.sites is not None else np.full(len(raw), "all", dtype=object)
    return as_text(raw), SCHEMAS[name], sites
