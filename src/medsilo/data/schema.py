"""Declared schema of a table: which columns are features (and of what type), the label,
the site column and the grouping column.

Declaring categories and label classes up front is what a real deployment must do: every
site needs the same one-hot layout and class order without looking at other sites' data.
When they are left out, medsilo infers them from the file it was given, which is only
acceptable in simulation (the inferred list is the union over all sites).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FeatureType = Literal["numeric", "categorical"]

DEFAULT_NA_VALUES = ("", "?", "NA", "N/A", "NaN", "nan", "null", "NULL", "None")


class FeatureSpec(BaseModel):
    """One feature column. In TOML: ``age = "numeric"`` or
    ``cp = { type = "categorical", categories = ["1", "2", "3", "4"] }``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: FeatureType
    categories: tuple[str, ...] | None = None
    missing_values: tuple[str, ...] = ()
    """Extra values that mean "missing" in this column only (e.g. cholesterol ``0``)."""

    @model_validator(mode="after")
    def _categories_only_for_categorical(self) -> FeatureSpec:
        if self.categories is not None and self.type != "categorical":
            raise ValueError("'categories' is allowed only for type = 'categorical'")
        if self.categories is not None and len(set(self.categories)) != len(self.categories):
            raise ValueError(f"'categories' has duplicates: {list(self.categories)}")
        return self


class TableSchema(BaseModel):
    """Columns of a tabular dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    features: dict[str, FeatureSpec] = Field(min_length=1)
    label: str
    classes: tuple[str, ...] | None = None
    """Label values in class-index order. Inferred (sorted) from the data when absent."""
    positive: tuple[str, ...] | None = None
    """Binarize the label: these values are class ``positive``, all others ``negative``."""
    site: str | None = None
    group: str | None = None
    """Rows sharing a value here (a patient id) stay in the same train/val/test split."""
    na_values: tuple[str, ...] = DEFAULT_NA_VALUES

    @field_validator("features", mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: {"type": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TableSchema:
        if self.classes is not None and self.positive is not None:
            raise ValueError("give either 'classes' or 'positive', not both")
        special = [c for c in (self.label, self.site, self.group) if c is not None]
        for name in special:
            if name in self.features:
                raise ValueError(f"column '{name}' is both a feature and label/site/group")
        return self

    @property
    def class_names(self) -> tuple[str, ...] | None:
        if self.positive is not None:
            return ("negative", "positive")
        return self.classes

    def columns(self) -> list[str]:
        """Every column the reader needs, in a stable order."""
        extra = [c for c in (self.label, self.site, self.group) if c is not None]
        return [*self.features, *extra]
