"""``report.html``: a self-contained page (plots embedded as PNG) from a run directory."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from medsilo.report.rundir import REPORT_FILE, RunDirectory, atomic_write_bytes
from medsilo.report.summary import (
    METRICS,
    per_site_table,
    privacy_table,
    setting_means,
    traffic_table,
)

PLOTTED = ("accuracy", "balanced_accuracy", "auroc", "loss")


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    encoded: str = base64.b64encode(buffer.getvalue()).decode("ascii")
    return encoded


def _curves(history: pd.DataFrame) -> list[tuple[str, str]]:
    if history.empty or "kind" not in history:
        return []
    if "setting" in history:  # curves of the federated model only (not the fine-tuned)
        history = history[history["setting"].isna() | (history["setting"] == "federated")]
    evals = history[(history["kind"] == "eval") & (history["split"] == "val")]
    if evals.empty:
        evals = history[(history["kind"] == "eval")]
    plots = []
    for metric in PLOTTED:
        if metric not in evals or evals[metric].isna().all():
            continue
        fig, ax = plt.subplots(figsize=(6, 3.4))
        for site, rows in evals.groupby("site", sort=False):
            ax.plot(rows["round"], rows[metric], marker="o", markersize=3, label=str(site))
        ax.set_xlabel("round")
        ax.set_ylabel(f"{metric} ({evals['split'].iloc[0]})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        plots.append((metric, _png(fig)))
    return plots


def _privacy_section(run_dir: RunDirectory, history: pd.DataFrame) -> list[str]:
    table = privacy_table(run_dir)
    if table.empty:
        return [
            "<h2>Privacy</h2><p>No differential privacy (<code>privacy.mode = "
            "'none'</code>): updates leave the sites without any guarantee (epsilon is "
            "infinite). Baselines and federated models are not private.</p>"
        ]
    meta = run_dir.meta["privacy"]
    out = [
        "<h2>Privacy</h2>",
        f"<p>Mode <b>{html.escape(str(meta['mode']))}</b>, unit of "
        f"privacy one <b>{html.escape(str(meta['unit']))}</b>, accountant "
        f"{html.escape(str(meta['accountant']))}, delta {meta['delta']:g}. Epsilon spent is "
        "re-read from each site's own ledger (hash chain verified on opening). In a "
        "record-level study the local-only and pooled baselines are trained with DP-SGD "
        "at the same epsilon.</p>",
        _table(table),
    ]
    if meta["mode"] == "distributed":
        skellam = meta.get("skellam", {})
        out.insert(
            2,
            "<p>Distributed DP (Dopamine): each site added a Skellam noise share (variance "
            f"{skellam.get('mu_share', float('nan')):.4g} in integer units, scale "
            f"{skellam.get('scale', float('nan')):g}) to its clipped gradient sum, planned "
            f"so that the {skellam.get('min_survivors', '?')} shares the session needs at "
            "least carry the full noise; the coordinator saw only the sum. "
            "<b>epsilon_spent</b> is against the coordinator (the noise that reached each "
            "sum, from the ledger's outcome rows); <b>epsilon_collusion</b> is against the "
            "coordinator colluding with every other site (the site's own share only). "
            "Accountant: the Skellam RDP bound of Agarwal, Kairouz and Liu (NeurIPS 2021), "
            "Poisson-subsampled (Zhu and Wang, ICML 2019).</p>",
        )
    train = history[history["kind"] == "train"] if "kind" in history else history
    if "epsilon" in train and not train["epsilon"].isna().all():
        fig, ax = plt.subplots(figsize=(6, 3.4))
        for site, rows in train.groupby("site", sort=False):
            ax.step(rows["round"], rows["epsilon"], where="post", label=str(site))
        ax.set_xlabel("round")
        ax.set_ylabel("epsilon spent")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        out.append(
            f"<h3>Epsilon per site over rounds</h3><img alt='epsilon' "
            f"src='data:image/png;base64,{_png(fig)}'>"
        )
    refusals = history[history["kind"] == "refusal"] if "kind" in history else history
    if len(refusals):
        out.append("<h3>Refusals</h3>")
        out.append(_table(refusals[["round", "site", "reason"]]))
    return out


def _secagg_section(history: pd.DataFrame) -> list[str]:
    if "secagg" not in history:
        return [
            "<h2>Secure aggregation</h2><p>Off: the coordinator received every site's "
            "update in the clear.</p>"
        ]
    rounds = history[(history["kind"] == "round") & history["secagg"].notna()]
    rows = []
    for _, r in rounds.iterrows():
        log = r["secagg"]
        rows.append(
            {
                "round": r["round"],
                "participants": len(log.get("participants", [])),
                "survivors": len(log.get("survivors", [])),
                "threshold t": log.get("threshold"),
                "graph degree": log.get("degree"),
                "bits": log.get("bits"),
                "aborted": log.get("aborted", ""),
            }
        )
    return [
        "<h2>Secure aggregation</h2><p>On (Bonawitz et al. 2017, SecAgg+ graph of Bell "
        "et al. 2020). Of each site's update the coordinator received only a masked vector "
        "(uniform in Z<sub>2^bits</sub>) and learned only the sum of the survivors' "
        "updates; an aborted session (fewer than t survivors) released nothing.</p>",
        _table(pd.DataFrame(rows)),
    ]


def _communication_section(history: pd.DataFrame) -> list[str]:
    table = traffic_table(history)
    if table.empty:
        return []
    total = table.drop(columns="round").sum(min_count=1)
    rows = [
        {
            "direction": "down (coordinator to sites)",
            "bytes": total.get("bytes_down"),
            "dense FedAvg bytes": total.get("dense_bytes_down"),
        },
        {
            "direction": "up (sites to coordinator)",
            "bytes": total.get("bytes_up"),
            "dense FedAvg bytes": total.get("dense_bytes_up"),
        },
    ]
    frame = pd.DataFrame(rows)
    frame["ratio"] = frame["dense FedAvg bytes"] / frame["bytes"].where(frame["bytes"] > 0)
    return [
        "<h2>Communication</h2><p>Bytes of the model messages, summed over rounds and "
        "sites, next to what dense float32 FedAvg messages of the same model would take. "
        "FedLTN counts the exact length of each sparse payload (kept values and masks, "
        "zlib); other strategies the arrays' raw bytes. Under secure aggregation the "
        "upload is the masked vectors that reached the coordinator, at ceil(bits/8) bytes "
        "per element (the session's keys, shares and signatures are not counted).</p>",
        _table(frame),
        "<h3>Per round</h3>",
        _table(table),
    ]


def _audit_section(run_dir: RunDirectory) -> list[str]:
    path = run_dir.path / "audit.json"
    if not path.exists():
        return ["<h2>Empirical audit</h2><p>Not run yet: <code>medsilo audit RUN_DIR</code>.</p>"]
    audit = json.loads(path.read_text())
    rows = []
    for site in audit["sites"]:
        canary = site.get("canary") or {}
        lira = site.get("lira") or {}
        rows.append(
            {
                "site": site["site"],
                "loss attack AUC": site["loss_attack"]["auc"],
                "LiRA AUC": lira.get("auc"),
                "epsilon lower bound": canary.get("epsilon_lower_bound"),
                "accountant epsilon": canary.get("accountant_epsilon"),
                "canary trials": canary.get("trials"),
            }
        )
    verdict = (
        "consistent: no lower bound exceeds its accountant epsilon"
        if audit.get("consistent")
        else "INCONSISTENT: a lower bound exceeds the claim"
    )
    return [
        "<h2>Empirical audit</h2><p>Membership inference on the final model (members = "
        "training split, non-members = test split) and a canary lower bound on epsilon "
        f"(Clopper-Pearson, 95%): {html.escape(verdict)}.</p>",
        _table(pd.DataFrame(rows)),
    ]


def _table(frame: pd.DataFrame) -> str:
    rendered: str = frame.to_html(
        index=False, float_format=lambda v: f"{v:.3f}", na_rep="–", border=0, classes="t"
    )
    return rendered


def render(run_dir: RunDirectory) -> str:
    meta = run_dir.meta
    per_site = per_site_table(run_dir)
    history = pd.DataFrame(run_dir.records())
    wide = (
        per_site.pivot_table(index="site", columns="setting", values="accuracy", sort=False)
        if not per_site.empty
        else pd.DataFrame()
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>medsilo report: {html.escape(str(meta.get('study')))}</title>",
        "<style>body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
        "table.t{border-collapse:collapse;margin:1em 0}table.t td,table.t th{padding:3px 9px;"
        "border-bottom:1px solid #ddd;text-align:right}.note{color:#555;font-size:90%}</style>",
        "</head><body>",
        f"<h1>Study {html.escape(str(meta.get('study')))}</h1>",
        f"<p>Status <b>{html.escape(str(meta.get('status')))}</b>, "
        f"{meta.get('rounds_completed')} of {meta.get('rounds')} rounds, seed {meta.get('seed')}, "
        f"engine {html.escape(str(meta.get('engine')))}, sites: "
        f"{html.escape(', '.join(meta.get('sites', [])))}.</p>",
    ]
    for warning in meta.get("warnings", []):
        parts.append(f"<p class='note'>Warning: {html.escape(warning)}</p>")
    parts.append("<h2>Federated vs local-only vs pooled (test split, mean over sites)</h2>")
    parts.append(_table(setting_means(per_site)))
    if not wide.empty:
        parts.append("<h3>Test accuracy per site</h3>")
        parts.append(_table(wide.rename_axis(columns=None).reset_index()))
    parts.append(
        "<p class='note'>The pooled baseline trains one model on all sites' data "
        "together. It exists only in simulation: in a real deployment no party can "
        "compute it.</p>"
    )
    parts += _privacy_section(run_dir, history)
    parts += _secagg_section(history)
    parts += _communication_section(history)
    parts += _audit_section(run_dir)
    parts.append("<h2>Per site and setting (test split)</h2>")
    parts.append(_table(per_site[["site", "setting", *METRICS]]))
    for metric, png in _curves(history):
        parts.append(
            f"<h3>{metric} over rounds</h3><img alt='{metric}' src='data:image/png;base64,{png}'>"
        )
    versions = meta.get("versions", {})
    parts.append(
        "<h2>Provenance</h2><p class='note'>"
        + html.escape(", ".join(f"{k} {v}" for k, v in versions.items()))
        + f"; created {html.escape(str(meta.get('created')))}; data fingerprint "
        f"{html.escape(str(meta.get('data_fingerprint', ''))[:16])}.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: RunDirectory) -> None:
    atomic_write_bytes(run_dir.path / REPORT_FILE, render(run_dir).encode())
