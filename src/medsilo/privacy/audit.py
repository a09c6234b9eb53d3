"""Empirical privacy audits: the math, with no training and no I/O.

Two kinds of evidence, both computed from numbers an experiment produced:

* **Membership inference** (is this record in the training set?). An attack gives each
  candidate record a score, higher meaning "member"; :func:`membership_attack` turns the
  scores of known members and non-members into the attack's ROC summary: AUC, TPR at low
  FPR (Carlini et al., "Membership inference attacks from first principles", IEEE S&P
  2022, argue that only the low-FPR regime measures privacy) and the membership
  advantage max(TPR - FPR) (Yeom et al., CSF 2018). Two attacks:

  - :func:`loss_threshold_attack`: a record is a member if the model's loss on it is
    small (Yeom et al. 2018). Needs nothing but the target model.
  - :func:`lira_scores`: the likelihood-ratio attack (LiRA) of Carlini et al. 2022, from
    shadow models trained with and without each record.

* **A lower bound on epsilon** (Jagielski, Ullman, Oprea, "Auditing differentially private
  machine learning: how private is private SGD?", NeurIPS 2020; Nasr, Song, Thakurta,
  Papernot, Carlini, "Adversary instantiation: lower bounds for differentially private
  machine learning", IEEE S&P 2021). Train many models with and without a *canary*
  record; a test that tells them apart with false-positive rate FPR and false-negative
  rate FNR proves, for any (epsilon, delta)-DP mechanism (Kairouz, Oh, Viswanath, ICML
  2015, Thm. 2.1), ``FPR + e^eps FNR >= 1 - delta`` and ``FNR + e^eps FPR >= 1 - delta``.
  With Clopper-Pearson upper bounds on FPR and FNR, :func:`epsilon_lower_bound` gives an
  epsilon that the true epsilon exceeds with the stated confidence. If it ever exceeds
  the accountant's epsilon, the implementation (or the accounting) is wrong.

Conventions: scores are "higher means member"; counts are integers; every check names
the parameter, the rule and the value (:class:`~medsilo.privacy.errors.PrivacyConfigError`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
from scipy import special, stats
from sklearn.metrics import roc_auc_score, roc_curve

from medsilo.privacy import _validate as check

__all__ = [
    "DEFAULT_FPRS",
    "AttackResult",
    "ThresholdBound",
    "ThresholdSelection",
    "balanced_inclusion",
    "clopper_pearson_upper",
    "epsilon_lower_bound",
    "epsilon_lower_bound_from_scores",
    "lira_scores",
    "logit_confidence",
    "loss_threshold_attack",
    "membership_attack",
]

FloatArray: TypeAlias = npt.NDArray[np.float64]
ThresholdSelection: TypeAlias = Literal["holdout", "bonferroni"]

DEFAULT_FPRS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-5)
"""False-positive rates at which :func:`membership_attack` reports the TPR: 10%, 1%,
0.1% and 0.001% (the last two are Carlini et al.'s, IEEE S&P 2022)."""

_STD_FLOOR = 1e-8
"""Smallest standard deviation a LiRA Gaussian may have (identical shadow scores)."""


# --------------------------------------------------------------------------- attacks


@dataclass(frozen=True)
class AttackResult:
    """The ROC summary of a membership-inference attack.

    ``tpr_at_fpr[f]`` is the largest TPR of a threshold whose *empirical* FPR is at most
    ``f`` (a step function of the ROC curve, never interpolated upwards). Below
    :attr:`fpr_floor` = 1 / ``n_nonmembers`` the only such threshold has FPR 0, so the
    value says little about the true TPR at ``f``: :meth:`resolved` tells which targets
    the sample can measure.
    """

    auc: float
    tpr_at_fpr: Mapping[float, float]
    advantage: float
    """max over thresholds of TPR - FPR (Yeom et al., CSF 2018); 0 = no better than chance."""
    n_members: int
    n_nonmembers: int

    @property
    def fpr_floor(self) -> float:
        """The smallest non-zero FPR this sample can show: 1 / ``n_nonmembers``."""
        return 1.0 / self.n_nonmembers

    def resolved(self, fpr: float) -> bool:
        """Whether the sample has enough non-members to measure a TPR at ``fpr``."""
        return fpr >= self.fpr_floor

    def to_dict(self) -> dict[str, Any]:
        return {
            "auc": self.auc,
            "tpr_at_fpr": {f"{f:g}": t for f, t in self.tpr_at_fpr.items()},
            "unresolved_fprs": [f"{f:g}" for f in self.tpr_at_fpr if not self.resolved(f)],
            "advantage": self.advantage,
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
        }


def _scores(
    parameter: str, values: Sequence[float] | npt.ArrayLike, minimum: int = 1
) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) < minimum:
        raise check.fail(parameter, f"a 1-D array of at least {minimum} scores", array.shape)
    if np.isnan(array).any():
        raise check.fail(parameter, "free of NaN", f"{int(np.isnan(array).sum())} NaN values")
    return array


def membership_attack(
    member_scores: Sequence[float] | npt.ArrayLike,
    nonmember_scores: Sequence[float] | npt.ArrayLike,
    fprs: Sequence[float] = DEFAULT_FPRS,
) -> AttackResult:
    """Evaluate membership scores (higher = "member") against the truth.

    AUC by :func:`sklearn.metrics.roc_auc_score` (ties count one half); the TPR at each
    FPR in ``fprs`` from the full ROC curve (``drop_intermediate=False``), taking the best
    threshold whose empirical FPR does not exceed the target. ``+inf`` / ``-inf`` scores
    are allowed (a certain member / non-member).

    Identical distributions give AUC 0.5; separated ones give 1:

    >>> membership_attack([1, 2, 3, 4], [1, 2, 3, 4]).auc
    0.5
    >>> r = membership_attack([5.0, 6.0, 7.0], [1.0, 2.0, 3.0, 4.0])
    >>> r.auc, r.advantage, r.tpr_at_fpr[0.001]
    (1.0, 1.0, 1.0)
    >>> r = membership_attack([0.9, 0.4], [0.5, 0.1])  # ROC: (0,0) (0,.5) (.5,.5) (.5,1) (1,1)
    >>> r.auc, r.tpr_at_fpr[0.1], r.tpr_at_fpr[0.001]
    (0.75, 0.5, 0.5)
    """
    members = _scores("member_scores", member_scores)
    nonmembers = _scores("nonmember_scores", nonmember_scores)
    targets = [check.probability_open(f"fprs[{i}]", f) for i, f in enumerate(fprs)]
    labels = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    scores = np.concatenate([members, nonmembers])
    # roc_curve cannot rank infinities; map them past the finite range, order preserved.
    finite = scores[np.isfinite(scores)]
    span = float(np.ptp(finite)) + 1.0 if len(finite) else 1.0
    low = float(finite.min()) - span if len(finite) else -1.0
    high = float(finite.max()) + span if len(finite) else 1.0
    scores = np.where(np.isposinf(scores), high, np.where(np.isneginf(scores), low, scores))
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return AttackResult(
        auc=float(roc_auc_score(labels, scores)),
        tpr_at_fpr={f: float(np.max(tpr[fpr <= f])) for f in targets},
        advantage=float(np.max(tpr - fpr)),
        n_members=len(members),
        n_nonmembers=len(nonmembers),
    )


def loss_threshold_attack(
    member_losses: Sequence[float] | npt.ArrayLike,
    nonmember_losses: Sequence[float] | npt.ArrayLike,
    fprs: Sequence[float] = DEFAULT_FPRS,
) -> AttackResult:
    """The loss-threshold attack (Yeom, Giacomelli, Fredrikson, Jha, CSF 2018): a record is
    called a member when the model's loss on it is below a threshold; every threshold is
    tried (the ROC curve of the score ``-loss``).

    >>> loss_threshold_attack([0.01, 0.02], [0.5, 2.0]).auc
    1.0
    >>> loss_threshold_attack([0.5, 2.0], [0.01, 0.02]).auc  # members fit worse: no leak
    0.0
    """
    members = _scores("member_losses", member_losses)
    nonmembers = _scores("nonmember_losses", nonmember_losses)
    return membership_attack(-members, -nonmembers, fprs)


# --------------------------------------------------------------------------- LiRA


def logit_confidence(logits: npt.ArrayLike, labels: npt.ArrayLike) -> FloatArray:
    """The logit-scaled confidence of Carlini et al. 2022 (Sec. IV-B), per example::

        phi = log(p_y / (1 - p_y)) = z_y - logsumexp_{j != y} z_j

    computed from the logits ``z`` (shape (n, classes)) without forming ``p_y``, so it
    stays finite when ``p_y`` rounds to 0 or 1. Its distribution over training runs is
    close to Gaussian, which is what LiRA assumes.

    >>> logit_confidence([[2.0, 0.0], [0.0, 0.0]], [0, 1]).tolist()  # p = 0.881, 0.5
    [2.0, 0.0]
    >>> round(float(logit_confidence([[1.0, 1.0, 1.0]], [2])[0]), 4)  # log(1/3 / (2/3))
    -0.6931
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[1] < 2:
        raise check.fail("logits", "an (n, classes) array with at least 2 classes", z.shape)
    if y.shape != (z.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise check.fail("labels", f"{z.shape[0]} integer class indices", y.shape)
    if len(y) and (y.min() < 0 or y.max() >= z.shape[1]):
        raise check.fail("labels", f"class indices in [0, {z.shape[1]})", (y.min(), y.max()))
    rows = np.arange(len(y))
    own = z[rows, y]
    others = z.copy()
    others[rows, y] = -np.inf
    return np.asarray(own - special.logsumexp(others, axis=1), dtype=np.float64)


def balanced_inclusion(
    num_models: int, num_examples: int, rng: np.random.Generator
) -> npt.NDArray[np.bool_]:
    """Which examples each shadow model trains on: a (models, examples) boolean matrix in
    which every example is IN exactly ``num_models // 2`` models (Carlini et al.'s design:
    rank a uniform matrix down each column), so every example has IN and OUT models.

    >>> mask = balanced_inclusion(4, 6, np.random.default_rng(0))
    >>> mask.sum(axis=0).tolist()
    [2, 2, 2, 2, 2, 2]
    """
    k = check.count("num_models", num_models, minimum=2)
    n = check.count("num_examples", num_examples)
    order = rng.uniform(size=(k, n)).argsort(axis=0).argsort(axis=0)
    return np.asarray(order < k // 2)


def lira_scores(
    target: npt.ArrayLike,
    shadow: npt.ArrayLike,
    shadow_in: npt.ArrayLike,
    *,
    online: bool = True,
    global_variance: bool = True,
) -> FloatArray:
    """LiRA membership scores (Carlini et al., IEEE S&P 2022, Alg. 1), higher = member.

    ``target[i]``: the target model's logit-scaled confidence on example ``i``
    (:func:`logit_confidence`); ``shadow[k, i]``: shadow model ``k``'s; ``shadow_in[k, i]``:
    whether shadow model ``k`` trained on example ``i``. Per example, fit a Gaussian to the
    IN confidences (mean mu_in, std s_in) and one to the OUT confidences (mu_out, s_out).

    * online: the log likelihood ratio
      ``log N(target; mu_in, s_in) - log N(target; mu_out, s_out)``;
    * offline (no IN models needed): the one-sided test of Sec. IV-D,
      ``log P[Z <= target]`` for Z ~ N(mu_out, s_out): how unusually *high* the target's
      confidence is for a non-member. (The authors' code uses ``-log N(target; mu_out,
      s_out)``, two-sided; the paper's one-sided form is used here.)

    ``global_variance``: one variance for all examples (pooled within-example variance of
    the IN, resp. OUT, confidences), which the paper recommends below ~64 shadow models;
    otherwise per-example sample variances (each example then needs 2 IN and 2 OUT models).
    Means are per-example means (Alg. 1; the authors' code uses medians).

    With IN confidences around 2 and OUT around 0, a target confidence of 2 scores high
    and one of 0 scores low:

    >>> shadow = [[2.1, 0.1], [1.9, -0.1], [0.1, 2.1], [-0.1, 1.9]]
    >>> inside = [[True, False], [True, False], [False, True], [False, True]]
    >>> s = lira_scores([2.0, 0.0], shadow, inside)
    >>> bool(s[0] > 0 > s[1])
    True
    """
    t = np.asarray(target, dtype=np.float64)
    sh = np.asarray(shadow, dtype=np.float64)
    mask = np.asarray(shadow_in, dtype=bool)
    if t.ndim != 1:
        raise check.fail("target", "a 1-D array of confidences", t.shape)
    if sh.ndim != 2 or sh.shape[1] != len(t):
        raise check.fail("shadow", f"a (models, {len(t)}) array", sh.shape)
    if mask.shape != sh.shape:
        raise check.fail("shadow_in", f"a boolean array of shape {sh.shape}", mask.shape)
    if not (np.isfinite(t).all() and np.isfinite(sh).all()):
        raise check.fail("target and shadow", "finite", "non-finite confidences")
    n_in, n_out = mask.sum(axis=0), (~mask).sum(axis=0)
    need = 1 if global_variance else 2
    if global_variance and (n_out.max() < 2 or (online and n_in.max() < 2)):
        raise check.fail(
            "shadow_in",
            "2 IN and 2 OUT shadow models for at least one example (to estimate a variance)",
            f"at most {int(n_in.max())} IN, {int(n_out.max())} OUT",
            "Train at least 4 shadow models.",
        )
    if n_out.min() < need or (online and n_in.min() < need):
        sides = "OUT" if not online else "IN and OUT"
        raise check.fail(
            "shadow_in",
            f"at least {need} {sides} shadow model(s) for every example",
            f"min IN {int(n_in.min())}, min OUT {int(n_out.min())}",
            "Train more shadow models, or use balanced_inclusion().",
        )
    mu_out, s_out = _gaussian_fit(sh, ~mask, global_variance)
    if not online:
        return np.asarray(stats.norm.logcdf(t, mu_out, s_out), dtype=np.float64)
    mu_in, s_in = _gaussian_fit(sh, mask, global_variance)
    ratio = stats.norm.logpdf(t, mu_in, s_in) - stats.norm.logpdf(t, mu_out, s_out)
    return np.asarray(ratio, dtype=np.float64)


def _gaussian_fit(
    values: FloatArray, mask: npt.NDArray[np.bool_], pooled: bool
) -> tuple[FloatArray, FloatArray]:
    counts = mask.sum(axis=0)
    mean = np.where(mask, values, 0.0).sum(axis=0) / np.maximum(counts, 1)
    squares = np.where(mask, (values - mean) ** 2, 0.0).sum(axis=0)
    if pooled:
        dof = int((counts - 1).clip(min=0).sum())
        variance = np.full_like(mean, squares.sum() / dof if dof > 0 else 0.0)
    else:
        variance = squares / np.maximum(counts - 1, 1)
    return mean, np.maximum(np.sqrt(variance), _STD_FLOOR)


# --------------------------------------------------------------------------- lower bound


def clopper_pearson_upper(successes: int, trials: int, alpha: float) -> float:
    """One-sided Clopper-Pearson upper bound: P[true rate <= bound] >= 1 - ``alpha``.

    The ``1 - alpha`` quantile of Beta(k + 1, n - k) (Clopper & Pearson, Biometrika 1934),
    and 1 when k = n. With k = 0 it is ``1 - alpha^(1/n)``:

    >>> round(clopper_pearson_upper(0, 10, 0.05), 6), round(1 - 0.05 ** (1 / 10), 6)
    (0.258866, 0.258866)
    >>> round(clopper_pearson_upper(5, 10, 0.025), 4)  # two-sided 95% interval: (0.1871, 0.8129)
    0.8129
    """
    n = check.count("trials", trials)
    k = check.count("successes", successes, minimum=0)
    if k > n:
        raise check.fail("successes", f"at most trials = {n}", k)
    a = check.probability_open("alpha", alpha)
    if k == n:
        return 1.0
    return float(stats.beta.ppf(1.0 - a, k + 1, n - k))


def epsilon_lower_bound(
    false_positives: int,
    n_negative: int,
    false_negatives: int,
    n_positive: int,
    delta: float,
    confidence: float = 0.95,
) -> float:
    """An epsilon that the mechanism's true epsilon (at ``delta``) exceeds with probability
    at least ``confidence``, from one test's errors (Jagielski et al., NeurIPS 2020, Alg. 2;
    Nasr et al., IEEE S&P 2021, Sec. III)::

        eps_lb = max(log((1 - delta - FNR_ub) / FPR_ub), log((1 - delta - FPR_ub) / FNR_ub), 0)

    The test said "canary IN" for ``false_positives`` of the ``n_negative`` models trained
    without the canary, and "OUT" for ``false_negatives`` of the ``n_positive`` trained
    with it; the trials must be independent. FPR_ub and FNR_ub are one-sided
    Clopper-Pearson upper bounds at level ``alpha / 2`` each, alpha = 1 - ``confidence``
    (the upper ends of the two-sided 1 - alpha intervals, as in Jagielski et al.'s code),
    so both hold together with probability >= 1 - alpha (union bound), and then every
    (eps, delta)-DP mechanism satisfies ``FPR + e^eps FNR >= 1 - delta`` (Kairouz et al.,
    ICML 2015), whence eps >= eps_lb. A term whose numerator is <= 0 is dropped.

    A perfect test on 100 + 100 trials proves about 3.28 at 95% confidence, a perfect test
    on 10 + 10 only 0.81, and a coin flip nothing:

    >>> round(epsilon_lower_bound(0, 100, 0, 100, delta=1e-12), 3)
    3.281
    >>> import math
    >>> fpr_ub = 1 - 0.025 ** (1 / 100)  # by hand: log((1 - fpr_ub) / fpr_ub)
    >>> round(math.log((1 - fpr_ub) / fpr_ub), 3)
    3.281
    >>> round(epsilon_lower_bound(0, 10, 0, 10, delta=1e-5), 2)
    0.81
    >>> epsilon_lower_bound(50, 100, 50, 100, delta=1e-5)
    0.0
    """
    delta = check.probability_open("delta", delta)
    confidence = check.probability_open("confidence", confidence)
    alpha = (1.0 - confidence) / 2.0
    fpr = clopper_pearson_upper(false_positives, n_negative, alpha)
    fnr = clopper_pearson_upper(false_negatives, n_positive, alpha)
    return float(_bounds(np.array([fpr]), np.array([fnr]), delta)[0])


def _cp_upper(k: npt.NDArray[np.int64], n: int, alpha: float) -> FloatArray:
    """:func:`clopper_pearson_upper` for an array of counts (no checks)."""
    with np.errstate(invalid="ignore"):
        upper = stats.beta.ppf(1.0 - alpha, k + 1, np.maximum(n - k, 1))
    return np.where(k >= n, 1.0, upper)


def _bounds(fpr_ub: FloatArray, fnr_ub: FloatArray, delta: float) -> FloatArray:
    """The lower bound of :func:`epsilon_lower_bound` for arrays of upper bounds."""
    best = np.zeros_like(fpr_ub)
    for num, den in ((1.0 - delta - fnr_ub, fpr_ub), (1.0 - delta - fpr_ub, fnr_ub)):
        ok = (num > 0) & (den > 0)
        term = np.log(np.where(ok, num, 1.0) / np.where(ok, den, 1.0))
        best = np.maximum(best, np.where(ok, term, 0.0))
    return best


@dataclass(frozen=True)
class ThresholdBound:
    """A lower bound on epsilon from one threshold test on scores (higher = "IN").

    The test says "IN" when a score is >= ``threshold``. The counts are over the trials the
    bound was computed on: the evaluation half (``"holdout"``) or all (``"bonferroni"``).
    """

    epsilon_lower_bound: float
    threshold: float
    false_positives: int
    n_negative: int
    false_negatives: int
    n_positive: int
    selection: ThresholdSelection
    confidence: float
    delta: float
    candidates: int
    """Thresholds compared (the Bonferroni factor for ``"bonferroni"``)."""
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "epsilon_lower_bound": self.epsilon_lower_bound,
            "threshold": self.threshold,
            "false_positives": self.false_positives,
            "n_negative": self.n_negative,
            "false_negatives": self.false_negatives,
            "n_positive": self.n_positive,
            "selection": self.selection,
            "confidence": self.confidence,
            "delta": self.delta,
            "candidates": self.candidates,
            "notes": list(self.notes),
        }


def _candidates(scores: FloatArray) -> FloatArray:
    """Midpoints between consecutive distinct scores (every distinct split of the sample)."""
    distinct = np.unique(scores[np.isfinite(scores)])
    mids = (distinct[1:] + distinct[:-1]) / 2.0
    if np.isinf(scores).any() and len(distinct):  # +-inf scores: split them off too
        mids = np.concatenate([[distinct[0] - 1.0], mids, [distinct[-1] + 1.0]])
    if len(mids) == 0:  # all scores equal (or all infinite): one useless threshold
        mids = np.array([float(distinct[0]) if len(distinct) else 0.0])
    return mids


def _errors(
    pos: FloatArray, neg: FloatArray, thresholds: FloatArray
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """False positives (``neg >= t``) and false negatives (``pos < t``) for each t."""
    fp = len(neg) - np.searchsorted(np.sort(neg), thresholds, side="left")
    fn = np.searchsorted(np.sort(pos), thresholds, side="left")
    return fp.astype(np.int64), fn.astype(np.int64)


def _bounds_at(
    pos: FloatArray, neg: FloatArray, thresholds: FloatArray, delta: float, confidence: float
) -> tuple[FloatArray, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    fp, fn = _errors(pos, neg, thresholds)
    alpha = (1.0 - confidence) / 2.0
    eps = _bounds(_cp_upper(fp, len(neg), alpha), _cp_upper(fn, len(pos), alpha), delta)
    return eps, fp, fn


def epsilon_lower_bound_from_scores(
    positive_scores: Sequence[float] | npt.ArrayLike,
    negative_scores: Sequence[float] | npt.ArrayLike,
    *,
    delta: float,
    confidence: float = 0.95,
    selection: ThresholdSelection = "holdout",
    rng: np.random.Generator | None = None,
) -> ThresholdBound:
    """The best threshold test between two samples of scores, and its epsilon lower bound.

    ``positive_scores``: one score per trial *with* the canary (higher = "IN"), e.g. minus
    the canary's loss; ``negative_scores``: one per trial without. Choosing the threshold
    on the same trials it is evaluated on would overstate the bound, so either:

    * ``"holdout"`` (default): shuffle each sample with ``rng`` and split it in halves;
      pick the threshold that maximises the bound on the first halves (ties broken by
      TPR - FPR, then by the lower threshold), then count errors on the second halves,
      which were not looked at: the Clopper-Pearson bound is valid as is. Costs half of
      the trials.
    * ``"bonferroni"``: try every candidate threshold (midpoints of the pooled scores) on
      all trials, each at confidence ``1 - (1 - confidence) / m`` for ``m`` candidates,
      and keep the best; the union bound makes the maximum valid at ``confidence``.

    With perfectly separated scores, 20 + 20 trials:

    >>> b = epsilon_lower_bound_from_scores(
    ...     np.arange(20.0) + 100, np.arange(20.0), delta=1e-5, rng=np.random.default_rng(0))
    >>> b.false_positives, b.false_negatives, b.n_positive, round(b.epsilon_lower_bound, 2)
    (0, 0, 10, 0.81)
    """
    pos = _scores("positive_scores", positive_scores, minimum=2)
    neg = _scores("negative_scores", negative_scores, minimum=2)
    delta = check.probability_open("delta", delta)
    confidence = check.probability_open("confidence", confidence)
    if selection == "holdout":
        if rng is None:
            raise check.fail("rng", "a numpy Generator for selection 'holdout'", rng)
        pos, neg = rng.permutation(pos), rng.permutation(neg)
        pos_sel, pos_eval = pos[: len(pos) // 2], pos[len(pos) // 2 :]
        neg_sel, neg_eval = neg[: len(neg) // 2], neg[len(neg) // 2 :]
        candidates = _candidates(np.concatenate([pos_sel, neg_sel]))
        eps, fp, fn = _bounds_at(pos_sel, neg_sel, candidates, delta, confidence)
        youden = (len(pos_sel) - fn) / len(pos_sel) - fp / len(neg_sel)
        best = np.lexsort((candidates, -youden, -eps))[0]  # last key sorts first
        threshold = float(candidates[best])
        eps_e, fp_e, fn_e = _bounds_at(pos_eval, neg_eval, np.array([threshold]), delta, confidence)
        return ThresholdBound(
            float(eps_e[0]),
            threshold,
            int(fp_e[0]),
            len(neg_eval),
            int(fn_e[0]),
            len(pos_eval),
            "holdout",
            confidence,
            delta,
            len(candidates),
        )
    if selection == "bonferroni":
        candidates = _candidates(np.concatenate([pos, neg]))
        m = len(candidates)
        eps, fp, fn = _bounds_at(pos, neg, candidates, delta, 1.0 - (1.0 - confidence) / m)
        best = np.lexsort((candidates, fp + fn, -eps))[0]
        return ThresholdBound(
            float(eps[best]),
            float(candidates[best]),
            int(fp[best]),
            len(neg),
            int(fn[best]),
            len(pos),
            "bonferroni",
            confidence,
            delta,
            m,
        )
    raise check.fail("selection", "'holdout' or 'bonferroni'", selection)
