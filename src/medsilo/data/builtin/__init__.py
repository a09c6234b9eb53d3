"""Datasets shipped inside medsilo, so a study runs with no download.

* ``heart``: UCI Heart Disease, 4 hospitals (CC BY 4.0);
* ``eicu``: eICU-CRD Demo in-hospital mortality, 186 hospitals in 4 US regions (ODbL);
* ``retina``: RetinaMNIST diabetic-retinopathy grading, no natural sites (CC BY 4.0).

The files, their licences and SOURCE.md (provenance, verified counts) are under ``files/``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from medsilo.data.builtin import eicu, heart, retina
from medsilo.data.types import RawDataset
from medsilo.errors import DataError


@dataclass(frozen=True)
class BuiltinDataset:
    """A built-in dataset: what it is and how to load it."""

    name: str
    summary: str
    """One line, for listings."""
    description: str
    """A few lines: sites, label, counts, features, licence, citation."""
    kind: Literal["tabular", "image"]
    options: tuple[str, ...]
    """Option names that :attr:`loader` accepts as keyword arguments."""
    natural_sites: bool
    """Whether rows come with their own sites (hospitals, regions)."""
    loader: Callable[..., RawDataset]


_DATASETS: dict[str, BuiltinDataset] = {
    d.name: d
    for d in (
        BuiltinDataset(
            name="heart",
            summary="UCI Heart Disease: coronary disease, 920 patients in 4 hospitals",
            description=heart.DESCRIPTION,
            kind="tabular",
            options=(),
            natural_sites=True,
            loader=heart.load,
        ),
        BuiltinDataset(
            name="eicu",
            summary="eICU-CRD Demo: in-hospital mortality, 2,492 ICU stays in 186 hospitals",
            description=eicu.DESCRIPTION,
            kind="tabular",
            options=("group_by", "min_stays"),
            natural_sites=True,
            loader=eicu.load,
        ),
        BuiltinDataset(
            name="retina",
            summary="RetinaMNIST: diabetic-retinopathy grade, 1,600 fundus images (28x28)",
            description=retina.DESCRIPTION,
            kind="image",
            options=(),
            natural_sites=False,
            loader=retina.load,
        ),
    )
}


def names() -> tuple[str, ...]:
    """Names of the built-in datasets."""
    return tuple(_DATASETS)


def get(name: str) -> BuiltinDataset:
    """The built-in dataset called ``name``; :class:`DataError` if there is none."""
    if name in _DATASETS:
        return _DATASETS[name]
    close = difflib.get_close_matches(str(name).strip().lower(), list(_DATASETS), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise DataError(
        f"unknown dataset {name!r}{hint}; built-in datasets are: {', '.join(_DATASETS)}; "
        "or give a CSV/Parquet path with a schema"
    )


def load(name: str, options: Mapping[str, object] | None = None) -> RawDataset:
    """Load built-in dataset ``name`` with its ``options`` (checked by name here and by
    value in the loader)."""
    dataset = get(name)
    given = dict(options or {})
    unknown = [k for k in given if k not in dataset.options]
    if unknown:
        accepted = (
            f"it accepts: {', '.join(dataset.options)}"
            if dataset.options
            else "it accepts no options"
        )
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), list(dataset.options), n=1)
            hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise DataError(f"dataset '{name}': unknown option {', '.join(hints)}; {accepted}")
    return dataset.loader(**given)


__all__ = ["BuiltinDataset", "get", "load", "names"]
