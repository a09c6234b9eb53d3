"""Classification metrics, all from scikit-learn.

``classification_metrics`` returns NaN for a metric that is undefined on the given rows
(AUROC when the rows hold a single class), never a made-up value.
"""

from __future__ import annotations

import warnings

import numpy as np

HIGHER_IS_BETTER = {
    "accuracy": True,
    "balanced_accuracy": True,
    "auroc": True,
    "auprc": True,
    "f1": True,
    "qwk": True,
    "brier": False,
    "ece": False,
    "loss": False,
}


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int = 10) -> float:
    """Top-label ECE (Guo et al. 2017): sum_b |B_b|/n * |acc(B_b) - conf(B_b)|, equal-width bins.

    >>> expected_calibration_error(np.array([1, 0]), np.array([[0.2, 0.8], [0.6, 0.4]]))
    0.3
    """
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(round(total, 12))


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """accuracy, balanced accuracy, AUROC (binary, or macro one-vs-rest), AUPRC (average
    precision; macro over classes), macro F1, quadratic weighted kappa, Brier score
    (binary: of the positive class; multiclass: mean over classes), ECE and log loss."""
    from sklearn import metrics as skm  # lazily: scikit-learn takes seconds to import

    num_classes = proba.shape[1]
    labels = np.arange(num_classes)
    pred = proba.argmax(axis=1)
    present = np.unique(y_true)
    out: dict[str, float] = {"accuracy": float(skm.accuracy_score(y_true, pred))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on classes absent from a small split
        out["balanced_accuracy"] = float(skm.balanced_accuracy_score(y_true, pred))
        out["f1"] = float(
            skm.f1_score(y_true, pred, labels=labels, average="macro", zero_division=0)
        )
        out["qwk"] = float(skm.cohen_kappa_score(y_true, pred, labels=labels, weights="quadratic"))
    onehot = np.eye(num_classes)[y_true]
    if len(present) < 2:
        out["auroc"] = out["auprc"] = float("nan")
    elif num_classes == 2:
        out["auroc"] = float(skm.roc_auc_score(y_true, proba[:, 1]))
        out["auprc"] = float(skm.average_precision_score(y_true, proba[:, 1]))
    else:
        # One-vs-rest over the classes present in these rows (absent ones are undefined).
        cols = present
        out["auroc"] = float(np.mean([skm.roc_auc_score(onehot[:, c], proba[:, c]) for c in cols]))
        out["auprc"] = float(
            np.mean([skm.average_precision_score(onehot[:, c], proba[:, c]) for c in cols])
        )
    if num_classes == 2:
        out["brier"] = float(skm.brier_score_loss(y_true, proba[:, 1], pos_label=1))
    else:
        out["brier"] = float(np.mean(np.sum((proba - onehot) ** 2, axis=1)) / num_classes)
    out["ece"] = expected_calibration_error(y_true, proba)
    out["loss"] = float(skm.log_loss(y_true, np.clip(proba, 1e-12, 1.0), labels=labels))
    return out
