"""The clone schema: every column of the table, its type and its public domain.

A clone's domain must be public knowledge, declared before the data is looked at: numeric
bounds (age 0-120), the list of categories, the range of dates. Reading them from the
private table would leak (the maximum age *is* a patient's age) without being counted in
epsilon. Identifier columns (names, record numbers) are never synthesized: they are
dropped, or replaced with surrogates that carry no information.

Written in TOML (``.toml``) or JSON (``.json``), one table per column, in file order::

    na_values = ["", "NA"]

    [columns.age]
    type = "integer"
    lower = 0
    upper = 120
    bins = 24

    [columns.glucose]
    type = "numeric"
    lower = 0
    upper = 1500
    edges = [40, 60, 200, 350]    # public cut points instead of equal-width bins

    [columns.sex]
    type = "categorical"
    categories = ["F", "M"]

    [columns.admitted]
    type = "date"
    lower = "2014-01-01"
    upper = "2015-12-31"

    [columns.mrn]
    type = "identifier"
    action = "surrogate"
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import itertools
import json
import math
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medsilo.data.schema import DEFAULT_NA_VALUES
from medsilo.errors import ConfigError

ColumnType = Literal["numeric", "integer", "categorical", "date", "identifier"]
DEFAULT_BINS = 16


class ColumnSpec(BaseModel):
    """One column. Bounds are inclusive; values outside are clipped and counted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ColumnType
    lower: float | dt.date | None = None
    upper: float | dt.date | None = None
    bins: int | None = Field(default=None, ge=1, le=1000)
    """Equal-width bins over [lower, upper] (numeric, integer, date); default 16."""
    edges: tuple[float | dt.date, ...] | None = None
    """Instead of ``bins``: the interior cut points, strictly increasing and strictly inside
    (lower, upper); ``edges = [a, b]`` makes the bins [lower, a), [a, b), [b, upper].
    Public cut points (reference ranges, clinical score thresholds) keep the variation
    that matters in few cells, where equal-width bins over wide public bounds put most
    patients in one bin."""
    categories: tuple[str, ...] | None = None
    missing_values: tuple[str, ...] = ()
    """Extra values that mean "missing" in this column only."""
    action: Literal["drop", "surrogate"] = "drop"
    """What happens to an identifier column."""

    @model_validator(mode="after")
    def _consistent(self) -> ColumnSpec:
        bounded = self.type in ("numeric", "integer", "date")
        if bounded:
            if self.lower is None or self.upper is None:
                raise ValueError(
                    f"type '{self.type}' needs 'lower' and 'upper' bounds from public "
                    "knowledge (e.g. age 0-120), never from the data"
                )
            want = dt.date if self.type == "date" else float
            for name in ("lower", "upper"):
                value = getattr(self, name)
                if not isinstance(value, want) or isinstance(value, dt.datetime):
                    kind = "a date (YYYY-MM-DD)" if want is dt.date else "a number"
                    raise ValueError(f"'{name}' of a {self.type} column must be {kind}")
            if not self.lower < self.upper:  # type: ignore[operator]
                raise ValueError(f"'lower' ({self.lower}) must be below 'upper' ({self.upper})")
            if self.edges is not None:
                self._check_edges(dates=want is dt.date)
        elif self.lower is not None or self.upper is not None:
            raise ValueError(f"'lower'/'upper' are not allowed for type '{self.type}'")
        elif self.edges is not None:
            raise ValueError(f"'edges' are not allowed for type '{self.type}'")
        if self.type == "categorical":
            if not self.categories:
                raise ValueError(
                    "a categorical column needs its 'categories' (declared, not read from data)"
                )
            if len(set(self.categories)) != len(self.categories):
                raise ValueError(f"'categories' has duplicates: {list(self.categories)}")
        elif self.categories is not None:
            raise ValueError("'categories' is allowed only for type 'categorical'")
        return self

    def _check_edges(self, *, dates: bool) -> None:
        edges = list(self.edges or ())
        if self.bins is not None:
            raise ValueError(
                "give 'bins' (equal-width) or 'edges' (cut points), not both: "
                f"bins = {self.bins}, edges = {edges}"
            )
        if not edges:
            raise ValueError("'edges' is empty: give at least one cut point (or bins = 1)")
        for value in edges:
            is_date = isinstance(value, dt.date) and not isinstance(value, dt.datetime)
            if is_date != dates or isinstance(value, dt.datetime):
                kind = "dates (YYYY-MM-DD)" if dates else "numbers"
                raise ValueError(f"'edges' of a {self.type} column must be {kind}: {value!r}")
        for a, b in itertools.pairwise(edges):
            if not a < b:  # type: ignore[operator]
                raise ValueError(f"'edges' must be strictly increasing: {a} then {b} in {edges}")
        lo, hi = self.lower, self.upper
        outside = [e for e in edges if not lo < e < hi]  # type: ignore[operator]
        if outside:
            raise ValueError(
                f"'edges' are the interior cut points, strictly between lower ({lo}) and "
                f"upper ({hi}); outside: {outside}"
            )
        if self.type == "integer":  # every bin [a, b) must hold a whole number
            bounds = [float(lo), *(float(e) for e in edges), float(hi)]  # type: ignore[arg-type]
            for a, b in itertools.pairwise(bounds[:-1]):
                if math.ceil(a) >= b:
                    raise ValueError(f"the bin [{a:g}, {b:g}) holds no whole number")
            if math.ceil(bounds[-2]) > bounds[-1]:
                raise ValueError(f"the bin [{bounds[-2]:g}, {bounds[-1]:g}] holds no whole number")

    @property
    def n_bins(self) -> int:
        """How many bins cover [lower, upper]: ``len(edges) + 1``, else ``bins``."""
        if self.edges is not None:
            return len(self.edges) + 1
        return self.bins if self.bins is not None else DEFAULT_BINS

    @property
    def synthesized(self) -> bool:
        return self.type != "identifier"


class CloneSchema(BaseModel):
    """Every column of a table to clone, in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: dict[str, ColumnSpec] = Field(min_length=1)
    na_values: tuple[str, ...] = DEFAULT_NA_VALUES

    @model_validator(mode="after")
    def _something_to_clone(self) -> CloneSchema:
        if not any(spec.synthesized for spec in self.columns.values()):
            raise ValueError("every column is an identifier: there is nothing to clone")
        return self

    @property
    def synthesized(self) -> list[str]:
        """Columns that the clone models (all but identifiers), in order."""
        return [name for name, spec in self.columns.items() if spec.synthesized]

    @property
    def identifiers(self) -> list[str]:
        return [name for name, spec in self.columns.items() if not spec.synthesized]

    def to_toml(self) -> str:
        """The schema as TOML text that :func:`load_schema` reads back."""
        lines = [f"na_values = {_toml_list(self.na_values)}", ""]
        for name, spec in self.columns.items():
            lines.append(f"[columns.{json.dumps(name)}]")
            lines.append(f'type = "{spec.type}"')
            if spec.lower is not None and spec.upper is not None:
                lines.append(f"lower = {_toml_scalar(spec.lower)}")
                lines.append(f"upper = {_toml_scalar(spec.upper)}")
                if spec.edges is not None:
                    edges = ", ".join(_toml_scalar(e) for e in spec.edges)
                    lines.append(f"edges = [{edges}]")
                else:
                    lines.append(f"bins = {spec.n_bins}")
            if spec.categories is not None:
                lines.append(f"categories = {_toml_list(spec.categories)}")
            if spec.missing_values:
                lines.append(f"missing_values = {_toml_list(spec.missing_values)}")
            if spec.type == "identifier":
                lines.append(f'action = "{spec.action}"')
            lines.append("")
        return "\n".join(lines)


def _toml_scalar(value: float | dt.date) -> str:
    if isinstance(value, dt.date):
        return value.isoformat()
    return repr(float(value))


def _date_or_value(value: object) -> object:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return dt.date.fromisoformat(value)
    return value


def _toml_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def load_schema(path: str | Path) -> CloneSchema:
    """Read a clone schema from TOML or JSON; :class:`ConfigError` names file and field."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"schema file not found: {file}")
    try:
        text = file.read_text(encoding="utf-8")
        raw = json.loads(text) if file.suffix.lower() == ".json" else tomllib.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{file}: not a valid TOML/JSON schema: {exc}") from exc
    return parse_schema(raw, str(file))


def parse_schema(raw: object, where: str = "schema") -> CloneSchema:
    """Validate a schema given as a dict (from TOML/JSON); ``raw`` is not changed."""
    raw = copy.deepcopy(raw)
    if isinstance(raw, dict) and isinstance(raw.get("columns"), dict):
        for spec in raw["columns"].values():  # JSON has no dates: accept ISO strings
            if isinstance(spec, dict) and spec.get("type") == "date":
                for key in ("lower", "upper"):
                    if key in spec:
                        spec[key] = _date_or_value(spec[key])
                if isinstance(spec.get("edges"), list):
                    spec["edges"] = [_date_or_value(e) for e in spec["edges"]]
    try:
        return CloneSchema.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            problems.append(f"{where}: {loc or '(top level)'}: {err['msg']}")
        raise ConfigError("\n".join(problems)) from None
