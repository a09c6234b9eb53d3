"""The evaluation page of a clone: one self-contained HTML file with embedded PNG plots.

Sections follow :mod:`medsilo.clone.evaluate`: summary, utility (TSTR vs TRTR vs
k-anonymity), fidelity (1-way TVD per column, the worst 2-way marginals, correlation
matrices), privacy (DCR histograms, membership attack, leakage counts).
"""

from __future__ import annotations

import html
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from medsilo.clone.evaluate import Evaluation, baseline_label
from medsilo.report.html import _png

_STYLE = (
    "body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
    "padding:3px 8px;text-align:right}th{background:#f3f3f3}.ok{color:#176b2c}"
    ".bad{color:#a31515}"
)


def _rows(pairs: list[tuple[str, str]]) -> str:
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in pairs
    )
    return f"<table>{body}</table>"


def _utility_plot(utility: dict[str, dict[str, float]]) -> str:
    names = list(utility)
    fig, ax = plt.subplots(figsize=(6, 3))
    values = [utility[n]["auroc"] for n in names]
    colors = ["#4c72b0" if n == "tstr" else "#999999" for n in names]
    ax.bar([baseline_label(n) for n in names], values, color=colors)
    ax.set_ylim(0.4, 1.0)
    ax.axhline(0.5, color="black", lw=0.8, ls=":")
    ax.set_ylabel("AUROC on the real holdout")
    return _png(fig)


def _tvd_plot(one: dict[str, float]) -> str:
    names = list(one)
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.22 * len(names))))
    ax.barh(names, [one[n] for n in names], color="#4c72b0")
    ax.invert_yaxis()
    ax.set_xlabel("1-way total variation distance (0 = identical)")
    ax.tick_params(axis="y", labelsize=7)
    return _png(fig)


def _corr_plot(columns: list[str], real: np.ndarray, clone: np.ndarray) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, matrix, title in zip(axes, (real, clone), ("real", "clone"), strict=True):
        image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(title)
        ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=6)
        ax.set_yticks(range(len(columns)), columns, fontsize=6)
    fig.colorbar(image, ax=axes, shrink=0.8)
    return _png(fig)


def _dcr_plot(clone: np.ndarray, holdout: np.ndarray) -> str:
    fig, ax = plt.subplots(figsize=(6, 3))
    bins = [i / 20 for i in range(21)]
    ax.hist(holdout, bins=bins, alpha=0.6, density=True, label="holdout -> real")
    ax.hist(clone, bins=bins, alpha=0.6, density=True, label="clone -> real")
    ax.set_xlabel("distance to the closest real record (share of columns that differ)")
    ax.legend()
    return _png(fig)


def _img(png: str, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{png}'>"


def _anonymized(a: dict[str, Any]) -> str:
    levels = ", ".join(f"{c}={lv}" for c, lv in a["levels"].items() if lv) or "none"
    text = (
        f"{a.get('algorithm', 'datafly').capitalize()}, quasi-identifiers "
        f"{', '.join(a['quasi_identifiers'])}; {a['rows']} rows kept, "
        f"{a['suppressed']} suppressed"
        + (f"; generalization levels {levels}" if a.get("algorithm") != "mondrian" else "")
    )
    if "attack_auroc" in a:
        text += (
            f"; attack AUROC {a['attack_auroc']:.3f}, rows equal to a real row "
            f"{a['rows_equal_share']:.1%}"
        )
    return html.escape(text)


def _mark(ok: bool) -> str:
    return "<span class='ok'>yes</span>" if ok else "<span class='bad'>no</span>"


def render_page(result: Evaluation, title: str) -> str:
    """The whole page as HTML text."""
    s, u, f, d, leak, attack = (
        result.summary,
        result.utility,
        result.fidelity,
        result.dcr,
        result.leakage,
        result.attack,
    )
    worst = sorted(f["tvd_2way"].items(), key=lambda kv: -kv[1])[:10]
    columns, (real_corr, clone_corr) = result.correlation["columns"], result.correlation["matrices"]
    parts: list[str] = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        "<h2>Summary</h2>",
        _rows(
            [
                *[(f"rows: {k}", str(v)) for k, v in s["rows"].items()],
                ("columns", str(s["columns"])),
                ("label (positive)", html.escape(f"{s['label']} ({s['positive']})")),
                ("TSTR / TRTR AUROC", f"{s['tstr_over_trtr_auroc']:.3f}"),
                (
                    "TSTR above k=5 anonymization",
                    _mark(u["tstr"]["auroc"] > u["k5"]["auroc"]) if "k5" in u else "-",
                ),
                ("membership attack AUROC (max of two)", f"{s['attack_auroc']:.3f}"),
            ]
        ),
        "<h2>Utility</h2><p>Logistic regression on one-hot codes, trained on the clone "
        "(TSTR), on the real table (TRTR) and on k-anonymized versions of it (Datafly: "
        "generalization, then suppression), all tested on the real holdout.</p>",
        _rows(
            [
                (baseline_label(name), f"AUROC {v['auroc']:.3f}, accuracy {v['accuracy']:.3f}")
                for name, v in u.items()
            ]
        ),
        _img(_utility_plot(u), "AUROC bars"),
        "<p>k-anonymized tables, each a release of its own, with the clone's privacy "
        "measures (membership attack: the larger of DOMIAS and the distance attack; real "
        "rows reproduced exactly):</p>",
        _rows([(baseline_label(n), _anonymized(a)) for n, a in result.anonymized.items()]),
        "<h2>Fidelity</h2>",
        _rows(
            [
                ("mean 1-way TVD", f"{f['tvd_1way_mean']:.3f}"),
                ("mean 2-way TVD", f"{f['tvd_2way_mean']:.3f}"),
                ("worst 2-way TVD", f"{f['tvd_2way_max']:.3f}"),
                (
                    "mean |correlation difference|",
                    f"{result.correlation['mean_abs_difference']:.3f}",
                ),
            ]
        ),
        _img(_tvd_plot(f["tvd_1way"]), "1-way TVD per column"),
        "<p>The 10 worst 2-way marginals:</p>",
        _rows([(k.replace("|", " x "), f"{v:.3f}") for k, v in worst]),
    ]
    if len(columns) > 1:
        parts.append(_img(_corr_plot(columns, real_corr, clone_corr), "correlations"))
    parts += [
        "<h2>Privacy</h2><p>Distance to the closest real record, for clone rows and, as the "
        "reference, for real holdout rows (never seen by the clone). A clone that copied "
        "records would sit closer than the holdout.</p>",
        _rows(
            [
                ("median DCR, clone", f"{d['clone_median']:.3f}"),
                ("median DCR, holdout", f"{d['holdout_median']:.3f}"),
                (
                    "clone rows closer than the holdout's 5th percentile",
                    f"{d['clone_share_below_holdout_p05']:.1%}",
                ),
            ]
        ),
        _img(_dcr_plot(d["clone"], d["holdout"]), "DCR histograms"),
        "<p>Membership inference (members: real rows used for the clone; non-members: "
        "holdout rows). 0.5 means the attacker learns nothing.</p>",
        _rows(
            [
                ("DOMIAS-style density-ratio AUROC", f"{attack['domias_auroc']:.3f}"),
                ("distance-to-clone AUROC", f"{attack['distance_auroc']:.3f}"),
                (
                    "the larger of the two when nothing leaks (permutation null: mean, 95th "
                    "percentile)",
                    f"{attack['max_null_mean']:.3f}, {attack['max_null_p95']:.3f}",
                ),
                (
                    "p-value of the larger AUROC under that null",
                    f"{attack['max_p_value']:.3f}",
                ),
            ]
        ),
        "<p>Leakage (on the schema's bins; the holdout is the baseline: fresh patients "
        "also match real rows by chance):</p>",
        _rows(
            [
                ("real rows that are unique (outliers)", str(leak["real_unique_rows"])),
                ("clone rows equal to a real row", f"{leak['clone_rows_equal_share']:.1%}"),
                ("holdout rows equal to a real row", f"{leak['holdout_rows_equal_share']:.1%}"),
                (
                    "unique real rows reproduced by the clone",
                    str(leak["real_unique_rows_in_clone"]),
                ),
                (
                    "unique real rows reproduced by the holdout",
                    str(leak["real_unique_rows_in_holdout"]),
                ),
                ("rare pairs (count <= 2) in real", str(leak["rare_pairs_in_real"])),
                ("... of them in the clone", str(leak["rare_pairs_in_clone"])),
                ("... of them in the holdout", str(leak["rare_pairs_in_holdout"])),
            ]
        ),
        "</body></html>",
    ]
    return "\n".join(parts)
