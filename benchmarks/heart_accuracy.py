"""Accuracy on the built-in ``heart`` dataset with the FLamby protocol.

FLamby's Fed-Heart-Disease protocol (Ogier du Terrail et al., NeurIPS 2022): 4 natural
sites, logistic regression, the metric is the mean over the 4 sites of the accuracy on
each site's own test split, 5 seeds, mean ± sd. FLamby's published means
(REFERENCES.md): pooled 0.735, FedAvg 0.685, FedProx 0.685, FedAdam 0.726,
FedYogi 0.731. Target: our best federated strategy >= 0.74.

Differences from FLamby that matter when reading the numbers: medsilo's ``heart`` keeps
all 920 patients (missing values imputed per site, with missing indicators) where FLamby
keeps 740 complete rows; the split is medsilo's (per site, stratified, 55% train / 15%
validation / 30% test) and changes with the seed, where FLamby's is fixed.

Hyper-parameters are chosen per strategy by the mean over seeds of the mean over sites
of the VALIDATION accuracy (the per-round ``eval`` records with ``split = "val"``), never
by test accuracy; ties go to the earlier (simpler) grid entry. The number of rounds is
chosen too, among the rounds at which the validation split was evaluated. Local-only and
pooled come from the baselines of the final FedAvg runs (medsilo trains them with the
federation's train config and ``local_epochs x rounds`` epochs; the library records only
their test metrics, so they cannot be tuned on validation separately).

The grid (client side first, on FedAvg; the server side then uses FedAvg's client
values): FedAvg lr in {0.03, 0.1, 0.3} x local_epochs in {1, 3}; FedProx mu in
{0.01, 0.1, 1, 3}; FedAdam and FedYogi server_lr in {0.01, 0.03, 0.1, 0.3, 1} (beta1 0.9,
beta2 0.99, tau 1e-3, the library's defaults); rounds in {10, 20, ..., 60}.

Every run is a study written as TOML text and run with
``medsilo.study.run.run_study_text(text, out=tmpdir)``.

    python benchmarks/heart_accuracy.py [--quick]   # --quick: no grid, the chosen values
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd
import torch
from _common import fmt_mean_sd, md_table, mean_sd, write_results
from _studies import best_by_validation, edge_notes, run

from medsilo.report.summary import setting_means

SEEDS = (0, 1, 2, 3, 4)
MAX_ROUNDS = 60
EVAL_EVERY = 10
BATCH = 16
FLAMBY = {"pooled": 0.735, "fedavg": 0.685, "fedprox": 0.685, "fedadam": 0.726, "fedyogi": 0.731}
FLAMBY_TEXT = {**{k: f"{v:.3f}" for k, v in FLAMBY.items()}, "local_only": "0.567-0.722 (per site)"}
TARGET = 0.74

# The result of the grid below on this machine (used by --quick; the full run re-derives
# them and says so when they differ).
CHOSEN: dict[str, dict[str, Any]] = {
    "fedavg": {"lr": 0.1, "local_epochs": 1, "rounds": 40},
    "fedprox": {"lr": 0.1, "local_epochs": 1, "mu": 1.0, "rounds": 40},
    "fedadam": {"lr": 0.1, "local_epochs": 1, "server_lr": 0.1, "rounds": 20},
    "fedyogi": {"lr": 0.1, "local_epochs": 1, "server_lr": 0.1, "rounds": 20},
}


def study(
    strategy: str,
    seed: int,
    lr: float,
    local_epochs: int,
    mu: float | None = None,
    server_lr: float | None = None,
    rounds: int = MAX_ROUNDS,
    evaluate_every: int = EVAL_EVERY,
    baselines: bool = False,
) -> str:
    extra = ""
    if mu is not None:
        extra += f"\nmu = {mu}"
    if server_lr is not None:
        extra += f"\nserver_lr = {server_lr}"
    flag = "true" if baselines else "false"
    return f"""
[study]
name = "heart-{strategy}"
seed = {seed}
rounds = {rounds}
evaluate_every = {evaluate_every}

[data]
dataset = "heart"
partition = "natural"
val_fraction = 0.15
test_fraction = 0.3

[model]
name = "logreg"

[train]
local_epochs = {local_epochs}
batch_size = {BATCH}
lr = {lr}

[strategy]
name = "{strategy}"{extra}

[baselines]
local_only = {flag}
pooled = {flag}
"""


def search(log: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Grid search by mean validation accuracy over seeds; returns the chosen values."""
    chosen: dict[str, dict[str, Any]] = {}
    chosen["fedavg"] = best_by_validation(
        "fedavg",
        [{"lr": lr, "local_epochs": e} for e in (1, 3) for lr in (0.03, 0.1, 0.3)],
        SEEDS,
        study,
        "accuracy",
        log,
    )
    client = {k: chosen["fedavg"][k] for k in ("lr", "local_epochs")}
    chosen["fedprox"] = best_by_validation(
        "fedprox",
        [{**client, "mu": mu} for mu in (0.01, 0.1, 1.0, 3.0)],
        SEEDS,
        study,
        "accuracy",
        log,
    )
    for name in ("fedadam", "fedyogi"):
        chosen[name] = best_by_validation(
            name,
            [{**client, "server_lr": s} for s in (0.01, 0.03, 0.1, 0.3, 1.0)],
            SEEDS,
            study,
            "accuracy",
            log,
        )
    return chosen


def final(chosen: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Five seeds of every chosen configuration; per seed the mean over sites (test)."""
    per_seed: dict[str, dict[str, list[float]]] = {}
    for strategy, values in chosen.items():
        params = {k: v for k, v in values.items() if k != "rounds"}
        rounds = int(values["rounds"])
        for seed in SEEDS:
            baselines = strategy == "fedavg"
            res = run(
                study(
                    strategy,
                    seed,
                    rounds=rounds,
                    evaluate_every=rounds,
                    baselines=baselines,
                    **params,
                )
            )
            means = setting_means(res.per_site).set_index("setting")
            settings = {strategy: "federated"}
            if baselines:
                settings.update(local_only="local_only", pooled="pooled")
            for label, setting in settings.items():
                slot = per_seed.setdefault(label, {"accuracy": [], "auroc": []})
                slot["accuracy"].append(float(means.loc[setting, "accuracy"]))
                slot["auroc"].append(float(means.loc[setting, "auroc"]))
            print(
                f"  final {strategy} seed {seed}: {float(means.loc['federated', 'accuracy']):.4f}",
                flush=True,
            )
    return per_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="skip the grid search; use the values chosen by the last full run",
    )
    args = parser.parse_args()
    # One thread: identical results, and several times faster when the 2-core machine is
    # shared (two OpenMP threads on tiny models stall under oversubscription).
    torch.set_num_threads(1)
    started = datetime.now(UTC)
    log: list[dict[str, Any]] = []
    chosen = CHOSEN if args.quick else search(log)
    per_seed = final(chosen)

    names = {
        "fedavg": "FedAvg",
        "fedprox": "FedProx",
        "fedadam": "FedAdam",
        "fedyogi": "FedYogi",
        "local_only": "local-only",
        "pooled": "pooled",
    }
    fl = ("fedavg", "fedprox", "fedadam", "fedyogi")
    best = max(fl, key=lambda s: mean_sd(per_seed[s]["accuracy"])[0])
    best_acc = mean_sd(per_seed[best]["accuracy"])[0]
    rows = []
    for key in (*fl, "local_only", "pooled"):
        v = chosen.get(key, {})
        hp = ", ".join(f"{k}={x}" for k, x in v.items()) if v else "as FedAvg (baseline)"
        rows.append(
            [
                names[key],
                fmt_mean_sd(per_seed[key]["accuracy"]),
                fmt_mean_sd(per_seed[key]["auroc"]),
                FLAMBY_TEXT.get(key, "–"),
                hp,
            ]
        )
    verdict = f"best federated: {names[best]} {best_acc:.3f} -> target >= {TARGET} " + (
        "**met**" if best_acc >= TARGET else f"**MISSED** by {TARGET - best_acc:.3f}"
    )
    body = (
        "Mean over the 4 sites of each site's test metric, then mean ± sd over seeds "
        f"{list(SEEDS)}; logistic regression, batch {BATCH}. "
        + (
            "Hyper-parameters: the values chosen by the last full run (`--quick`, no search)."
            if args.quick
            else f"Hyper-parameters chosen by mean validation accuracy (grid below; up to "
            f"{MAX_ROUNDS} rounds, validation every {EVAL_EVERY})."
        )
        + "\n\n"
        + md_table(
            [
                "setting",
                "test accuracy",
                "test AUROC",
                "FLamby accuracy",
                "chosen hyper-parameters",
            ],
            rows,
        )
        + f"\n\n{verdict}.\n"
    )
    if log and chosen != CHOSEN:
        body += (
            "\nThe search chose other values than the script's CHOSEN (used by `--quick`): "
            "update CHOSEN.\n"
        )
    if log:
        notes = edge_notes(chosen, log, MAX_ROUNDS)
        if notes:
            body += (
                "\nOn the edge of the grid (a wider grid might do better): "
                + "; ".join(notes)
                + ".\n"
            )
        frame = pd.DataFrame(log).sort_values(["strategy", "val_accuracy"], ascending=[True, False])
        top = frame.groupby("strategy", sort=False).head(3)
        grid_rows = [
            [
                r["strategy"],
                *(
                    r.get(k, "") if pd.notna(r.get(k, float("nan"))) else ""
                    for k in ("lr", "local_epochs", "mu", "server_lr")
                ),
                int(r["rounds"]),
                f"{r['val_accuracy']:.4f}",
            ]
            for _, r in top.iterrows()
        ]
        body += (
            f"\nGrid search ({len(frame)} (configuration, rounds) points, each the mean over "
            f"{len(SEEDS)} seeds); the best three per strategy by validation accuracy "
            "(the full grid is in the JSON file):\n\n"
            + md_table(
                ["strategy", "lr", "local_epochs", "mu", "server_lr", "rounds", "val accuracy"],
                grid_rows,
            )
            + "\n"
        )
    out = write_results(
        "heart_accuracy",
        "Heart (FLamby protocol): accuracy of the federated strategies",
        body,
        {
            "seeds": SEEDS,
            "chosen": chosen,
            "per_seed": per_seed,
            "grid": log,
            "flamby": FLAMBY,
            "target": TARGET,
            "best": best,
            "quick": args.quick,
        },
        started,
    )
    print(out.read_text())


if __name__ == "__main__":
    main()
