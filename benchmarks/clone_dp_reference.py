"""The clone's TSTR beside training the same classifier directly with DP-SGD (issue 7).

A DP clone is one route to a private model; the other is to train the model itself with
DP-SGD (Abadi et al. 2016) at the same (epsilon, delta). This script measures the second
on exactly the first's task, so that the clone's TSTR/TRTR can be read against what a
direct DP learner gets from the same rows:

* the same datasets, stratified 75/25 splits and seeds as ``clone.py`` (its ``split``),
  delta 1e-6;
* the same features and model: logistic regression on the schema's one-hot codes
  (``medsilo.clone.evaluate.one_hot``; TRTR is ``train_test`` on the private rows, as in
  ``clone.py``);
* DP-SGD with Poisson sampling (``medsilo.privacy.dpsgd.train_dpsgd``), clip 1.0, sigma
  calibrated by the RDP accountant for q = batch / n and epochs x ceil(1/q) steps
  (``calibrate_noise_multiplier``);
* hyper-parameters chosen per (dataset, epsilon, seed) from the grid batch {32, 64} x
  epochs {5, 15} x lr {0.3, 1.0} by AUROC on a stratified 20 % validation part of the
  private rows (the winner is then retrained on all private rows). The choice itself is
  not privatized, as is usual in DP-SGD papers and in ``dp_eicu_auroc.py``; it favours the
  DP-SGD reference, not the clone. Noise comes from a seeded torch generator: a benchmark,
  not a release.

``--clones NAME ...``: ``results/NAME.json`` files of ``clone.py`` runs; their TSTR for the
same (dataset, epsilon, seed) is put beside the DP-SGD AUROC, with the paired difference
(clone minus DP-SGD) and its 95 % t-interval over seeds.

    python benchmarks/clone_dp_reference.py --datasets eicu heart --epsilons 0.5 1 4 \
        --clones clone_target_eicu_apache clone_target_heart_eps1_ci clone_target_heart_eps05_4
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from _common import RESULTS, fmt_mean_sd, md_table, write_results
from clone import split, t_interval

from medsilo.clone import builtin
from medsilo.clone.domain import TableDomain
from medsilo.clone.evaluate import one_hot, train_test
from medsilo.privacy.calibration import calibrate_noise_multiplier
from medsilo.privacy.dpsgd import steps_per_epoch, train_dpsgd

logging.getLogger("absl").setLevel(logging.ERROR)

DELTA = 1e-6
GRID = [{"batch": b, "epochs": e, "lr": lr} for b in (32, 64) for e in (5, 15) for lr in (0.3, 1.0)]


def dp_logreg_auroc(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    epsilon: float,
    batch: int,
    epochs: int,
    lr: float,
    seed: int,
) -> float:
    """Test AUROC of logistic regression trained with DP-SGD at (epsilon, DELTA)."""
    from sklearn.metrics import roc_auc_score

    q = min(1.0, batch / len(y))
    steps = epochs * steps_per_epoch(q)
    sigma = calibrate_noise_multiplier(
        target_epsilon=epsilon, delta=DELTA, sample_rate=q, steps=steps, dataset_size=len(y)
    ).noise_multiplier
    torch.manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], 2)
    train_dpsgd(
        model,
        torch.from_numpy(x),
        torch.from_numpy(y),
        sample_rate=q,
        steps=steps,
        noise_multiplier=sigma,
        clip=1.0,
        lr=lr,
        momentum=0.0,
        weight_decay=0.0,
        sampling_seed=seed,
        noise=torch.Generator().manual_seed(10_000 + seed),
    )
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(x_test)), dim=1)[:, 1].numpy()
    return float(roc_auc_score(y_test, p))


def one_run(dataset: str, epsilon: float, seed: int) -> dict[str, Any]:
    frame, schema, _ = builtin.load(dataset)
    labels = frame[builtin.LABEL].to_numpy()
    train_idx, test_idx = split(labels, seed)
    domain = TableDomain(schema)
    sizes = dict(domain.sizes)
    features = [c for c in sizes if c != builtin.LABEL]
    positive = len(schema.columns[builtin.LABEL].categories or ()) - 1
    codes = domain.encode(frame, dataset).codes
    x_all = one_hot(codes, sizes, features)
    y_all = (codes[builtin.LABEL] == positive).astype(np.int64)
    train = {c: v[train_idx] for c, v in codes.items()}
    test = {c: v[test_idx] for c, v in codes.items()}
    trtr = train_test(train, test, sizes, builtin.LABEL, positive, seed)["auroc"]

    inner_fit, inner_val = split(y_all[train_idx], 100 + seed, holdout=0.2)
    fit_idx, val_idx = train_idx[inner_fit], train_idx[inner_val]
    scores = []
    for config in GRID:
        scores.append(
            dp_logreg_auroc(
                x_all[fit_idx], y_all[fit_idx], x_all[val_idx], y_all[val_idx],
                epsilon=epsilon, seed=seed, **config,
            )
        )  # fmt: skip
    chosen = GRID[int(np.argmax(scores))]
    auroc = dp_logreg_auroc(
        x_all[train_idx], y_all[train_idx], x_all[test_idx], y_all[test_idx],
        epsilon=epsilon, seed=seed, **chosen,
    )  # fmt: skip
    return {
        "dataset": dataset,
        "epsilon": epsilon,
        "seed": seed,
        "trtr_auroc": trtr,
        "dpsgd_auroc": auroc,
        "chosen": chosen,
        "val_auroc": max(scores),
    }


def clone_tstr(names: list[str]) -> dict[tuple[str, float, int], float]:
    """(dataset, epsilon, seed) -> the clone's TSTR AUROC, from clone.py result files."""
    out: dict[tuple[str, float, int], float] = {}
    for name in names:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            raise SystemExit(f"{path} not found: run benchmarks/clone.py --name {name} first")
        for run in json.loads(path.read_text(encoding="utf-8"))["runs"]:
            key = (run["dataset"], float(run["epsilon"]), int(run["seed"]))
            out.setdefault(key, float(run["tstr_auroc"]))
    return out


def paired(values: list[float]) -> str:
    """Mean and 95 % t-interval over seeds (``clone.t_interval``)."""
    low, high = t_interval(values)
    m = sum(values) / len(values)
    return f"{m:+.3f}" if len(values) < 2 else f"{m:+.3f} [{low:+.3f}, {high:+.3f}]"


def summary(runs: list[dict[str, Any]], tstr: dict[tuple[str, float, int], float]) -> str:
    rows = []
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        for eps in dict.fromkeys(r["epsilon"] for r in runs if r["dataset"] == dataset):
            group = [r for r in runs if r["dataset"] == dataset and r["epsilon"] == eps]
            ratio = [r["dpsgd_auroc"] / r["trtr_auroc"] for r in group]
            matched = [r for r in group if (dataset, eps, r["seed"]) in tstr]
            clone = [tstr[(dataset, eps, r["seed"])] for r in matched]
            rows.append(
                [
                    dataset,
                    f"{eps:g}",
                    len(group),
                    fmt_mean_sd([r["trtr_auroc"] for r in group]),
                    fmt_mean_sd([r["dpsgd_auroc"] for r in group]),
                    fmt_mean_sd(ratio),
                    len(matched),
                    fmt_mean_sd(clone) if clone else "-",
                    fmt_mean_sd([c / r["trtr_auroc"] for c, r in zip(clone, matched, strict=True)])
                    if clone
                    else "-",
                    paired([c - r["dpsgd_auroc"] for c, r in zip(clone, matched, strict=True)])
                    if clone
                    else "-",
                ]
            )
    table = md_table(
        [
            "dataset",
            "eps",
            "seeds",
            "TRTR",
            "DP-SGD",
            "DP-SGD/TRTR",
            "clone seeds",
            "clone TSTR",
            "TSTR/TRTR",
            "clone - DP-SGD [95 % CI]",
        ],
        rows,
    )
    return (
        "Logistic regression on the schema's one-hot codes, trained (a) on the private rows "
        "without privacy (TRTR), (b) on them with DP-SGD at (epsilon, 1e-6), hyper-parameters "
        "chosen per seed on a validation part of the private rows, (c) on the DP clone "
        "(TSTR, from the clone.py results named in the command; same splits and seeds). AUROC "
        "on the real holdout, mean ± sd over seeds.\n\n" + table
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["eicu", "heart"])
    parser.add_argument("--epsilons", nargs="+", type=float, default=[0.5, 1.0, 4.0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--clones", nargs="*", default=[], help="clone.py result names")
    parser.add_argument("--name", default="clone_dp_reference")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = datetime.now(UTC)
    tstr = clone_tstr(args.clones)
    runs = []
    for dataset in args.datasets:
        for eps in args.epsilons:
            for seed in range(args.seeds):
                run = one_run(dataset, eps, seed)
                runs.append(run)
                print(
                    f"{dataset} eps={eps:g} seed={seed}: DP-SGD {run['dpsgd_auroc']:.3f} "
                    f"TRTR {run['trtr_auroc']:.3f} {run['chosen']}",
                    flush=True,
                )
    path = write_results(
        args.name,
        "DP clone vs DP-SGD on the same classifier",
        summary(runs, tstr),
        {"runs": runs, "clones": args.clones, "grid": GRID, "delta": DELTA},
        started,
    )
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
