"""Partitioners: disjoint, covering, seeded; Dirichlet skew; shards' class bound;
quantity skew's sizes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medsilo.data import partition
from medsilo.errors import ConfigError

FAST = settings(max_examples=40, deadline=None, database=None)


def assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    """Every row in exactly one part; each part sorted and of integer indices."""
    merged = np.concatenate(parts)
    assert len(merged) == n, "parts must hold n rows in all (no duplicate, no loss)"
    assert np.array_equal(np.sort(merged), np.arange(n))
    for p in parts:
        assert np.issubdtype(p.dtype, np.integer)
        assert np.all(np.diff(p) > 0), "each part is sorted and has no repeats"


def label_distribution(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=num_classes) / len(labels)


labels_st = st.lists(st.integers(0, 4), min_size=40, max_size=300).map(np.array)


# -- natural ------------------------------------------------------------------------


@given(st.lists(st.sampled_from(["cleveland", "va", "hungary", "x"]), min_size=1, max_size=200))
@FAST
def test_natural_groups_rows_by_site_in_order_of_first_appearance(sites: list[str]) -> None:
    array = np.array(sites, dtype=object)
    names, parts = partition.natural(array)
    assert names == list(dict.fromkeys(sites))
    assert_disjoint_cover(parts, len(sites))
    for name, rows in zip(names, parts, strict=True):
        assert set(array[rows]) == {name}


# -- iid ----------------------------------------------------------------------------


@given(n=st.integers(1, 500), num_sites=st.integers(1, 20), seed=st.integers(0, 2**32 - 1))
@FAST
def test_iid_disjoint_cover_and_balanced(n: int, num_sites: int, seed: int) -> None:
    if n < num_sites:
        with pytest.raises(ConfigError, match=r"data\.num_sites"):
            partition.iid(n, num_sites, np.random.default_rng(seed))
        return
    parts = partition.iid(n, num_sites, np.random.default_rng(seed))
    assert len(parts) == num_sites
    assert_disjoint_cover(parts, n)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_is_seeded_and_depends_on_the_seed() -> None:
    a = partition.iid(100, 4, np.random.default_rng(7))
    b = partition.iid(100, 4, np.random.default_rng(7))
    c = partition.iid(100, 4, np.random.default_rng(8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_rejects_zero_sites() -> None:
    with pytest.raises(ConfigError, match=r"data.num_sites: must be >= 1, got 0"):
        partition.iid(10, 0, np.random.default_rng(0))


# -- dirichlet ----------------------------------------------------------------------


@given(
    labels=labels_st,
    num_sites=st.integers(1, 6),
    alpha=st.floats(0.05, 100.0),
    seed=st.integers(0, 2**32 - 1),
)
@FAST
def test_dirichlet_disjoint_cover_and_min_size(
    labels: np.ndarray, num_sites: int, alpha: float, seed: int
) -> None:
    min_size = 3
    try:
        parts = partition.dirichlet(labels, num_sites, alpha, np.random.default_rng(seed), min_size)
    except ConfigError as exc:  # a legal outcome only when no draw could satisfy min_size
        assert "data.alpha" in str(exc) or "data.num_sites" in str(exc)
        return
    assert len(parts) == num_sites
    assert_disjoint_cover(parts, len(labels))
    assert min(len(p) for p in parts) >= min_size


def _skewed_labels() -> np.ndarray:
    # 3000 rows, classes of 1500 / 900 / 600 (global distribution 0.5 / 0.3 / 0.2)
    return np.repeat(np.arange(3), [1500, 900, 600])


def test_dirichlet_huge_alpha_approaches_iid() -> None:
    labels = _skewed_labels()
    global_dist = label_distribution(labels, 3)
    parts = partition.dirichlet(labels, 4, 1e6, np.random.default_rng(0), min_size=1)
    assert_disjoint_cover(parts, len(labels))
    for p in parts:
        # Dir(1e6) shares are 1/4 +- ~0.0005: each site gets a quarter of every class.
        assert np.abs(label_distribution(labels[p], 3) - global_dist).max() < 0.01
        assert abs(len(p) - len(labels) / 4) < 10


def test_dirichlet_small_alpha_is_far_from_iid() -> None:
    labels = _skewed_labels()
    global_dist = label_distribution(labels, 3)
    parts = partition.dirichlet(labels, 4, 0.05, np.random.default_rng(0), min_size=1)
    assert_disjoint_cover(parts, len(labels))
    # total-variation distance of each site's label distribution from the global one
    tv = [0.5 * np.abs(label_distribution(labels[p], 3) - global_dist).sum() for p in parts]
    assert max(tv) > 0.3
    assert np.mean(tv) > 0.2


def test_dirichlet_skew_shrinks_as_alpha_grows() -> None:
    labels = _skewed_labels()
    global_dist = label_distribution(labels, 3)

    def mean_tv(alpha: float) -> float:
        tvs = []
        for seed in range(5):
            parts = partition.dirichlet(labels, 4, alpha, np.random.default_rng(seed), 1)
            tvs += [
                0.5 * np.abs(label_distribution(labels[p], 3) - global_dist).sum() for p in parts
            ]
        return float(np.mean(tvs))

    assert mean_tv(0.1) > mean_tv(1.0) > mean_tv(100.0)


def test_dirichlet_is_seeded() -> None:
    labels = _skewed_labels()
    a = partition.dirichlet(labels, 5, 0.5, np.random.default_rng(3))
    b = partition.dirichlet(labels, 5, 0.5, np.random.default_rng(3))
    c = partition.dirichlet(labels, 5, 0.5, np.random.default_rng(4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_dirichlet_rejects_non_positive_alpha(alpha: float) -> None:
    with pytest.raises(ConfigError, match=r"data.alpha: must be > 0"):
        partition.dirichlet(_skewed_labels(), 3, alpha, np.random.default_rng(0))


def test_dirichlet_gives_up_with_a_message_when_min_size_is_unreachable() -> None:
    labels = np.repeat([0, 1], [25, 25])  # 5 sites x 10 rows need every draw to be ~even
    with pytest.raises(ConfigError, match=r"data.alpha: no Dirichlet\(alpha=0.01\) draw"):
        partition.dirichlet(labels, 5, 0.01, np.random.default_rng(0), min_size=10)


def test_dirichlet_too_many_sites_names_the_counts() -> None:
    with pytest.raises(ConfigError, match=r"5 sites x at least 10 rows need 50 rows.*has 20"):
        partition.dirichlet(np.zeros(20, dtype=int), 5, 1.0, np.random.default_rng(0))


# -- quantity skew ------------------------------------------------------------------


@given(
    n=st.integers(1, 600),
    num_sites=st.integers(1, 12),
    alpha=st.floats(0.05, 50.0),
    min_size=st.integers(1, 15),
    seed=st.integers(0, 2**32 - 1),
)
@FAST
def test_quantity_skew_sizes_sum_to_n_and_respect_min_size(
    n: int, num_sites: int, alpha: float, min_size: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    if n < num_sites * min_size:
        with pytest.raises(ConfigError, match=r"data\.num_sites"):
            partition.quantity_skew(n, num_sites, alpha, rng, min_size)
        return
    parts = partition.quantity_skew(n, num_sites, alpha, rng, min_size)
    assert len(parts) == num_sites
    assert_disjoint_cover(parts, n)
    assert sum(len(p) for p in parts) == n
    assert min(len(p) for p in parts) >= min_size


def test_quantity_skew_small_alpha_gives_unequal_sizes_and_labels_stay_iid() -> None:
    n = 4000
    sizes = [len(p) for p in partition.quantity_skew(n, 5, 0.1, np.random.default_rng(1), 10)]
    assert max(sizes) > 3 * min(sizes)
    even = [len(p) for p in partition.quantity_skew(n, 5, 1e6, np.random.default_rng(1), 10)]
    assert max(even) - min(even) <= 10


# -- shards -------------------------------------------------------------------------


@given(
    labels=labels_st,
    num_sites=st.integers(1, 8),
    k=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
@FAST
def test_shards_disjoint_cover_and_at_most_k_classes_per_site(
    labels: np.ndarray, num_sites: int, k: int, seed: int
) -> None:
    num_classes = len(np.unique(labels))
    rng = np.random.default_rng(seed)
    if num_sites * k < num_classes:
        with pytest.raises(ConfigError, match=r"data\.classes_per_site"):
            partition.shards(labels, num_sites, k, rng)
        return
    parts = partition.shards(labels, num_sites, k, rng)
    assert len(parts) == num_sites
    assert_disjoint_cover(parts, len(labels))
    for p in parts:
        assert len(p) >= 1
        assert len(np.unique(labels[p])) <= k


def test_shards_class_sizes_not_multiples_of_the_shard_size() -> None:
    # The counterexample to equal label-sorted shards: 3 classes of 5 rows, 2 sites x 1
    # shard of 7-8 rows would give each site 2 classes.
    labels = np.repeat([0, 1, 2], 5)
    with pytest.raises(ConfigError, match=r"cannot hold the 3 classes.*at least 2"):
        partition.shards(labels, 2, 1, np.random.default_rng(0))
    parts = partition.shards(labels, 3, 1, np.random.default_rng(0))
    assert sorted(tuple(np.unique(labels[p])) for p in parts) == [(0,), (1,), (2,)]


def test_shards_on_an_imbalanced_five_class_dataset() -> None:
    # RetinaMNIST's class sizes: 714 / 186 / 326 / 282 / 92.
    labels = np.repeat(np.arange(5), [714, 186, 326, 282, 92])
    for seed in range(5):
        parts = partition.shards(labels, 5, 2, np.random.default_rng(seed))
        assert_disjoint_cover(parts, len(labels))
        assert max(len(np.unique(labels[p])) for p in parts) <= 2
        assert min(len(np.unique(labels[p])) for p in parts) >= 1


def test_shards_is_seeded_and_rejects_k_zero() -> None:
    labels = np.repeat(np.arange(4), 25)
    a = partition.shards(labels, 4, 2, np.random.default_rng(5))
    b = partition.shards(labels, 4, 2, np.random.default_rng(5))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ConfigError, match=r"data.classes_per_site: must be >= 1, got 0"):
        partition.shards(labels, 4, 0, np.random.default_rng(0))
