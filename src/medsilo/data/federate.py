"""From a raw dataset to per-site, model-ready splits.

``federate`` = partition rows to sites -> check each site is usable -> split each site
(train/val/test, stratified, seeded) -> fit preprocessing on each site's training rows ->
transform. A site that cannot train (too few rows, a single class) is an error that
names the site, unless ``on_invalid_site = "drop"``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medsilo.data import partition
from medsilo.data.preprocess import ImageNormalizer, TabularPreprocessor
from medsilo.data.split import stratified_split
from medsilo.data.types import FederatedData, RawDataset, RawImages, RawTable, SiteData
from medsilo.errors import ConfigError, DataError

PartitionMethod = Literal["natural", "iid", "dirichlet", "quantity", "shards"]


class PartitionSpec(BaseModel):
    """How rows are assigned to sites and split inside each site."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: PartitionMethod = "natural"
    num_sites: int | None = Field(default=None, ge=1)
    """Required for every partition but ``natural``."""
    alpha: float = Field(default=0.5, gt=0)
    """Dirichlet concentration for ``dirichlet`` (labels) and ``quantity`` (sizes)."""
    classes_per_site: int = Field(default=2, ge=1)
    sites: tuple[str, ...] | None = None
    """Keep only these natural sites (in this order)."""
    val_fraction: float = Field(default=0.15, ge=0, lt=1)
    test_fraction: float = Field(default=0.25, gt=0, lt=1)
    min_site_rows: int = Field(default=10, ge=2)
    on_invalid_site: Literal["error", "drop"] = "error"
    preprocessing: Literal["site", "pooled"] = "site"
    """Fit imputation/scaling per site (default) or on all sites' training rows
    (simulation only: a real deployment cannot do it without releasing site statistics)."""


def federate(raw: RawDataset, spec: PartitionSpec, seed: int) -> tuple[FederatedData, list[str]]:
    """Return the federated splits and a list of warnings (dropped sites)."""
    names, parts = partition_rows(raw, spec, seed)
    warnings: list[str] = []
    kept_names, kept_parts = [], []
    for name, rows in zip(names, parts, strict=True):
        problem = _site_problem(raw.labels[rows], spec, raw.class_names)
        if problem is None:
            kept_names.append(name)
            kept_parts.append(rows)
        elif spec.on_invalid_site == "drop":
            warnings.append(f"site '{name}' dropped: {problem}")
        else:
            raise DataError(
                f"site '{name}': {problem}; every site needs at least {spec.min_site_rows} rows "
                "and two classes. Merge sites (e.g. eicu group_by = 'region'), select sites "
                "with data.sites, or set data.on_invalid_site = 'drop'"
            )
    if not kept_names:
        raise DataError("no usable site is left after dropping invalid ones")

    split_rng = np.random.default_rng([seed, 1])
    splits = []
    for name, rows in zip(kept_names, kept_parts, strict=True):
        groups = None if raw.groups is None else raw.groups[rows]
        tr, va, te = stratified_split(
            raw.labels[rows], spec.val_fraction, spec.test_fraction, split_rng, groups
        )
        # A split that rounds to no rows cannot be evaluated; say so before anything runs.
        for split, chosen, field in (("test", te, "test"), ("validation", va, "val")):
            fraction = getattr(spec, f"{field}_fraction")
            if len(chosen) == 0 and fraction > 0:
                raise DataError(
                    f"site '{name}': its {split} split is empty ({len(rows)} rows, "
                    f"data.{field}_fraction = {fraction} rounds to 0 rows in every class); "
                    f"raise data.{field}_fraction"
                )
        splits.append((rows[tr], rows[va], rows[te]))

    if isinstance(raw, RawTable):
        sites, shape, features = _tabular_sites(raw, kept_names, splits, spec)
    else:
        sites, shape = _image_sites(raw, kept_names, splits, spec)
        features = ()
    data = FederatedData(
        sites=tuple(sites),
        num_classes=len(raw.class_names),
        input_shape=shape,
        class_names=raw.class_names,
        kind=raw.kind,
        feature_names=features,
    )
    return data, warnings


def partition_rows(
    raw: RawDataset, spec: PartitionSpec, seed: int
) -> tuple[list[str], list[np.ndarray]]:
    """The sites' names and, for each, the indices of its rows in ``raw``: the natural
    sites (optionally a named subset) or a simulated partition drawn from ``seed``, before
    any split or preprocessing (:func:`federate` splits and preprocesses them; federated
    cloning clones them)."""
    rng = np.random.default_rng([seed, 0])
    if spec.partition == "natural":
        if raw.sites is None:
            raise ConfigError(
                "data.partition: 'natural' needs a site for every row, and this dataset has "
                "none; use 'iid', 'dirichlet', 'quantity' or 'shards' with data.num_sites"
            )
        names, parts = partition.natural(raw.sites)
        if spec.sites is not None:
            unknown = [s for s in spec.sites if s not in names]
            if unknown:
                raise ConfigError(f"data.sites: unknown site(s) {unknown}; the sites are {names}")
            chosen = [names.index(s) for s in spec.sites]
            names, parts = [names[k] for k in chosen], [parts[k] for k in chosen]
        return names, parts
    if spec.num_sites is None:
        raise ConfigError(f"data.num_sites: required for partition = '{spec.partition}'")
    if spec.sites is not None:
        raise ConfigError("data.sites: selecting sites by name needs partition = 'natural'")
    k, n = spec.num_sites, len(raw.labels)
    if spec.partition == "iid":
        parts = partition.iid(n, k, rng)
    elif spec.partition == "dirichlet":
        parts = partition.dirichlet(raw.labels, k, spec.alpha, rng, spec.min_site_rows)
    elif spec.partition == "quantity":
        parts = partition.quantity_skew(n, k, spec.alpha, rng, spec.min_site_rows)
    else:
        parts = partition.shards(raw.labels, k, spec.classes_per_site, rng)
    return [f"site-{i}" for i in range(k)], parts


def _site_problem(
    labels: np.ndarray, spec: PartitionSpec, class_names: tuple[str, ...]
) -> str | None:
    if len(labels) < spec.min_site_rows:
        return f"only {len(labels)} rows (data.min_site_rows = {spec.min_site_rows})"
    present = np.unique(labels)
    if len(present) < 2:
        return f"all {len(labels)} rows have the single class '{class_names[int(present[0])]}'"
    return None


Splits = list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def _tabular_sites(
    raw: RawTable, names: list[str], splits: Splits, spec: PartitionSpec
) -> tuple[list[SiteData], tuple[int, ...], tuple[str, ...]]:
    pooled = None
    if spec.preprocessing == "pooled":
        all_train = np.concatenate([tr for tr, _, _ in splits])
        pooled = TabularPreprocessor.fit(raw.frame.iloc[all_train], raw.schema)
    sites = []
    for name, (tr, va, te) in zip(names, splits, strict=True):
        prep = pooled or TabularPreprocessor.fit(raw.frame.iloc[tr], raw.schema)
        sites.append(
            SiteData(
                name=name,
                x_train=prep.transform(raw.frame.iloc[tr]),
                y_train=raw.labels[tr],
                x_val=prep.transform(raw.frame.iloc[va]),
                y_val=raw.labels[va],
                x_test=prep.transform(raw.frame.iloc[te]),
                y_test=raw.labels[te],
            )
        )
    names_out = TabularPreprocessor.fit(raw.frame.iloc[:1], raw.schema).feature_names()
    return sites, (len(names_out),), names_out


def _image_sites(
    raw: RawImages, names: list[str], splits: Splits, spec: PartitionSpec
) -> tuple[list[SiteData], tuple[int, ...]]:
    pooled = None
    if spec.preprocessing == "pooled":
        pooled = ImageNormalizer.fit(raw.images[np.concatenate([tr for tr, _, _ in splits])])
    sites = []
    for name, (tr, va, te) in zip(names, splits, strict=True):
        norm = pooled or ImageNormalizer.fit(raw.images[tr])
        sites.append(
            SiteData(
                name=name,
                x_train=norm.transform(raw.images[tr]),
                y_train=raw.labels[tr],
                x_val=norm.transform(raw.images[va]),
                y_val=raw.labels[va],
                x_test=norm.transform(raw.images[te]),
                y_test=raw.labels[te],
            )
        )
    return sites, tuple(raw.images.shape[1:])
