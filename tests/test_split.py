"""stratified_split: disjoint, covering, every class in train, groups never straddle,
seeded; and federate's use of it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medsilo.data.split import stratified_split
from medsilo.errors import ConfigError

FAST = settings(max_examples=60, deadline=None, database=None)

fractions = st.tuples(st.floats(0.0, 0.45), st.floats(0.01, 0.45))


def _check_partition(train: np.ndarray, val: np.ndarray, test: np.ndarray, n: int) -> None:
    merged = np.concatenate([train, val, test])
    assert len(merged) == n
    assert np.array_equal(np.sort(merged), np.arange(n))
    for part in (train, val, test):
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)


@given(
    labels=st.lists(st.integers(0, 3), min_size=1, max_size=200).map(np.array),
    fracs=fractions,
    seed=st.integers(0, 2**32 - 1),
)
@FAST
def test_disjoint_cover_and_every_class_in_train(
    labels: np.ndarray, fracs: tuple[float, float], seed: int
) -> None:
    val_fraction, test_fraction = fracs
    train, val, test = stratified_split(
        labels, val_fraction, test_fraction, np.random.default_rng(seed)
    )
    _check_partition(train, val, test, len(labels))
    assert set(labels[train]) == set(labels), "every class keeps at least one training row"


@given(
    groups=st.lists(st.integers(0, 30), min_size=1, max_size=150).map(np.array),
    fracs=fractions,
    seed=st.integers(0, 2**32 - 1),
)
@FAST
def test_groups_never_straddle_splits(
    groups: np.ndarray, fracs: tuple[float, float], seed: int
) -> None:
    # Each group (patient) has a label from its id, so the class of a group is well defined.
    labels = groups % 2
    gid = np.array([f"patient-{g}" for g in groups], dtype=object)
    train, val, test = stratified_split(labels, *fracs, np.random.default_rng(seed), groups=gid)
    _check_partition(train, val, test, len(labels))
    owners = [set(gid[p]) for p in (train, val, test)]
    assert not owners[0] & owners[1]
    assert not owners[0] & owners[2]
    assert not owners[1] & owners[2]
    assert set(labels[train]) == set(labels)


def test_stratified_counts_per_class() -> None:
    # 8 rows of class 0, 4 of class 1, val = test = 0.25:
    # class 0 -> test round(2.0) = 2, val 2, train 4; class 1 -> test 1, val 1, train 2.
    labels = np.array([0] * 8 + [1] * 4)
    train, val, test = stratified_split(labels, 0.25, 0.25, np.random.default_rng(0))
    assert np.bincount(labels[train]).tolist() == [4, 2]
    assert np.bincount(labels[val]).tolist() == [2, 1]
    assert np.bincount(labels[test]).tolist() == [2, 1]


def test_a_class_with_one_row_stays_in_train() -> None:
    labels = np.array([0] * 10 + [1])
    train, val, test = stratified_split(labels, 0.3, 0.3, np.random.default_rng(0))
    assert 10 in train
    assert 1 not in labels[val]
    assert 1 not in labels[test]


def test_seeded() -> None:
    labels = np.repeat([0, 1, 2], 30)
    a = stratified_split(labels, 0.2, 0.2, np.random.default_rng(11))
    b = stratified_split(labels, 0.2, 0.2, np.random.default_rng(11))
    c = stratified_split(labels, 0.2, 0.2, np.random.default_rng(12))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_grouped_split_keeps_all_stays_of_a_patient_together() -> None:
    # 20 patients with 3 stays each; the label of the patient's first stay stratifies.
    groups = np.repeat(np.arange(20), 3).astype(str)
    labels = np.repeat(np.arange(20) % 2, 3)
    train, val, test = stratified_split(labels, 0.2, 0.2, np.random.default_rng(0), groups)
    for part in (train, val, test):
        counts = np.unique(groups[part], return_counts=True)[1]
        assert set(counts.tolist()) == {3}, "a patient's stays are all in one split"
    # 10 patients per class: 2 to test, 2 to validation, 6 to train -> 12/4/4 patients.
    assert (len(train), len(val), len(test)) == (36, 12, 12)


@pytest.mark.parametrize(
    ("val", "test"),
    [(0.5, 0.5), (-0.1, 0.2), (0.2, 0.0), (0.2, 1.0), (1.0, 0.1)],
)
def test_invalid_fractions_name_both_fields_and_values(val: float, test: float) -> None:
    with pytest.raises(ConfigError) as info:
        stratified_split(np.array([0, 1] * 10), val, test, np.random.default_rng(0))
    message = str(info.value)
    assert "data.val_fraction / data.test_fraction" in message
    assert f"got val={val}, test={test}" in message
