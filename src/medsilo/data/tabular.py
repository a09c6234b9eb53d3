"""CSV and Parquet readers with a declared schema.

Every value is checked against the schema before anything is trained: a missing or
misspelt column, text in a numeric column, an infinite value or a missing label is a
:class:`~medsilo.errors.DataError` that names the file, the row (1-based data row, as a
spreadsheet shows it after the header), the column and the value.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from medsilo.data.schema import FeatureSpec, TableSchema
from medsilo.data.types import RawTable
from medsilo.errors import DataError

SUPPORTED_SUFFIXES = (".csv", ".parquet", ".pq", ".csv.gz")


def read_table(source: Path | Mapping[str, Path], schema: TableSchema) -> RawTable:
    """Read one file with a site column, or one file per site (``{site: path}``).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "t.csv").write_text("age,sex,y,hosp\\n61,m,1,A\\n?,f,0,B\\n")
    >>> s = TableSchema(features={"age": "numeric", "sex": "categorical"}, label="y", site="hosp")
    >>> t = read_table(d / "t.csv", s)
    >>> t.frame["age"].tolist(), t.labels.tolist(), t.sites.tolist()
    ([61.0, nan], [1, 0], ['A', 'B'])
    """
    if isinstance(source, Mapping):
        if schema.site is not None:
            raise DataError(
                "schema declares a site column but one file per site was given; "
                "remove 'site' from the schema or give a single file"
            )
        frames = []
        for site, path in source.items():
            frame = _read_file(Path(path), schema)
            frame["__site__"] = str(site)
            frames.append(frame)
        if not frames:
            raise DataError("no site files were given")
        raw = pd.concat(frames, ignore_index=True)
        return _to_raw(
            raw,
            schema,
            source_name=", ".join(str(p) for p in source.values()),
            site_column="__site__",
        )
    path = Path(source)
    return _to_raw(_read_file(path, schema), schema, source_name=str(path), site_column=schema.site)


def _read_file(path: Path, schema: TableSchema) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"data file not found: {path} (check the path in the study file)")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            frame = pd.read_parquet(path)
            frame = frame.astype(object).where(frame.notna(), None)
            frame = frame.map(lambda v: "" if v is None else str(v))
        elif name.endswith((".csv", ".csv.gz", ".tsv")):
            sep = "\t" if name.endswith(".tsv") else ","
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep)
        else:
            raise DataError(
                f"{path}: unsupported file type; use one of {', '.join(SUPPORTED_SUFFIXES)}"
            )
    except DataError:
        raise
    except Exception as exc:  # pandas/pyarrow parse errors: report them with the file name
        raise DataError(f"{path}: cannot be read as a table: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in schema.columns() if c not in frame.columns]
    if missing:
        hints = []
        for col in missing:
            close = difflib.get_close_matches(col, list(frame.columns), n=1)
            hints.append(f"'{col}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise DataError(
            f"{path}: column {', '.join(hints)} declared in the schema is not in the file; "
            f"columns present: {', '.join(frame.columns)}"
        )
    if frame.empty:
        raise DataError(f"{path}: the file has a header but no rows")
    frame["__file__"] = str(path)
    frame["__row__"] = np.arange(1, len(frame) + 1)
    return frame


def _where(frame: pd.DataFrame, index: int) -> str:
    return f"{frame.at[index, '__file__']}, row {frame.at[index, '__row__']}"


def _numeric(frame: pd.DataFrame, column: str, spec: FeatureSpec, na: set[str]) -> np.ndarray:
    text = frame[column].astype(str).str.strip()
    is_missing = text.isin(na | set(spec.missing_values))
    values = pd.to_numeric(text.where(~is_missing), errors="coerce")
    bad = values.isna() & ~is_missing
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{_where(frame, i)}, column '{column}': value {text.iloc[i]!r} is not a number; "
            f"declare the column categorical or mark the value as missing "
            f"(missing_values = [...]) in the schema"
        )
    out: np.ndarray = np.array(values.to_numpy(dtype=np.float64))
    inf = np.isinf(out)
    if inf.any():
        i = int(np.flatnonzero(inf)[0])
        raise DataError(
            f"{_where(frame, i)}, column '{column}': value {text.iloc[i]!r} is infinite; "
            "replace it with a finite value or leave it empty (missing)"
        )
    return out


def _canonical(value: str) -> str:
    """``"1.0"`` and ``"1"`` name the same category (files mix both)."""
    try:
        number = float(value)
    except ValueError:
        return value
    if np.isfinite(number) and number == int(number):
        return str(int(number))
    return value


def _categorical(
    frame: pd.DataFrame, column: str, spec: FeatureSpec, na: set[str]
) -> list[str | None]:
    out: list[str | None] = []
    # Declared spelling of each value: exact first, then canonical ("1.0" -> "1"), so that
    # a declared "02139" matches "02139" rather than being compared as the number 2139.
    spelling: dict[str, str] | None = None
    if spec.categories is not None:
        spelling = {_canonical(c): c for c in reversed(spec.categories)}
        spelling.update({c: c for c in spec.categories})
    for i, raw in enumerate(frame[column].astype(str).str.strip()):
        if raw in na or raw in spec.missing_values:
            out.append(None)
            continue
        if spelling is None:
            out.append(_canonical(raw))
            continue
        value = spelling.get(raw, spelling.get(_canonical(raw)))
        if value is None:
            raise DataError(
                f"{_where(frame, i)}, column '{column}': category {raw!r} is not among the "
                f"declared categories {sorted(spec.categories or ())}; add it to the schema "
                "or mark it missing"
            )
        out.append(value)
    return out


def _to_raw(
    frame: pd.DataFrame, schema: TableSchema, source_name: str, site_column: str | None
) -> RawTable:
    frame = frame.reset_index(drop=True)
    na = set(schema.na_values)
    features: dict[str, np.ndarray | list[str | None]] = {}
    for column, spec in schema.features.items():
        if spec.type == "numeric":
            features[column] = _numeric(frame, column, spec, na)
        else:
            features[column] = _categorical(frame, column, spec, na)
    labels, class_names = _labels(frame, schema, na)
    sites = None
    if site_column is not None:
        sites = frame[site_column].astype(str).str.strip().to_numpy(dtype=object)
        empty = np.flatnonzero(sites == "")
        if len(empty):
            raise DataError(
                f"{_where(frame, int(empty[0]))}, column '{site_column}': the site is empty; "
                "every row needs a site"
            )
    groups = None
    if schema.group is not None:
        groups = frame[schema.group].astype(str).to_numpy(dtype=object)
    declared = {
        name: spec
        if spec.type == "numeric" or spec.categories is not None
        else spec.model_copy(
            update={"categories": tuple(sorted({str(v) for v in features[name] if v is not None}))}
        )
        for name, spec in schema.features.items()
    }
    resolved = schema.model_copy(
        update={"features": declared, "classes": class_names if schema.positive is None else None}
    )
    frame_out = pd.DataFrame(
        {
            name: pd.Series(
                values, dtype=np.float64 if schema.features[name].type == "numeric" else object
            )
            for name, values in features.items()
        }
    )
    return RawTable(
        frame=frame_out,
        labels=labels,
        class_names=class_names,
        schema=resolved,
        sites=sites,
        groups=groups,
    )


def _labels(
    frame: pd.DataFrame, schema: TableSchema, na: set[str]
) -> tuple[np.ndarray, tuple[str, ...]]:
    text = frame[schema.label].astype(str).str.strip()
    missing = np.flatnonzero(text.isin(na).to_numpy())
    if len(missing):
        i = int(missing[0])
        raise DataError(
            f"{_where(frame, i)}, label column '{schema.label}': the label is missing "
            f"({text.iloc[i]!r}); {len(missing)} row(s) have no label; remove them or fill them in"
        )
    values = [_canonical(v) for v in text]
    if schema.positive is not None:
        positive = {_canonical(p) for p in schema.positive}
        return np.array([int(v in positive) for v in values], dtype=np.int64), (
            "negative",
            "positive",
        )
    if schema.classes is not None:
        index = {_canonical(c): k for k, c in enumerate(schema.classes)}
        for i, v in enumerate(values):
            if v not in index:
                raise DataError(
                    f"{_where(frame, i)}, label column '{schema.label}': value {text.iloc[i]!r} "
                    f"is not among the declared classes {list(schema.classes)}"
                )
        return np.array([index[v] for v in values], dtype=np.int64), tuple(schema.classes)
    classes = tuple(sorted(set(values), key=_sort_key))
    if len(classes) < 2:
        raise DataError(
            f"{frame.at[0, '__file__']}: label column '{schema.label}' has a single value "
            f"{classes[0]!r}; a classifier needs at least two classes"
        )
    index = {c: k for k, c in enumerate(classes)}
    return np.array([index[v] for v in values], dtype=np.int64), classes


def _sort_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)
