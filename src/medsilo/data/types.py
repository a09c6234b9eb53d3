"""Data containers shared by readers, built-in datasets, partitioners and tasks.

Two stages:

* a *raw* dataset (:class:`RawTable` or :class:`RawImages`) holds every row before it is
  assigned to sites; preprocessing has not been fitted yet;
* a :class:`FederatedData` holds, per site, train/validation/test arrays that are ready
  for a model, each preprocessed with statistics fitted on that site's own training split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from medsilo.data.schema import TableSchema

Kind = Literal["tabular", "image"]


@dataclass(frozen=True)
class RawTable:
    """Tabular rows with declared feature types, before preprocessing.

    ``frame`` holds only the schema's feature columns (numeric as float with NaN for
    missing, categorical as object/str with None for missing); ``labels`` are class
    indices into ``class_names``; ``sites`` is the natural site of each row, if known.
    """

    frame: pd.DataFrame
    labels: np.ndarray
    class_names: tuple[str, ...]
    schema: TableSchema
    sites: np.ndarray | None = None
    groups: np.ndarray | None = None
    """Rows that must stay in the same split (e.g. all stays of one patient)."""

    kind: Kind = field(default="tabular", init=False)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class RawImages:
    """Images as float32 ``(N, C, H, W)`` in [0, 1] with class indices."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    sites: np.ndarray | None = None
    groups: np.ndarray | None = None
    kind: Kind = field(default="image", init=False)

    def __len__(self) -> int:
        return len(self.labels)


RawDataset = RawTable | RawImages


@dataclass(frozen=True)
class SiteData:
    """One site's model-ready splits (float32 features, int64 labels)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_train(self) -> int:
        return len(self.y_train)


@dataclass(frozen=True)
class FederatedData:
    """Every site's splits plus what a model factory needs to know."""

    sites: tuple[SiteData, ...]
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    kind: Kind
    feature_names: tuple[str, ...] = ()

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sites)

    def site(self, name: str) -> SiteData:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)
