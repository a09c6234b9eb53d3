"""The membership attack's permutation null (``clone.evaluate.max_auroc_null``): the
chance level of "the larger of two AUROCs", against which the clone's attack is read."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from medsilo.clone.evaluate import max_auroc_null


def test_each_draw_is_the_larger_auroc_of_a_label_permutation() -> None:
    """The rank-sum AUROC of every permuted draw equals scikit-learn's, ties included."""
    rng = np.random.default_rng(0)
    truth = np.r_[np.ones(30), np.zeros(45)].astype(bool)
    scores = [rng.normal(size=75).round(1), rng.integers(0, 4, 75).astype(float)]  # ties
    draws = max_auroc_null(truth, scores, np.random.default_rng(7), permutations=5)
    replay = np.random.default_rng(7)
    for value in draws:
        members = replay.permutation(len(truth))[: int(truth.sum())]
        permuted = np.zeros(len(truth), dtype=bool)
        permuted[members] = True
        expected = max(roc_auc_score(permuted, s) for s in scores)
        assert abs(value - expected) < 1e-12


def test_the_best_of_two_attacks_sits_above_one_half_when_nothing_leaks() -> None:
    """With no signal, one attack's AUROC centres on 0.5 but the larger of two does not:
    the bias the null makes visible (two independent attacks, 100 + 100 targets)."""
    rng = np.random.default_rng(1)
    truth = np.r_[np.ones(100), np.zeros(100)].astype(bool)
    one = max_auroc_null(truth, [rng.normal(size=200)], rng, permutations=2000)
    two = max_auroc_null(truth, [rng.normal(size=200), rng.normal(size=200)], rng, 2000)
    assert abs(one.mean() - 0.5) < 0.005
    # E[max of two independent N(0.5, se^2)] = 0.5 + se / sqrt(pi), se = 0.0408 here
    assert two.mean() > 0.5 + 0.018
    assert abs(two.mean() - (0.5 + 0.0408 / np.sqrt(np.pi))) < 0.006


def test_p_values_are_calibrated_without_signal_and_small_with_it() -> None:
    """Under no signal about 5 % of p-values fall below 0.05; a real leak gets p < 0.01."""
    rng = np.random.default_rng(2)
    truth = np.r_[np.ones(40), np.zeros(40)].astype(bool)

    def p_value(scores: list[np.ndarray]) -> float:
        observed = max(roc_auc_score(truth, s) for s in scores)
        null = max_auroc_null(truth, scores, rng, permutations=199)
        return float((1 + np.sum(null >= observed)) / 200)

    quiet = [p_value([rng.normal(size=80), rng.normal(size=80)]) for _ in range(200)]
    assert 0.01 <= np.mean(np.array(quiet) < 0.05) <= 0.10
    leaky = p_value([truth + rng.normal(size=80), rng.normal(size=80)])
    assert leaky < 0.01
