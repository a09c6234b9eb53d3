"""Seeded, stratified train/validation/test splits of one site's rows.

Stratification is done by hand (per class, or per group's label when rows are grouped)
so that it works for tiny sites and rare classes, where scikit-learn's splitters refuse:
each class contributes ``round(n_c * fraction)`` rows to test and to validation, the
rest to train, so every class with at least one row is in train.
"""

from __future__ import annotations

import numpy as np

from medsilo.errors import ConfigError


def stratified_split(
    labels: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return sorted (train, val, test) indices into ``labels``.

    With ``groups``, whole groups go to one split (stratified by each group's first label).

    >>> tr, va, te = stratified_split(np.array([0] * 8 + [1] * 4), 0.25, 0.25,
    ...                               np.random.default_rng(0))
    >>> len(tr), len(va), len(te)
    (6, 3, 3)
    """
    if not (0 <= val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(
            "data.val_fraction / data.test_fraction: need 0 <= val, 0 < test and val + test < 1, "
            f"got val={val_fraction}, test={test_fraction}"
        )
    if groups is None:
        units = np.arange(len(labels))
        unit_labels = labels
    else:
        names, first = np.unique(groups, return_index=True)
        units = np.arange(len(names))
        unit_labels = labels[first]
        unit_of_row = np.searchsorted(names, groups)
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in np.unique(unit_labels):
        members = rng.permutation(units[unit_labels == c])
        # Keep at least one row of every class in train: test first, then validation.
        n_test = min(round(len(members) * test_fraction), len(members) - 1)
        n_val = min(round(len(members) * val_fraction), len(members) - 1 - n_test)
        parts[2].append(members[:n_test])
        parts[1].append(members[n_test : n_test + n_val])
        parts[0].append(members[n_test + n_val :])
    chosen = [np.concatenate(p) for p in parts]
    if groups is not None:
        chosen = [np.flatnonzero(np.isin(unit_of_row, c)) for c in chosen]
    train, val, test = (np.sort(c).astype(np.int64) for c in chosen)
    return train, val, test
