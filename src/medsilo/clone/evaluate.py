"""Evidence that a clone is useful and safe: fidelity, utility, privacy.

All measures work on the schema's domain (codes, :mod:`medsilo.clone.domain`), so that the
real table, the clone, the holdout and a k-anonymized table are compared on equal terms.

Fidelity
    1-way and 2-way marginal total variation distance, ``TVD = 1/2 sum |p - q|`` (the
    measure of the NIST 2018 challenge and of AIM's evaluation), and the difference of the
    correlation matrices (Pearson on the codes' bin midpoints, numeric columns; Cramer's V
    would need more rows than clinical tables have per cell).
Utility
    TSTR (train on the clone, test on real held-out rows) vs TRTR (train on the real table)
    vs the same model trained on k-anonymized real data (Esteban et al. 2017; Jordon et al.
    2022 for the protocol). The model is logistic regression on one-hot codes.
Privacy
    distance to closest record (DCR) of clone rows to the real rows, against the DCR of
    holdout rows (a clone that copies records sits closer than fresh data does); a
    membership-inference attack in the style of DOMIAS (van Breugel, Sun, Qian & van der
    Schaar, AISTATS 2023): score a row by the clone's density over a reference density,
    members = real training rows, non-members = held-out rows; and counts of real rows the
    clone reproduces exactly, and of rare (count <= 2) pairs of values it reproduces,
    with the same counts for the holdout as the baseline.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from medsilo.clone.anonymize import is_k_anonymous, k_anonymize, mondrian
from medsilo.clone.domain import TableDomain, check_columns
from medsilo.clone.schema import CloneSchema
from medsilo.errors import ConfigError

Codes = dict[str, np.ndarray]
Algorithm = Literal["datafly", "mondrian"]


# ---------------------------------------------------------------------- fidelity


def marginal(codes: Codes, sizes: dict[str, int], clique: Sequence[str]) -> np.ndarray:
    """Normalised counts over ``clique`` (flattened)."""
    shape = tuple(sizes[c] for c in clique)
    index = np.ravel_multi_index(tuple(codes[c] for c in clique), shape)
    counts = np.bincount(index, minlength=int(np.prod(shape))).astype(np.float64)
    out: np.ndarray = counts / max(float(counts.sum()), 1.0)
    return out


def tvd(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance ``1/2 ||p - q||_1``.

    >>> tvd(np.array([0.5, 0.5]), np.array([1.0, 0.0]))
    0.5
    """
    return 0.5 * float(np.abs(p - q).sum())


def fidelity(real: Codes, clone: Codes, sizes: dict[str, int]) -> dict[str, Any]:
    columns = list(sizes)
    one = {c: tvd(marginal(real, sizes, (c,)), marginal(clone, sizes, (c,))) for c in columns}
    two = {
        f"{a}|{b}": tvd(marginal(real, sizes, (a, b)), marginal(clone, sizes, (a, b)))
        for a, b in itertools.combinations(columns, 2)
    }
    return {
        "tvd_1way": one,
        "tvd_2way": two,
        "tvd_1way_mean": float(np.mean(list(one.values()))),
        "tvd_2way_mean": float(np.mean(list(two.values()))) if two else 0.0,
        "tvd_2way_max": float(max(two.values())) if two else 0.0,
    }


def correlations(codes: Codes, domain: TableDomain) -> tuple[list[str], np.ndarray]:
    """Pearson correlations between the ordered columns (numeric, integer, date), on bin
    indices, missing rows left out pairwise."""
    names = [
        c for c in domain.columns if domain.schema.columns[c].type in ("numeric", "integer", "date")
    ]
    values = pd.DataFrame(
        {
            c: np.where(codes[c] == domain.missing_code(c), np.nan, codes[c]).astype(float)
            for c in names
        }
    )
    matrix = values.corr(min_periods=3).to_numpy() if names else np.zeros((0, 0))
    return names, np.nan_to_num(matrix, nan=0.0)


# ---------------------------------------------------------------------- utility


def one_hot(codes: Codes, sizes: dict[str, int], columns: Sequence[str]) -> np.ndarray:
    """Rows x (sum of domain sizes) 0/1 features."""
    n = len(codes[columns[0]])
    blocks = []
    for c in columns:
        block = np.zeros((n, sizes[c]), dtype=np.float32)
        block[np.arange(n), codes[c]] = 1.0
        blocks.append(block)
    return np.concatenate(blocks, axis=1)


def _labels(codes: Codes, label: str, positive: int) -> np.ndarray:
    out: np.ndarray = (codes[label] == positive).astype(np.int64)
    return out


def train_test(
    train: Codes, test: Codes, sizes: dict[str, int], label: str, positive: int, seed: int
) -> dict[str, float]:
    """AUROC and accuracy on ``test`` of logistic regression trained on ``train``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score

    features = [c for c in sizes if c != label]
    y_train, y_test = _labels(train, label, positive), _labels(test, label, positive)
    if len(np.unique(y_train)) < 2:  # a degenerate clone: predict the only class it has
        p = np.full(len(y_test), float(y_train[0]) if len(y_train) else 0.0)
    else:
        model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
        model.fit(one_hot(train, sizes, features), y_train)
        p = model.predict_proba(one_hot(test, sizes, features))[:, 1]
    auroc = float(roc_auc_score(y_test, p)) if len(np.unique(y_test)) == 2 else float("nan")
    return {"auroc": auroc, "accuracy": float(accuracy_score(y_test, p >= 0.5))}


# ---------------------------------------------------------------------- privacy


def _distances(a: np.ndarray, b: np.ndarray, chunk: int = 512) -> np.ndarray:
    """For each row of ``a``, the Hamming distance (share of columns that differ) to its
    closest row of ``b``: on codes, every column counts the same."""
    out = np.empty(len(a))
    for start in range(0, len(a), chunk):
        block = a[start : start + chunk]
        diff = (block[:, None, :] != b[None, :, :]).mean(axis=2)
        out[start : start + chunk] = diff.min(axis=1)
    return out


def _matrix(codes: Codes, columns: Sequence[str]) -> np.ndarray:
    return np.stack([codes[c] for c in columns], axis=1)


def dcr(real: Codes, clone: Codes, holdout: Codes, columns: Sequence[str]) -> dict[str, Any]:
    """Distance to closest real record: clone rows vs holdout rows."""
    r = _matrix(real, columns)
    c = _distances(_matrix(clone, columns), r)
    h = _distances(_matrix(holdout, columns), r)
    q05 = float(np.quantile(h, 0.05))
    return {
        "clone_median": float(np.median(c)),
        "holdout_median": float(np.median(h)),
        "clone_share_below_holdout_p05": float(np.mean(c < q05)),
        "clone_exact_share": float(np.mean(c == 0)),
        "holdout_exact_share": float(np.mean(h == 0)),
        "clone": c,
        "holdout": h,
    }


def leakage(real: Codes, clone: Codes, holdout: Codes, columns: Sequence[str]) -> dict[str, Any]:
    """Exact-row and rare-combination reproduction, clone vs holdout (the baseline)."""
    real_rows = {tuple(row) for row in _matrix(real, columns)}
    counts = pd.Series([tuple(row) for row in _matrix(real, columns)]).value_counts()
    unique_rows = {row for row, n in counts.items() if n == 1}

    def exact(codes: Codes) -> tuple[int, int]:
        rows = [tuple(row) for row in _matrix(codes, columns)]
        return sum(r in real_rows for r in rows), len({r for r in rows if r in unique_rows})

    rare_total, rare_clone, rare_holdout = 0, 0, 0
    for a, b in itertools.combinations(columns, 2):
        pairs = pd.Series(list(zip(real[a], real[b], strict=True))).value_counts()
        rare = {p for p, n in pairs.items() if n <= 2}
        rare_total += len(rare)
        rare_clone += len(rare & set(zip(clone[a], clone[b], strict=True)))
        rare_holdout += len(rare & set(zip(holdout[a], holdout[b], strict=True)))
    clone_exact, clone_unique = exact(clone)
    holdout_exact, holdout_unique = exact(holdout)
    n_c, n_h = len(clone[columns[0]]), len(holdout[columns[0]])
    return {
        "real_unique_rows": len(unique_rows),
        "clone_rows_equal_to_a_real_row": clone_exact,
        "clone_rows_equal_share": clone_exact / n_c,
        "holdout_rows_equal_share": holdout_exact / n_h,
        "real_unique_rows_in_clone": clone_unique,
        "real_unique_rows_in_holdout": holdout_unique,
        "rare_pairs_in_real": rare_total,
        "rare_pairs_in_clone": rare_clone,
        "rare_pairs_in_holdout": rare_holdout,
    }


def membership_attack(
    real: Codes,
    clone: Codes,
    holdout: Codes,
    sizes: dict[str, int],
    seed: int,
) -> dict[str, float]:
    """DOMIAS-style attack: score = p_clone(x) / p_reference(x), densities from a Gaussian
    kernel density on a PCA projection of the one-hot codes. Half the holdout is the
    attacker's reference data, the other half the non-members; as many members are drawn
    from the real training rows. Also the distance attack (closer to the clone = member).
    Returns both AUROCs (0.5 = the attacker learns nothing) and the chance level of the
    larger one (:func:`max_auroc_null`: its mean and 95th percentile, and the larger
    AUROC's permutation p-value)."""
    from sklearn.decomposition import PCA
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import KernelDensity

    rng = np.random.default_rng(seed)
    columns = list(sizes)
    n_h = len(holdout[columns[0]])
    order = rng.permutation(n_h)
    ref_idx, non_idx = order[: n_h // 2], order[n_h // 2 :]
    n_real = len(real[columns[0]])
    mem_idx = rng.choice(n_real, size=min(len(non_idx), n_real), replace=False)
    x_real = one_hot(real, sizes, columns)
    x_hold = one_hot(holdout, sizes, columns)
    x_clone = one_hot(clone, sizes, columns)
    reference = x_hold[ref_idx]
    targets = np.concatenate([x_real[mem_idx], x_hold[non_idx]])
    truth = np.concatenate([np.ones(len(mem_idx)), np.zeros(len(non_idx))])
    pca = PCA(n_components=min(8, reference.shape[1], len(reference) - 1), random_state=seed)
    pca.fit(np.concatenate([x_clone, reference]))

    def density(data: np.ndarray) -> KernelDensity:
        z = pca.transform(data)
        bandwidth = float(np.mean(z.std(axis=0))) * len(z) ** (-1.0 / (z.shape[1] + 4))
        return KernelDensity(bandwidth=max(bandwidth, 1e-3)).fit(z)

    zt = pca.transform(targets)
    score = density(x_clone).score_samples(zt) - density(reference).score_samples(zt)
    target_codes = np.concatenate(
        [_matrix(real, columns)[mem_idx], _matrix(holdout, columns)[non_idx]]
    )
    distance = -_distances(target_codes, _matrix(clone, columns))
    domias, near = float(roc_auc_score(truth, score)), float(roc_auc_score(truth, distance))
    null = max_auroc_null(truth, [score, distance], rng)
    return {
        "domias_auroc": domias,
        "distance_auroc": near,
        "members": float(len(mem_idx)),
        "non_members": float(len(non_idx)),
        "max_null_mean": float(null.mean()),
        "max_null_p95": float(np.quantile(null, 0.95)),
        "max_p_value": float((1 + np.sum(null >= max(domias, near))) / (1 + len(null))),
    }


ATTACK_PERMUTATIONS = 999
"""Label permutations behind :func:`max_auroc_null` (p-values in steps of 1/1000)."""


def max_auroc_null(
    truth: np.ndarray,
    scores: Sequence[np.ndarray],
    rng: np.random.Generator,
    permutations: int = ATTACK_PERMUTATIONS,
) -> np.ndarray:
    """The larger of several attacks' AUROCs when membership carries no signal: the
    statistic recomputed with the member/non-member labels permuted, ``permutations``
    times (a permutation test, Good 2005). Reporting the best of two attacks is biased
    upward: with no leak at all its mean is above 0.5 (about 0.52 for two correlated
    attacks on a few hundred targets), so the observed maximum is read against this
    null, not against 0.5.

    AUROC by ranks (Mann-Whitney): ``(R+ - m (m + 1) / 2) / (m n)`` for ``m`` members
    whose ranks sum to ``R+``; the ranks do not change under permutation, so each draw
    is one sum per attack."""
    from scipy.stats import rankdata

    truth = np.asarray(truth, dtype=bool)
    m, n = int(truth.sum()), int((~truth).sum())
    if m == 0 or n == 0:
        raise ValueError("the attack needs both members and non-members")
    ranks = np.stack([rankdata(s) for s in scores])
    best = np.empty(permutations)
    for i in range(permutations):
        members = rng.permutation(len(truth))[:m]
        rank_sums = ranks[:, members].sum(axis=1)
        best[i] = float(np.max((rank_sums - m * (m + 1) / 2) / (m * n)))
    return best


# ---------------------------------------------------------------------- k-anonymity


def anonymized_baseline(
    domain: TableDomain,
    real: Codes,
    holdout: Codes,
    quasi_identifiers: Sequence[str],
    k: int,
    *,
    label: str,
    positive: int,
    seed: int,
    algorithm: Algorithm = "datafly",
) -> tuple[dict[str, float], dict[str, Any]]:
    """The k-anonymized real table (``algorithm``) as a release: the model trained on it, tested
    on the holdout (AUROC, accuracy), and what it leaks on the clone's own scale - the same
    membership attacks and exact-row counts, with the anonymized table in the clone's place.

    Which attributes are quasi-identifiers depends on the adversary. Sweeney (2002) and
    HIPAA name demographics; an adversary with background knowledge of a patient's stay
    (the membership attacker, who holds the whole record) can link on the clinical values
    too, so that every attribute the adversary may know is a quasi-identifier (El Emam &
    Dankar, JAMIA 2008; Domingo-Ferrer & Torra, "A critique of k-anonymity and some of
    its enhancements", ARES 2008). ``algorithm``: Datafly (global recoding and
    suppression) or Mondrian (local recoding, every row kept; the one that stays useful
    with many quasi-identifiers, :mod:`medsilo.clone.anonymize`)."""
    sizes = domain.sizes
    if algorithm == "mondrian":
        anon = mondrian(domain, real, quasi_identifiers, k)
    else:
        anon = k_anonymize(domain, real, quasi_identifiers, k)
    if not is_k_anonymous({q: anon.codes[q] for q in quasi_identifiers}, k):
        raise AssertionError(f"anonymizer bug: output is not {k}-anonymous")
    described: dict[str, Any] = {
        "k": k,
        "algorithm": anon.algorithm,
        "quasi_identifiers": list(quasi_identifiers),
        "levels": anon.levels,
        "suppressed": anon.suppressed,
        "rows": anon.rows,
    }
    if not anon.rows:
        return {"auroc": 0.5, "accuracy": float("nan")}, described
    scores = train_test(anon.codes, holdout, sizes, label, positive, seed)
    columns = list(sizes)
    attack = membership_attack(real, anon.codes, holdout, sizes, seed)
    leaks = leakage(real, anon.codes, holdout, columns)
    described |= {
        "domias_auroc": attack["domias_auroc"],
        "distance_auroc": attack["distance_auroc"],
        "attack_auroc": max(attack["domias_auroc"], attack["distance_auroc"]),
        "rows_equal_share": leaks["clone_rows_equal_share"],
        "real_unique_rows_reproduced": leaks["real_unique_rows_in_clone"],
    }
    return scores, described


def baseline_label(name: str) -> str:
    """A utility entry's display name: ``tstr`` -> ``TSTR``, ``k5`` -> ``k=5``, ``k5_all``
    -> ``k=5 (all QI)``, ``k5_all_mondrian`` -> ``k=5 (all QI, Mondrian)``.

    >>> [baseline_label(n) for n in ("tstr", "k10", "k5_all", "k5_all_mondrian")]
    ['TSTR', 'k=10', 'k=5 (all QI)', 'k=5 (all QI, Mondrian)']
    """
    if not name.startswith("k"):
        return name.upper()
    k, _, scope = name[1:].partition("_")
    words = {"all": "all QI", "mondrian": "Mondrian"}
    detail = ", ".join(words.get(w, w) for w in scope.split("_") if w)
    return f"k={k}" + (f" ({detail})" if detail else "")


# ---------------------------------------------------------------------- all together


@dataclass(frozen=True)
class Evaluation:
    """Everything :func:`evaluate` measured; ``to_dict`` is what ``evaluation.json`` holds."""

    summary: dict[str, Any]
    fidelity: dict[str, Any]
    correlation: dict[str, Any]
    utility: dict[str, dict[str, float]]
    anonymized: dict[str, dict[str, Any]]
    dcr: dict[str, Any]
    leakage: dict[str, Any]
    attack: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        dcr = {k: v for k, v in self.dcr.items() if not isinstance(v, np.ndarray)}
        return {
            "summary": self.summary,
            "fidelity": self.fidelity,
            "correlation": {k: v for k, v in self.correlation.items() if k != "matrices"},
            "utility": self.utility,
            "anonymized": self.anonymized,
            "dcr": dcr,
            "leakage": self.leakage,
            "attack": self.attack,
        }


def evaluate(
    real: pd.DataFrame,
    clone: pd.DataFrame,
    holdout: pd.DataFrame,
    schema: CloneSchema,
    label: str,
    *,
    positive: str | None = None,
    ks: Sequence[int] = (5, 10),
    quasi_identifiers: Sequence[str] | None = None,
    matched_ks: Sequence[int] = (5,),
    seed: int = 0,
    names: tuple[str, str, str] = ("real", "clone", "holdout"),
) -> Evaluation:
    """Compare ``clone`` with the ``real`` table it was made from, on real ``holdout`` rows
    that were not used to make it. ``label``: a categorical column to predict
    (``positive``: its positive category, default the last declared one).

    The k-anonymity baselines: ``k{k}`` for each of ``ks`` with ``quasi_identifiers``
    (default every column but the label); when those are fewer than every column, also
    ``k{k}_all`` for each of ``matched_ks`` with every non-label column a quasi-identifier,
    the baseline matched to the membership attacker, who knows a whole record; and
    ``k{k}_all_mondrian``, the same quasi-identifiers recoded locally by Mondrian (Datafly's
    global recoding generalizes nearly everything when every column is one)."""
    spec = schema.columns.get(label)
    if spec is None or spec.type != "categorical":
        raise ConfigError(
            f"label {label!r} must be a categorical column of the schema; categorical "
            f"columns: {[c for c, s in schema.columns.items() if s.type == 'categorical']}"
        )
    categories = list(spec.categories or ())
    positive = positive if positive is not None else categories[-1]
    if positive not in categories:
        raise ConfigError(f"positive {positive!r} is not a category of {label!r}: {categories}")
    domain = TableDomain(schema)
    encoded = {}
    for name, frame in zip(names, (real, clone, holdout), strict=True):
        check_columns(frame, schema, name)
        encoded[name] = domain.encode(frame, name).codes
    r, c, h = (encoded[n] for n in names)
    sizes = dict(domain.sizes)
    pos = categories.index(positive)
    columns = list(sizes)

    fid = fidelity(r, c, sizes)
    corr_names, real_corr = correlations(r, domain)
    _, clone_corr = correlations(c, domain)
    diff = np.abs(real_corr - clone_corr)
    n_corr = len(corr_names)
    off = diff[~np.eye(n_corr, dtype=bool)] if n_corr > 1 else np.zeros(1)
    corr = {
        "columns": corr_names,
        "mean_abs_difference": float(off.mean()),
        "max_abs_difference": float(off.max()),
        "matrices": (real_corr, clone_corr),
    }
    utility = {
        "trtr": train_test(r, h, sizes, label, pos, seed),
        "tstr": train_test(c, h, sizes, label, pos, seed),
    }
    features = [x for x in columns if x != label]
    qis = list(quasi_identifiers) if quasi_identifiers is not None else features
    baselines: list[tuple[str, list[str], int, Algorithm]] = [
        (f"k{k}", qis, k, "datafly") for k in ks
    ]
    if set(qis) != set(features):
        baselines += [(f"k{k}_all", features, k, "datafly") for k in matched_ks]
    baselines += [(f"k{k}_all_mondrian", features, k, "mondrian") for k in matched_ks]
    anonymized: dict[str, dict[str, Any]] = {}
    for name, quasi, k, algorithm in baselines:
        utility[name], anonymized[name] = anonymized_baseline(
            domain, r, h, quasi, k, label=label, positive=pos, seed=seed, algorithm=algorithm
        )
    distances = dcr(r, c, h, columns)
    leaks = leakage(r, c, h, columns)
    attack = membership_attack(r, c, h, sizes, seed)
    summary = {
        "rows": {n: len(encoded[n][columns[0]]) for n in names},
        "columns": len(columns),
        "label": label,
        "positive": positive,
        "quasi_identifiers": qis,
        "tstr_over_trtr_auroc": utility["tstr"]["auroc"] / utility["trtr"]["auroc"],
        "attack_auroc": max(attack["domias_auroc"], attack["distance_auroc"]),
        "attack_null_mean": attack["max_null_mean"],
        "attack_p_value": attack["max_p_value"],
    }
    return Evaluation(summary, fid, corr, utility, anonymized, distances, leaks, attack)
