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


def _cuts(
    lower: float, upper: float, edges: list[float], kind: str = "numeric"
) -> dict[str, object]:
    return {"type": kind, "lower": lower, "upper": upper, "edges": edges}


# eICU's apacheApsVar holds the worst day-1 values that the APACHE IV acute physiology score
# is computed from, so its bins are that score's own public cut points: the APACHE III
# physiology intervals (Knaus et al., Chest 100(6), 1991, Table; kept by APACHE IV,
# Zimmerman et al., Crit Care Med 34(5), 2006), adjacent intervals merged where they would
# leave a cell of a handful of patients, plus APACHE II's (Knaus et al., Crit Care Med 13(10),
# 1985) and the standard adult reference ranges where named. Bounds are physiological
# limits. None of it is read from the eICU data.
_EICU = {
    "age": _cuts(0, 90, [45, 55, 65, 75], "integer"),  # APACHE II age points; 90 = "> 89"
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
    "urine": _cuts(0, 10000, [400, 900, 1500, 2000, 4000]),  # mL/day; APACHE III
    "wbc": _cuts(0, 100, [3, 11, 20, 25]),  # 10^3/uL; APACHE III 3/20/25, reference < 11
    "temperature": _cuts(25, 45, [34, 36, 38.5, 40]),  # Celsius; APACHE III 34/36/40, II 38.5
    "respiratoryrate": _cuts(0, 80, [12, 25, 35, 50]),  # /min; APACHE III
    "sodium": _cuts(100, 180, [120, 135, 145, 155]),  # mEq/L; APACHE III, reference 135-145
    "heartrate": _cuts(0, 250, [50, 100, 120, 140]),  # /min; APACHE III
    "meanbp": _cuts(0, 250, [60, 70, 80, 100, 130]),  # mmHg; APACHE III
    "ph": _cuts(6.5, 8.0, [7.2, 7.3, 7.35, 7.45, 7.5]),  # APACHE III acid-base, ref. 7.35-7.45
    "hematocrit": _cuts(5, 75, [20, 30, 41, 50]),  # %; APACHE II 20/30, APACHE III 41/50
    "creatinine": _cuts(0, 20, [0.5, 1.5, 1.95, 3.5]),  # mg/dL; APACHE III, APACHE II 3.5
    "albumin": _cuts(0.5, 7, [2, 2.5, 4.5]),  # g/dL; APACHE III
    "pao2": _cuts(20, 700, [50, 70, 80, 100]),  # mmHg; APACHE III, reference 80-100
    "pco2": _cuts(5, 150, [30, 35, 45, 50]),  # mmHg; APACHE III acid-base, reference 35-45
    "bun": _cuts(0, 250, [17, 20, 40, 80]),  # mg/dL; APACHE III
    "glucose": _cuts(0, 1500, [40, 60, 200, 350]),  # mg/dL; APACHE III
    "bilirubin": _cuts(0, 50, [2, 3, 5, 8]),  # mg/dL; APACHE III
    "fio2": _cuts(20, 100, [22, 50]),  # percent: room air (21), APACHE's 50 % threshold
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
