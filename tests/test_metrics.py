"""classification_metrics and ECE against numbers worked out by hand (and sklearn)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from medsilo.tasks.metrics import (
    HIGHER_IS_BETTER,
    classification_metrics,
    expected_calibration_error,
)

# Binary example: y = [0, 0, 1, 1], P(class 1) = [0.1, 0.6, 0.4, 0.8] -> predictions 0 1 0 1.
Y = np.array([0, 0, 1, 1])
P1 = np.array([0.1, 0.6, 0.4, 0.8])
PROBA = np.stack([1 - P1, P1], axis=1)


def test_binary_metrics_by_hand() -> None:
    m = classification_metrics(Y, PROBA)
    assert set(m) == set(HIGHER_IS_BETTER)
    assert m["accuracy"] == 0.5
    assert m["balanced_accuracy"] == 0.5  # recall 1/2 for each class
    # AUROC: positive/negative pairs (0.4, 0.1) yes, (0.4, 0.6) no, (0.8, 0.1), (0.8, 0.6) yes
    assert m["auroc"] == pytest.approx(3 / 4)
    # Average precision: ranked 0.8 (+), 0.6 (-), 0.4 (+), 0.1 (-):
    # recall steps of 1/2 at precision 1 and 2/3
    assert m["auprc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # F1 of each class: precision 1/2, recall 1/2 -> 1/2; macro 1/2
    assert m["f1"] == pytest.approx(0.5)
    # Cohen's kappa: observed agreement 1/2, chance agreement 1/2 -> 0
    assert m["qwk"] == pytest.approx(0.0)
    # Brier: ((0.1)^2 + (0.6)^2 + (0.6)^2 + (0.2)^2) / 4
    assert m["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.04) / 4)
    # log loss: -(ln 0.9 + ln 0.4 + ln 0.4 + ln 0.8) / 4
    assert m["loss"] == pytest.approx(-(math.log(0.9) + 2 * math.log(0.4) + math.log(0.8)) / 4)
    # ECE: confidences 0.9 (right), 0.6 (wrong), 0.6 (wrong), 0.8 (right), bins of width 0.1:
    # 1/4 |1 - 0.9| + 2/4 |0 - 0.6| + 1/4 |1 - 0.8|
    assert m["ece"] == pytest.approx(0.025 + 0.3 + 0.05)


def test_binary_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 200), 0.01, 0.99)
    proba = np.stack([1 - p, p], axis=1)
    m = classification_metrics(y, proba)
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["auprc"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["accuracy"] == pytest.approx(np.mean((p > 0.5) == y))


def test_single_class_rows_give_nan_auroc_not_a_made_up_value() -> None:
    y = np.array([1, 1, 1])
    proba = np.array([[0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    m = classification_metrics(y, proba)
    assert math.isnan(m["auroc"]) and math.isnan(m["auprc"])
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["brier"] == pytest.approx((0.04 + 0.49 + 0.16) / 3)
    assert all(math.isfinite(v) for k, v in m.items() if k not in ("auroc", "auprc"))


def test_multiclass_one_vs_rest_over_present_classes() -> None:
    # 3 classes, the rows hold only classes 0 and 2: OvR AUROC over those two.
    y = np.array([0, 0, 2, 2])
    proba = np.array(
        [
            [0.6, 0.2, 0.2],
            [0.3, 0.3, 0.4],
            [0.2, 0.3, 0.5],
            [0.5, 0.1, 0.4],
        ]
    )
    m = classification_metrics(y, proba)
    # class 0 vs rest: scores of the class-0 rows 0.6, 0.3; of the others 0.2, 0.5
    #   pairs (0.6 > 0.2), (0.6 > 0.5), (0.3 > 0.2), (0.3 < 0.5) -> 3/4
    # class 2 vs rest: class-2 rows 0.5, 0.4; others 0.2, 0.4
    #   (0.5 > 0.2), (0.5 > 0.4), (0.4 > 0.2), (0.4 = 0.4 counts 1/2) -> 3.5/4
    assert m["auroc"] == pytest.approx((3 / 4 + 3.5 / 4) / 2)
    # predictions 0, 2, 2, 0 -> accuracy 1/2
    assert m["accuracy"] == 0.5
    # Brier (multiclass: squared error summed over classes, averaged over rows and classes)
    sq = [
        (0.6 - 1) ** 2 + 0.2**2 + 0.2**2,
        (0.3 - 1) ** 2 + 0.3**2 + 0.4**2,
        0.2**2 + 0.3**2 + (0.5 - 1) ** 2,
        0.5**2 + 0.1**2 + (0.4 - 1) ** 2,
    ]
    assert m["brier"] == pytest.approx(np.mean(sq) / 3)
    assert m["qwk"] == pytest.approx(
        skm.cohen_kappa_score(y, proba.argmax(1), labels=[0, 1, 2], weights="quadratic")
    )
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.6, 0.3, 0.5, 0.4])))


def test_quadratic_weighted_kappa_by_hand() -> None:
    # y = [0, 1, 2], predictions [0, 2, 2]; weights (i - j)^2 / (K - 1)^2 with K = 3.
    # Observed matrix O: (0,0) (1,2) (2,2); expected E = outer(row, col) / n with
    # row counts [1, 1, 1], column counts [1, 0, 2].
    # sum w O = w(1,2) = 1/4; sum w E = (1/3) * (w(0,2)*2 + w(1,0)*1 + w(1,2)*2 + w(2,0)*1)
    #         = (1/3) * (1*2 + 1/4 + 1/4*2 + 1) = (1/3) * 3.75 = 1.25
    # kappa = 1 - 0.25 / 1.25 = 0.8
    y = np.array([0, 1, 2])
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.1, 0.1, 0.8]])
    assert classification_metrics(y, proba)["qwk"] == pytest.approx(0.8)


def test_ece_docstring_example_and_perfect_calibration() -> None:
    # Row 1 predicts class 1 with confidence 0.8 (right), row 2 class 0 with 0.6 (right):
    # 1/2 |1 - 0.8| + 1/2 |1 - 0.6| = 0.1 + 0.2 = 0.3
    assert expected_calibration_error(
        np.array([1, 0]), np.array([[0.2, 0.8], [0.6, 0.4]])
    ) == pytest.approx(0.3)
    assert expected_calibration_error(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0


def test_ece_shares_a_bin() -> None:
    # Confidences 0.72 and 0.78 share the bin (0.7, 0.8]: acc 1/2, mean confidence 0.75;
    # 0.95 is alone and wrong: ECE = 2/3 |0.5 - 0.75| + 1/3 |0 - 0.95|
    y = np.array([0, 1, 1])
    proba = np.array([[0.72, 0.28], [0.78, 0.22], [0.95, 0.05]])
    assert expected_calibration_error(y, proba) == pytest.approx(2 / 3 * 0.25 + 0.95 / 3)
    # With one bin, everything is averaged: |1/3 - mean(0.72, 0.78, 0.95)|
    assert expected_calibration_error(y, proba, bins=1) == pytest.approx(abs(1 / 3 - 2.45 / 3))
