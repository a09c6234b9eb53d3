"""Preprocessing fitted on one site's training split.

A :class:`TabularPreprocessor` imputes, encodes and scales; an :class:`ImageNormalizer`
standardizes channels. Both are *fitted* on training rows only and then applied to the
site's validation and test rows.

Why per site (the default): the statistics of a site's data are themselves a release.
Fitting medians, means and standard deviations on pooled data would need every site to
reveal them (the mean and spread of each lab value, how often it is missing, and thus
which tests a hospital orders); a coordinator could not compute them without seeing
the data, and in a real deployment they would leave the site outside any DP accounting.
Per-site fitting also absorbs site shifts (devices, units) the way FedBN does for
normalization layers. ``scope = "pooled"`` exists only for simulation comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from medsilo.data.schema import TableSchema


@dataclass(frozen=True)
class TabularPreprocessor:
    """Median imputation + missing indicators + standardization for numeric columns,
    one-hot encoding over the *declared* categories for categorical ones (a missing or
    unseen category is the all-zero vector). The output layout depends only on the
    schema, so every site produces the same feature order.
    """

    schema: TableSchema
    medians: dict[str, float]
    means: dict[str, float]
    stds: dict[str, float]

    @classmethod
    def fit(cls, frame: pd.DataFrame, schema: TableSchema) -> TabularPreprocessor:
        medians: dict[str, float] = {}
        means: dict[str, float] = {}
        stds: dict[str, float] = {}
        for name, spec in schema.features.items():
            if spec.type != "numeric":
                continue
            values = frame[name].to_numpy(dtype=np.float64)
            observed = values[~np.isnan(values)]
            # A column never observed at this site carries no information: it becomes 0
            # after scaling and its missing indicator is 1 for every row.
            median = float(np.median(observed)) if len(observed) else 0.0
            filled = np.where(np.isnan(values), median, values)
            std = float(filled.std())
            medians[name], means[name] = median, float(filled.mean())
            stds[name] = std if std > 1e-12 else 1.0
        return cls(schema=schema, medians=medians, means=means, stds=stds)

    def feature_names(self) -> tuple[str, ...]:
        names: list[str] = []
        for name, spec in self.schema.features.items():
            if spec.type == "numeric":
                names += [name, f"{name}__missing"]
            else:
                names += [f"{name}={c}" for c in spec.categories or ()]
        return tuple(names)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        blocks: list[np.ndarray] = []
        for name, spec in self.schema.features.items():
            if spec.type == "numeric":
                values = frame[name].to_numpy(dtype=np.float64)
                missing = np.isnan(values)
                filled = np.where(missing, self.medians[name], values)
                blocks.append(((filled - self.means[name]) / self.stds[name])[:, None])
                blocks.append(missing.astype(np.float64)[:, None])
            else:
                categories = list(spec.categories or ())
                column = frame[name].to_numpy(dtype=object)
                onehot = np.zeros((len(frame), len(categories)))
                for k, category in enumerate(categories):
                    onehot[:, k] = column == category
                blocks.append(onehot)
        return np.hstack(blocks).astype(np.float32)


@dataclass(frozen=True)
class ImageNormalizer:
    """Per-channel standardization: ``(x - mean_c) / std_c`` over training images."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, images: np.ndarray) -> ImageNormalizer:
        mean = images.mean(axis=(0, 2, 3), dtype=np.float64)
        std = images.std(axis=(0, 2, 3), dtype=np.float64)
        return cls(mean=mean, std=np.where(std > 1e-12, std, 1.0))

    def transform(self, images: np.ndarray) -> np.ndarray:
        out = (images - self.mean[None, :, None, None]) / self.std[None, :, None, None]
        return np.asarray(out, dtype=np.float32)
