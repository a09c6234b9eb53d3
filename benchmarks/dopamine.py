"""Dopamine's five settings on RetinaMNIST (Malekzadeh et al., PPAI-21), as medsilo studies.

The issue (secure aggregation + distributed DP): C (centralized), CDP (central DP-SGD), F
(FedAvg), FPDP (each site adds the full noise: "parallel DP", medsilo's ``local`` mode)
and Dopamine (distributed DP + secure aggregation, medsilo's ``distributed`` mode); K = 10
sites, one step of the federation per round, Poisson sampling, C = 2, momentum 0.9;
accuracy and quadratic weighted kappa vs epsilon at delta = 1e-4, mean of 5 seeds. Goal:
the same ordering as the paper's: Dopamine within 1.5 points of CDP at equal epsilon and
clearly above FPDP at equal epsilon.

Data: the built-in ``retina`` (RetinaMNIST 28x28, 1,600 images, 5 grades), ``iid`` over
10 sites (each site: its own 25% test split, 10% validation). Every setting uses the same
split for a seed: C and CDP are the pooled baseline of a 10-site study (one model on the
10 sites' training rows concatenated, tested on each site's own test split), so a paired
difference compares the same training rows, test rows and initial weights. Model:
medsilo's GroupNorm CNN (channels 16, 32; 5,349 weights). Metrics: the mean over sites of
each site's test accuracy and QWK of the final model; mean ± sd over seeds 0-4 (the seed
fixes the split and the initial weights; DP noise comes from fresh site secrets by design).

Protocols, the same total expected batch (10 B records per step, B = ``--site-batch``,
3 by default: q = 3/90.5 = 0.033 per site, Dopamine's own rate of 0.034; at larger q the
Skellam noise that distributed DP needs grows past central DP's, see
``benchmarks/skellam_price.py``) and lr in every setting:
* Dopamine: ``mode = "distributed"``, batch B per site (q = B/n_i), one DP-SGD step
  of the federation per round, ``ROUNDS_STEP`` rounds, FedAvgM server momentum 0.9 (the
  coordinator's SGD with momentum on the decoded noisy gradient), secure aggregation
  with ``dropout_rate = 0.1`` (``--dropout-rate``; t = 9 of 10 shares planned: the noise
  is calibrated for 9 shares, 10 reach the sum, so epsilon ends below the target; 0 plans
  for all 10, as Dopamine does, and any dropout aborts the round), Skellam noise
  calibrated by medsilo to the target epsilon.
* CDP: DP-SGD (Opacus) on the pooled training rows (medsilo's pooled-DP baseline),
  batch 10 B, momentum 0.9 kept through the whole run, as many epochs (ceil(1/q) steps
  each) as make about the same number of steps as Dopamine, sigma calibrated to the same
  epsilon (its epsilon is read from the run's ``baselines.json``).
* FPDP: 10 sites, ``mode = "local"``, batch B per site, as many rounds of one local
  epoch as CDP, FedAvg, sigma calibrated per site to the same epsilon (each site's noise
  is full strength for its own small batch).
* F and C: the same as FPDP and CDP without DP.
The study that carries C or CDP also trains a federation (batch 10 B per site, plain
FedAvg; FPDP-like for CDP) only because the pooled baseline comes with one; it is not
reported.
The learning rate is not tuned (no grid on this 2-core machine): lr = 0.05 with momentum
0.9 everywhere, a common DP-SGD choice for small CNNs; say so when comparing.

    python benchmarks/dopamine.py [--seeds 5] [--first-seed 0] [--epsilons 4 10]
                                  [--settings ...] [--name N] [--quick]

The verdicts compare means over seeds and, because a seed fixes the split and the initial
weights of every setting, also the per-seed (paired) differences, mean ± sd.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _common import fmt_mean_sd, md_table, mean_sd, write_results
from _studies import dp_sections

from medsilo.report.rundir import BASELINES_FILE
from medsilo.study.run import run_study_text

logging.getLogger("absl").setLevel(logging.ERROR)

ROUNDS_STEP = 300
"""DP-SGD steps of every setting (10 epochs of the 905 training rows at B = 3)."""
TRAIN_ROWS = 905
"""Training rows of RetinaMNIST's 1,600 after each site's test and validation splits."""
SITES = 10
LR = 0.05
CLIP = 2.0
DELTA = 1e-4

COMMON = """
[study]
name = "dopamine-{setting}"
rounds = {rounds}
evaluate_every = 0
seed = {seed}

[data]
dataset = "retina"
partition = "iid"
num_sites = {sites}
test_fraction = 0.25
val_fraction = 0.1

[model]
name = "cnn"

[train]
batch_size = {batch}
lr = {lr}
momentum = {momentum}
local_epochs = 1

[strategy]
name = "{strategy}"
{strategy_extra}

[baselines]
local_only = false
pooled = {pooled}
"""

SECURE = """
[secure_aggregation]
enabled = true
bits = 48
dropout_rate = {dropout_rate}
"""


SETTINGS = ("C", "F", "CDP", "FPDP", "Dopamine")
NON_PRIVATE = ("C", "F")
POOLED = ("C", "CDP")
"""Read from the pooled baseline of their study, on the federation's own split."""


def paired(rows: list[dict[str, Any]], epsilon: float, other: str, metric: str) -> str:
    """Dopamine minus ``other`` seed by seed (same split and initial weights), in points:
    mean ± sd over seeds."""
    by_seed = {(r["setting"], r["seed"]): r[metric] for r in rows if r["target_epsilon"] == epsilon}
    seeds = sorted(s for setting, s in by_seed if setting == "Dopamine")
    diffs = [100 * (by_seed[("Dopamine", s)] - by_seed[(other, s)]) for s in seeds]
    return fmt_mean_sd(diffs, digits=1)


def epoch_rounds(rounds_step: int, site_batch: int) -> int:
    """Rounds of one local epoch (about 1/q steps each) that make ``rounds_step`` steps."""
    return math.ceil(rounds_step / math.ceil(TRAIN_ROWS / (SITES * site_batch)))


def study(
    setting: str,
    seed: int,
    epsilon: float | None,
    rounds_step: int,
    site_batch: int,
    dropout_rate: float = 0.1,
) -> str:
    """The study file of one setting."""
    pooled = setting in POOLED
    batch = SITES * site_batch if pooled else site_batch
    rounds = rounds_step if setting == "Dopamine" else epoch_rounds(rounds_step, site_batch)
    dopamine = setting == "Dopamine"
    text = COMMON.format(
        setting=setting,
        rounds=rounds,
        seed=seed,
        sites=SITES,
        batch=batch,
        pooled=str(pooled).lower(),
        lr=LR,
        momentum=0.0 if dopamine else 0.9,
        strategy="fedavgm" if dopamine else "fedavg",
        strategy_extra="server_momentum = 0.9" if dopamine else "",
    )
    if setting in ("CDP", "FPDP", "Dopamine"):
        mode = "distributed" if dopamine else "local"
        text += dp_sections(mode, CLIP, epsilon, DELTA)
    if dopamine:
        text += SECURE.format(dropout_rate=dropout_rate)
    return text


def evaluate(
    setting: str,
    seed: int,
    epsilon: float | None,
    rounds_step: int,
    site_batch: int,
    dropout_rate: float,
) -> dict[str, Any]:
    start = time.perf_counter()
    text = study(setting, seed, epsilon, rounds_step, site_batch, dropout_rate)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_study_text(text, out=Path(tmp) / "run")
        baselines = json.loads((result.run_dir / BASELINES_FILE).read_text())
    h = result.history
    train = h[h["kind"] == "train"]
    spent = None
    if setting in POOLED:
        final = result.per_site[result.per_site["setting"] == "pooled"]
        if setting == "CDP":
            spent = float(baselines["privacy"]["pooled"]["epsilon"])
    else:
        test = h[(h["kind"] == "eval") & (h["split"] == "test")]
        final = test[test["round"] == test["round"].max()]
        if "epsilon" in train and train["epsilon"].notna().any():
            spent = float(train.groupby("site")["epsilon"].max().max())
    row = {
        "setting": setting,
        "seed": seed,
        "target_epsilon": epsilon,
        "epsilon_spent_max": spent,
        "accuracy": float(final["accuracy"].mean()),
        "qwk": float(final["qwk"].mean()),
        "seconds": round(time.perf_counter() - start, 1),
    }
    if "epsilon_collusion" in train:
        row["epsilon_collusion_max"] = float(train["epsilon_collusion"].max())
    print(row, flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds FIRST .. FIRST+N-1")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[4.0, 10.0])
    parser.add_argument(
        "--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS), help="a subset"
    )
    parser.add_argument("--name", default="dopamine", help="results/NAME.{md,json}")
    parser.add_argument(
        "--dropout-rate", type=float, default=0.1, help="Dopamine's secure-aggregation plan"
    )
    parser.add_argument(
        "--site-batch",
        type=int,
        default=3,
        help="expected records per site per step (q = B/90.5); the pooled settings use 10 B",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 seed, 30 steps: a smoke run, not a result"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = datetime.now(UTC)
    seeds = range(args.first_seed, args.first_seed + (1 if args.quick else args.seeds))
    rounds_step = 30 if args.quick else ROUNDS_STEP
    rows: list[dict[str, Any]] = []
    chosen = [s for s in SETTINGS if s in args.settings]
    for seed in seeds:
        for setting in (s for s in chosen if s in NON_PRIVATE):
            rows.append(evaluate(setting, seed, None, rounds_step, args.site_batch, 0.1))
        for epsilon in args.epsilons:
            for setting in (s for s in chosen if s not in NON_PRIVATE):
                row = evaluate(
                    setting, seed, epsilon, rounds_step, args.site_batch, args.dropout_rate
                )
                rows.append(row)
    table, summary = [], {}
    for setting in chosen:
        for epsilon in [None] if setting in NON_PRIVATE else args.epsilons:
            runs = [r for r in rows if r["setting"] == setting and r["target_epsilon"] == epsilon]
            acc, qwk = [r["accuracy"] for r in runs], [r["qwk"] for r in runs]
            spent = [r["epsilon_spent_max"] for r in runs if r["epsilon_spent_max"] is not None]
            collusion = [r["epsilon_collusion_max"] for r in runs if "epsilon_collusion_max" in r]
            summary[f"{setting}@{epsilon}"] = {"accuracy": mean_sd(acc), "qwk": mean_sd(qwk)}
            table.append(
                [
                    setting,
                    "-" if epsilon is None else f"{epsilon:g}",
                    f"{max(spent):.2f}" if spent else "inf",
                    f"{max(collusion):.2f}" if collusion else "",
                    fmt_mean_sd(acc),
                    fmt_mean_sd(qwk),
                    f"{sum(r['seconds'] for r in runs) / len(runs):.0f}",
                ]
            )
    verdicts = []
    compared = {"Dopamine", "CDP", "FPDP"} <= set(chosen)
    for epsilon in args.epsilons if compared else []:
        dop = summary[f"Dopamine@{epsilon}"]["accuracy"][0]
        cdp = summary[f"CDP@{epsilon}"]["accuracy"][0]
        fpdp = summary[f"FPDP@{epsilon}"]["accuracy"][0]
        verdicts.append(
            f"- epsilon {epsilon:g}: Dopamine {dop:.3f} vs CDP {cdp:.3f} "
            f"({100 * (dop - cdp):+.1f} points; goal within 1.5: "
            f"{'met' if abs(dop - cdp) <= 0.015 or dop > cdp else 'missed'}), vs FPDP "
            f"{fpdp:.3f} ({100 * (dop - fpdp):+.1f} points; goal clearly above: "
            f"{'met' if dop - fpdp >= 0.02 else 'missed'}). Paired by seed, in points: "
            f"accuracy {paired(rows, epsilon, 'CDP', 'accuracy')} vs CDP, "
            f"{paired(rows, epsilon, 'FPDP', 'accuracy')} vs FPDP; QWK x 100 "
            f"{paired(rows, epsilon, 'CDP', 'qwk')} vs CDP, "
            f"{paired(rows, epsilon, 'FPDP', 'qwk')} vs FPDP"
        )
    body = "\n".join(
        [
            f"Settings run: {', '.join(chosen)}. "
            f"RetinaMNIST, 10 iid sites, GroupNorm CNN, delta {DELTA:g}, "
            f"{len(list(seeds))} seed(s); Dopamine {rounds_step} steps of expected batch "
            f"{SITES * args.site_batch} (q = {args.site_batch * SITES / TRAIN_ROWS:.3f}), "
            f"C/CDP {epoch_rounds(rounds_step, args.site_batch)} epochs on the pooled "
            f"training rows (batch {SITES * args.site_batch}) and F/FPDP as many rounds of "
            f"one local epoch (batch {args.site_batch} per site): the same number of steps. "
            "Every setting of a seed uses the same split into sites and the same initial "
            "weights. Dopamine's secure aggregation plans for "
            f"dropout rate {args.dropout_rate:g}. "
            "Accuracy and QWK: mean over sites of the final model's test metrics, "
            "mean ± sd over seeds. epsilon spent: the largest over sites, from the sites' "
            "ledgers (against the coordinator), for CDP the pooled-DP baseline's (from "
            "baselines.json); Dopamine's colluders' epsilon is against "
            "the coordinator and all 9 other sites (its own share only).",
            "",
            md_table(
                [
                    "setting",
                    "target epsilon",
                    "epsilon spent",
                    "epsilon if all others collude",
                    "accuracy",
                    "QWK",
                    "s per run",
                ],
                table,
            ),
            "",
            *verdicts,
        ]
    )
    write_results(
        args.name + ("_quick" if args.quick else ""),
        "Dopamine's five settings on RetinaMNIST",
        body,
        {"rows": rows, "summary": summary},
        started,
    )
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
