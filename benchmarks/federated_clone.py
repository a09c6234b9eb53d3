"""Federated cloning vs federated training (issue 7, item 4) on heart and eICU mortality.

For each dataset (natural sites: heart's 4 hospitals, eICU's 5 regions), epsilon and seed,
:func:`medsilo.study.federated_clone.run_federated_clone` runs one study:

* DP-FedAvg (record-level local DP-SGD, clip 1, target epsilon, delta 1e-6, RDP), with its
  DP baselines local-only-DP and pooled-DP (simulation only), the hyper-parameters that
  dp_heart_accuracy.py / dp_eicu_auroc.py chose on validation data for that epsilon;
* each site's clone of its training split at the same (epsilon, 1e-6), MST with the
  target-aware tree (the label), recorded in the same site ledger (budget 2 x epsilon:
  both routes fit; the ledger shows their composition), and the same logistic model
  trained on the pooled clones with the pooled baseline's epoch budget;

all tested on each site's own test split (25 %). Sites too small for a clone at this
epsilon refuse (and are named). Writes results/federated_clone.{md,json}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_mean_sd, md_table, write_results
from _studies import logreg_study

from medsilo.study.federated_clone import SETTINGS, run_federated_clone

DELTA = 1e-6
# (batch, rounds, lr) chosen on validation data by dp_heart_accuracy.py / dp_eicu_auroc.py
CHOSEN = {
    ("heart", 1.0): (64, 20, 0.3),
    ("heart", 4.0): (64, 20, 1.0),
    ("eicu", 1.0): (32, 5, 1.0),
    ("eicu", 4.0): (64, 15, 1.0),
}
DATA = {
    "heart": 'dataset = "heart"',
    "eicu": 'dataset = "eicu"\noptions = { group_by = "region" }',
}


def study_text(dataset: str, epsilon: float, seed: int) -> str:
    """DP-FedAvg with both baselines on the dataset's natural sites; every site's budget
    is twice epsilon, so that the training leaves room for the site's clone."""
    batch, rounds, lr = CHOSEN[(dataset, epsilon)]
    return logreg_study(
        name=f"fc-{dataset}",
        seed=seed,
        rounds=rounds,
        evaluate_every=rounds,
        data=f'{DATA[dataset]}\npartition = "natural"\nval_fraction = 0.15\ntest_fraction = 0.25',
        local_epochs=1,
        batch=batch,
        lr=lr,
        baselines=True,
        dp={"clip": 1.0, "epsilon": epsilon, "delta": DELTA, "budget": 2 * epsilon},
    )


def one_run(dataset: str, epsilon: float, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "study.toml"
        study.write_text(study_text(dataset, epsilon, seed))
        start = time.perf_counter()
        result = run_federated_clone(
            study, Path(tmp) / "out", epsilon=epsilon, delta=DELTA, target=True
        )
        seconds = time.perf_counter() - start
    means = result.means.set_index("setting")
    return {
        "dataset": dataset,
        "epsilon": epsilon,
        "seed": seed,
        "seconds": seconds,
        "auroc": {s: float(means.loc[s, "auroc"]) for s in SETTINGS if s in means.index},
        "accuracy": {s: float(means.loc[s, "accuracy"]) for s in SETTINGS if s in means.index},
        "refused": {n: s.refused for n, s in result.sites.items() if s.refused is not None},
        "epsilon_spent": {n: s.epsilon_spent for n, s in result.sites.items()},
        "per_site": result.per_site.to_dict(orient="records"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["heart", "eicu"])
    parser.add_argument("--epsilons", nargs="+", type=float, default=[1.0, 4.0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--name", default="federated_clone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = datetime.now(UTC)
    runs = []
    for dataset in args.datasets:
        for epsilon in args.epsilons:
            for seed in range(args.seeds):
                run = one_run(dataset, epsilon, seed)
                runs.append(run)
                print(
                    f"{dataset} eps={epsilon:g} seed={seed}: "
                    + ", ".join(f"{k} {v:.3f}" for k, v in run["auroc"].items())
                    + f" refused {sorted(run['refused'])} ({run['seconds']:.0f} s)",
                    flush=True,
                )
    names = {
        "federated": "DP-FedAvg",
        "local_only": "local-only-DP",
        "pooled": "pooled-DP (simulation)",
        "pooled_clones": "pooled clones",
    }
    rows = []
    for dataset in args.datasets:
        for epsilon in args.epsilons:
            sel = [r for r in runs if r["dataset"] == dataset and r["epsilon"] == epsilon]
            refused = sorted({s for r in sel for s in r["refused"]})
            spent = max((e for r in sel for e in r["epsilon_spent"].values() if e), default=0)
            for setting in SETTINGS:
                auroc = [r["auroc"][setting] for r in sel if setting in r["auroc"]]
                acc = [r["accuracy"][setting] for r in sel if setting in r["accuracy"]]
                extra = (
                    f"refused: {', '.join(refused) or 'none'}; max ledger eps {spent:.3f}"
                    if setting == "pooled_clones"
                    else ""
                )
                rows.append(
                    [
                        dataset,
                        f"{epsilon:g}",
                        names[setting],
                        fmt_mean_sd(auroc),
                        fmt_mean_sd(acc),
                        extra,
                    ]
                )
    body = (
        f"Mean over sites of each site's test metric, then mean ± sd over seeds "
        f"{list(range(args.seeds))}. Every route at the same (epsilon, delta = 1e-6) per "
        "site; site budgets 2 x epsilon, so the clone (after training) fits and the ledger "
        "holds both (max ledger eps: the largest epsilon a site's ledger reached after its "
        "clone). Clones: MST, target-aware tree on the label, noisy row count.\n\n"
        + md_table(["dataset", "eps", "setting", "AUROC", "accuracy", "clones"], rows)
        + "\n"
    )
    path = write_results(args.name, "Federated cloning vs DP-FedAvg", body, {"runs": runs}, started)
    print(body)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
