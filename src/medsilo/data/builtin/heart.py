"""UCI Heart Disease, four sites (Cleveland, Hungary, Switzerland, VA Long Beach).

Source: the processed 14-attribute files of the UCI "Heart Disease" data set (Janosi,
Steinbrunn, Pfisterer & Detrano, 1988; doi:10.24432/C52P4X), CC BY 4.0; provenance and
verified counts in ``files/heart/SOURCE.md``.
"""

from __future__ import annotations

import io
from importlib import resources

import numpy as np
import pandas as pd

from medsilo.data.schema import FeatureSpec, TableSchema
from medsilo.data.types import RawTable

#: Site name -> file name, in the order rows are returned.
SITE_FILES: dict[str, str] = {
    "cleveland": "processed.cleveland.data",
    "hungary": "processed.hungarian.data",
    "switzerland": "processed.switzerland.data",
    "va": "processed.va.data",
}
COLUMNS = (
    "age",
    "sex",
    "cp",
    "trestbps",
    "chol",
    "fbs",
    "restecg",
    "thalach",
    "exang",
    "oldpeak",
    "slope",
    "ca",
    "thal",
    "num",
)
NUMERIC = ("age", "trestbps", "chol", "thalach", "oldpeak", "ca")
#: Declared categories (codes from heart-disease.names).
CATEGORIES: dict[str, tuple[str, ...]] = {
    "sex": ("0", "1"),  # 1 = male
    "cp": ("1", "2", "3", "4"),  # typical / atypical angina, non-anginal, asymptomatic
    "fbs": ("0", "1"),  # fasting blood sugar > 120 mg/dl
    "restecg": ("0", "1", "2"),  # normal / ST-T abnormality / LV hypertrophy
    "exang": ("0", "1"),  # exercise-induced angina
    "slope": ("1", "2", "3"),  # up / flat / down
    "thal": ("3", "6", "7"),  # normal / fixed defect / reversible defect
}
#: A 0 in these columns means "not measured" (all of Switzerland's cholesterol values).
ZERO_IS_MISSING = ("trestbps", "chol")
FEATURES = COLUMNS[:-1]

SCHEMA = TableSchema(
    features={
        name: FeatureSpec(type="numeric", missing_values=("0",) if name in ZERO_IS_MISSING else ())
        if name in NUMERIC
        else FeatureSpec(type="categorical", categories=CATEGORIES[name])
        for name in FEATURES
    },
    label="num",
    positive=("1", "2", "3", "4"),
    site="site",
)

DESCRIPTION = """\
UCI Heart Disease: coronary artery disease diagnosis in 4 hospitals, 920 patients.
Sites (natural): cleveland 303, hungary 294, switzerland 123, va 200 (VA Long Beach).
Label: angiographic disease, num > 0 -> 'positive' (509 of 920; per site 139/106/115/149).
Features (13): numeric age, trestbps, chol, thalach, oldpeak, ca; categorical sex, cp, fbs,
restecg, exang, slope, thal. '?' is missing; trestbps = 0 and chol = 0 (all of Switzerland,
49 VA rows) are missing too. ca and thal are almost absent outside Cleveland.
Licence: CC BY 4.0. Cite: Janosi, Steinbrunn, Pfisterer & Detrano (1988), UCI Machine
Learning Repository, doi:10.24432/C52P4X; Detrano et al., Am J Cardiol 64:304-310 (1989)."""


def _read(file_name: str) -> pd.DataFrame:
    data = (resources.files("medsilo.data.builtin") / "files" / "heart" / file_name).read_bytes()
    return pd.read_csv(
        io.BytesIO(data), header=None, names=list(COLUMNS), dtype=str, keep_default_na=False
    )


def _category(value: str) -> str | None:
    """``"?"`` -> None; ``"1.0"`` (Cleveland) -> ``"1"``."""
    value = value.strip()
    if value == "?" or value == "":
        return None
    number = float(value)
    return str(int(number)) if number == int(number) else value


def load() -> RawTable:
    """All 920 rows, sites in the order cleveland, hungary, switzerland, va."""
    parts = []
    for site, file_name in SITE_FILES.items():
        part = _read(file_name)
        part["site"] = site
        parts.append(part)
    raw = pd.concat(parts, ignore_index=True)

    columns: dict[str, object] = {}
    for name in FEATURES:
        text = raw[name].str.strip()
        if name in NUMERIC:
            values = np.array(
                pd.to_numeric(text.where(text != "?"), errors="raise"), dtype=np.float64
            )  # a writable copy
            if name in ZERO_IS_MISSING:
                values[values == 0.0] = np.nan
            columns[name] = values
        else:
            categories = [_category(v) for v in text]
            unknown = {c for c in categories if c is not None} - set(CATEGORIES[name])
            if unknown:  # the shipped files are fixed; this guards against a bad copy
                raise ValueError(f"heart: column {name} has undeclared values {unknown}")
            columns[name] = pd.Series(categories, dtype=object)
    frame = pd.DataFrame(columns)

    num = pd.to_numeric(raw["num"].str.strip(), errors="raise").to_numpy()
    labels = (num > 0).astype(np.int64)
    return RawTable(
        frame=frame,
        labels=labels,
        class_names=("negative", "positive"),
        schema=SCHEMA,
        sites=raw["site"].to_numpy(dtype=object),
    )
