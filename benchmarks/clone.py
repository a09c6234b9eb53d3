"""DP clones of clinical tables (issue 7): utility, fidelity and privacy on heart and eICU.

For each dataset (``heart``: angiographic disease; ``eicu``: in-hospital mortality), seed
0-4 and epsilon in {0.5, 1, 4} (delta 1e-6): a stratified 75/25 split of the rows into a
private table and a real holdout (seeded); the private table is cloned with MST (or AIM
with ``--mechanism aim``; ``--target``: MST's target-aware tree, every column's pair with
the label, :mod:`medsilo.clone.mst`) at (epsilon, delta), as many rows as the private
table; then
``medsilo.clone.evaluate.evaluate`` on (private, clone, holdout):

* utility: logistic regression on one-hot codes, trained on the clone (TSTR), on the
  private table (TRTR) and on its k-anonymized version (k = 5, 10; Datafly, quasi-
  identifiers = the demographic and admission columns: heart age, sex; eICU age, gender,
  unittype, unitadmitsource - the primary baseline), and, beside it, the privacy-matched
  baseline: k = 5 with every non-label column a quasi-identifier (the membership
  attacker's knowledge), tested on the holdout (AUROC);
* fidelity: mean 1-way and 2-way marginal TVD, mean |correlation difference|;
* privacy: median DCR (Hamming, clone vs holdout rows to the private rows), DOMIAS-style
  and distance membership-attack AUROC (the larger is reported), exact-row leakage. The
  attack's sampling noise: the Hanley & McNeil (1982) standard error of an AUROC of 0.5 on
  that many members and non-members, and a 95 % t-interval of the mean over seeds. The
  same attacks and exact-row counts on both k=5 tables, so that the releases' privacy is
  compared on one scale.

Goals (issue 7), at epsilon 1: TSTR AUROC >= 95 % of TRTR and above the k=5 baseline;
membership-attack AUROC <= 0.55. Writes results/clone.{md,json} (or clone_aim.*), again
after every run (a cut run keeps its finished seeds; the file says how many ran).
Timings: the clone's wall time per run (MST/AIM, JAX compilation included); memory: the
peak resident set size of the process during the clone (psutil, sampled every 0.2 s).
``--jobs N``: each run in a fresh worker process (spawned, one run per process: XLA's
compiled programs would otherwise grow one process's memory clone after clone), N at once;
a run whose process dies (out of memory) is reported, the others go on, and the exit code
is 1.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import multiprocessing.connection
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import psutil
import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import RESULTS, fmt_mean_sd, md_table, mean_sd, write_results

from medsilo.clone import builtin
from medsilo.clone.anonymize import k_anonymize, mondrian
from medsilo.clone.domain import TableDomain
from medsilo.clone.evaluate import anonymized_baseline, evaluate, train_test
from medsilo.clone.release import make_clone

QUASI_IDENTIFIERS = {
    "heart": ["age", "sex"],
    "eicu": ["age", "gender", "unittype", "unitadmitsource"],
}


def split(labels: np.ndarray, seed: int, holdout: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Stratified random split: (private rows, holdout rows)."""
    rng = np.random.default_rng(1000 + seed)
    train, test = [], []
    for value in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == value))
        cut = round(len(idx) * holdout)
        test.append(idx[:cut])
        train.append(idx[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def one_run(
    dataset: str, seed: int, epsilon: float, mechanism: str, target: bool = False
) -> dict[str, Any]:
    torch.set_num_threads(1)
    frame, schema, _ = builtin.load(dataset)
    train_idx, test_idx = split(frame[builtin.LABEL].to_numpy(), seed)
    train = frame.iloc[train_idx].reset_index(drop=True)
    holdout = frame.iloc[test_idx].reset_index(drop=True)
    start = time.perf_counter()
    with PeakRss() as peak:
        result = make_clone(
            train,
            schema,
            epsilon=epsilon,
            delta=1e-6,
            rows=len(train),
            mechanism=mechanism,  # type: ignore[arg-type]
            seed=seed,
            target=builtin.LABEL if target else None,
        )
    seconds = time.perf_counter() - start
    ev = evaluate(
        train,
        result.frame,
        holdout,
        schema,
        builtin.LABEL,
        quasi_identifiers=QUASI_IDENTIFIERS[dataset],
        seed=seed,
    )
    u, anon = ev.utility, ev.anonymized
    return {
        "dataset": dataset,
        "seed": seed,
        "epsilon": epsilon,
        "clone_seconds": seconds,
        "peak_rss_mib": peak.mib,
        "measurements": result.details["gaussian_measurements"],
        "tstr_auroc": u["tstr"]["auroc"],
        "trtr_auroc": u["trtr"]["auroc"],
        "k5_auroc": u["k5"]["auroc"],
        "k10_auroc": u["k10"]["auroc"],
        "k5_suppressed": anon["k5"]["suppressed"],
        "k10_suppressed": anon["k10"]["suppressed"],
        "k5_all_auroc": u["k5_all"]["auroc"],
        "k5_all_suppressed": anon["k5_all"]["suppressed"],
        "k5_all_levels": anon["k5_all"]["levels"],
        "k5_all_mondrian_auroc": u["k5_all_mondrian"]["auroc"],
        **{
            f"{name}_{key}": anon[name].get(key, float("nan"))
            for name in ("k5", "k5_all", "k5_all_mondrian")
            for key in ("attack_auroc", "domias_auroc", "distance_auroc", "rows_equal_share")
        },
        "tvd_1way": ev.fidelity["tvd_1way_mean"],
        "tvd_2way": ev.fidelity["tvd_2way_mean"],
        "corr_diff": ev.correlation["mean_abs_difference"],
        "dcr_clone": ev.dcr["clone_median"],
        "dcr_holdout": ev.dcr["holdout_median"],
        "exact_share": ev.leakage["clone_rows_equal_share"],
        "holdout_exact_share": ev.leakage["holdout_rows_equal_share"],
        "domias_auroc": ev.attack["domias_auroc"],
        "distance_auroc": ev.attack["distance_auroc"],
        "attack_auroc": ev.summary["attack_auroc"],
        "attack_members": ev.attack["members"],
        "attack_non_members": ev.attack["non_members"],
        "attack_null_mean": ev.attack["max_null_mean"],
        "attack_p_value": ev.attack["max_p_value"],
        "rho": result.rho,
    }


class PeakRss:
    """Peak resident set size of this process while the block runs (sampled, MiB)."""

    def __enter__(self) -> PeakRss:
        self._process = psutil.Process()
        self.mib = self._process.memory_info().rss / 2**20
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            self.mib = max(self.mib, self._process.memory_info().rss / 2**20)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.mib = max(self.mib, self._process.memory_info().rss / 2**20)


def null_auroc_se(members: float, non_members: float) -> float:
    """Standard error of an AUROC of 0.5 (no signal) on these counts (Hanley & McNeil
    1982, Eq. 2 at A = 0.5: sqrt((m + n + 1) / (12 m n)))."""
    return math.sqrt((members + non_members + 1) / (12 * members * non_members))


def t_interval(values: list[float]) -> tuple[float, float]:
    """95 % two-sided t-interval of the mean; one value bounds nothing (no degrees of
    freedom): the whole line, so that one seed's verdict is "undecided"."""
    from scipy import stats

    m = statistics.fmean(values)
    if len(values) < 2:
        return -math.inf, math.inf
    t975 = float(stats.t.ppf(0.975, len(values) - 1))
    half = t975 * statistics.stdev(values) / math.sqrt(len(values))
    return m - half, m + half


BASELINES = (
    ("declared", "datafly", 5),
    ("declared", "datafly", 10),
    ("all", "datafly", 5),
    ("all", "mondrian", 5),
)
"""The k-anonymity baselines: (quasi-identifiers, algorithm, k); 'declared' =
QUASI_IDENTIFIERS, 'all' = every non-label column (the membership attacker's knowledge)."""


def anonymity(datasets: list[str], seeds: int) -> int:
    """``--anonymity``: the k-anonymity baselines alone (they do not depend on the clone):
    per seed's split, what the algorithm did (generalization levels, suppressed rows,
    classes; rows unique on the quasi-identifiers before), the model trained on the
    anonymized table tested on the holdout (AUROC, beside TRTR), and its privacy on the
    clone's scale (the same membership attacks, rows equal to a private row); writes
    clone_kanon.*."""
    started = datetime.now(UTC)
    runs: list[dict[str, Any]] = []
    rows: list[list[Any]] = []
    for dataset in datasets:
        frame, schema, _ = builtin.load(dataset)
        domain = TableDomain(schema)
        features = [c for c in domain.columns if c != builtin.LABEL]
        positive = domain.sizes[builtin.LABEL] - 2  # the last declared class
        for seed in range(seeds):
            train_idx, test_idx = split(frame[builtin.LABEL].to_numpy(), seed)
            codes = domain.encode(frame.iloc[train_idx].reset_index(drop=True)).codes
            holdout = domain.encode(frame.iloc[test_idx].reset_index(drop=True)).codes
            trtr = train_test(codes, holdout, domain.sizes, builtin.LABEL, positive, seed)
            for scope, algorithm, k in BASELINES:
                qis = QUASI_IDENTIFIERS[dataset] if scope == "declared" else features
                keys = pd.DataFrame({q: codes[q] for q in qis}).value_counts()
                anon = (
                    mondrian(domain, codes, qis, k)
                    if algorithm == "mondrian"
                    else k_anonymize(domain, codes, qis, k)
                )
                classes = pd.DataFrame(anon.classes).value_counts()
                scores, measured = anonymized_baseline(
                    domain,
                    codes,
                    holdout,
                    qis,
                    k,
                    label=builtin.LABEL,
                    positive=positive,
                    seed=seed,
                    algorithm=algorithm,  # type: ignore[arg-type]
                )
                runs.append(
                    {
                        "dataset": dataset,
                        "seed": seed,
                        "quasi_identifiers": scope,
                        "algorithm": algorithm,
                        "k": k,
                        "rows": len(train_idx),
                        "unique_on_qis": int((keys == 1).sum()),
                        "qi_tuples": len(keys),
                        "levels": anon.levels,
                        "suppressed": anon.suppressed,
                        "classes": len(classes),
                        "smallest_class": int(classes.min()),
                        "trtr_auroc": trtr["auroc"],
                        "auroc": scores["auroc"],
                        **{
                            key: measured[key]
                            for key in (
                                "attack_auroc",
                                "domias_auroc",
                                "distance_auroc",
                                "rows_equal_share",
                            )
                        },
                    }
                )
        for scope, algorithm, k in BASELINES:
            sel = [
                r
                for r in runs
                if r["dataset"] == dataset
                and (r["quasi_identifiers"], r["algorithm"], r["k"]) == (scope, algorithm, k)
            ]
            levels = sorted(
                {", ".join(f"{q} {v}" for q, v in r["levels"].items() if v) or "none" for r in sel}
            )
            rows.append(
                [
                    dataset,
                    scope,
                    algorithm,
                    k,
                    len(sel),
                    *(
                        fmt_mean_sd([r[key] for r in sel], digits)
                        for key, digits in (
                            ("unique_on_qis", 0),
                            ("suppressed", 0),
                            ("classes", 0),
                            ("trtr_auroc", 3),
                            ("auroc", 3),
                            ("attack_auroc", 3),
                            ("distance_auroc", 3),
                            ("rows_equal_share", 3),
                        )
                    ),
                    "; ".join(levels) if algorithm == "datafly" else "(local recoding)",
                ]
            )
    header = ["dataset", "QIs", "algorithm", "k", "seeds", "unique on QIs", "suppressed"]
    header += ["classes", "TRTR", "AUROC", "attack (max)", "dist. attack", "rows equal"]
    header += ["Datafly levels > 0 (per seed)"]
    body = (
        "The k-anonymity baselines on each seed's private table (75 % split; the same "
        "splits as the clones), mean ± sd over seeds. QIs 'declared': "
        + "; ".join(f"{d}: {', '.join(QUASI_IDENTIFIERS[d])}" for d in datasets)
        + " (the primary baseline); 'all': every non-label column (the baseline matched to "
        "the membership attacker, who knows a whole record). Datafly (Sweeney 2002) "
        "generalizes globally (level L of a numeric column merges 2^L adjacent bins of the "
        "schema: heart's age 5-year bins, eICU's age the APACHE II bands <45, 45-54, 55-64, "
        "65-74, >=75; a categorical column at level 1 is suppressed) until at most 5 % of the "
        "rows are in classes smaller than k, then suppresses them; Mondrian (LeFevre et al. "
        "2006) recodes locally and keeps every row. AUROC: logistic regression on one-hot "
        "codes of the anonymized table, tested on the real holdout (TRTR: on the private "
        "table). Privacy with the clone's measures, the anonymized table in the clone's "
        "place: the membership attack (max of DOMIAS and the distance attack; 0.5 = "
        "chance) and the share of released rows equal to a private row.\n\n"
        + md_table(header, rows)
        + "\n"
    )
    path = write_results(
        "clone_kanon", "k-anonymity baselines: utility and privacy", body, {"runs": runs}, started
    )
    print(body)
    print(f"written: {path}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["heart", "eicu"])
    parser.add_argument("--seeds", type=int, default=5, help="how many seeds")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first, first + 1, ...")
    parser.add_argument("--epsilons", nargs="+", type=float, default=[0.5, 1.0, 4.0])
    parser.add_argument("--mechanism", choices=["mst", "aim"], default="mst")
    parser.add_argument(
        "--target",
        action="store_true",
        help="clone for the label: MST's star of label pairs, AIM's label triples",
    )
    parser.add_argument("--name", default=None, help="results file name (default clone)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="run each clone in a fresh spawned process, this many at once (0: in this one)",
    )
    parser.add_argument(
        "--anonymity",
        action="store_true",
        help="only the k-anonymity baselines (utility and privacy, no clones)",
    )
    parser.add_argument(
        "--summarize",
        nargs="+",
        metavar="RESULTS",
        help="re-summarize results/RESULTS.json files (earlier runs of one grid, given as "
        "--datasets/--epsilons/--mechanism/--target/--first-seed/--seeds; a seed found twice "
        "is taken from the first file) into --name",
    )
    args = parser.parse_args()
    if args.anonymity:
        return anonymity(args.datasets, args.seeds)
    if args.summarize:
        return summarize(args)
    torch.set_num_threads(1)
    started = datetime.now(UTC)
    runs: list[dict[str, Any]] = []
    tasks = [
        (dataset, seed, epsilon, args.mechanism, args.target)
        for dataset in args.datasets
        for epsilon in args.epsilons
        for seed in range(args.first_seed, args.first_seed + args.seeds)
    ]
    if not args.jobs:
        for task in tasks:
            _finished(args, runs, one_run(*task), started)
        return 0
    failed = in_fresh_processes(tasks, args.jobs, lambda run: _finished(args, runs, run, started))
    for dataset, seed, epsilon, *_ in failed:
        print(f"{dataset} eps={epsilon:g} seed={seed}: FAILED (see above); not in the results")
    return 1 if failed else 0


Task = tuple[str, int, float, str, bool]


def in_fresh_processes(
    tasks: list[Task], jobs: int, on_run: Callable[[dict[str, Any]], None]
) -> list[Task]:
    """Each task's :func:`one_run` in its own spawned process, at most ``jobs`` at once
    (XLA's compiled programs would otherwise grow one process's memory clone after clone);
    ``on_run`` gets each result as it arrives. A process that ends without a result (an
    exception, killed, out of memory) is reported with its exit code and the others go
    on; returns the tasks that failed."""
    context = multiprocessing.get_context("spawn")
    queue, failed = list(tasks), []
    running: dict[Any, tuple[Task, Any]] = {}
    while queue or running:
        while queue and len(running) < jobs:
            task = queue.pop(0)
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=_send_run, args=(task, sender))
            process.start()
            sender.close()  # the child holds the only sending end: EOF when it dies
            running[receiver] = (task, process)
        for receiver in multiprocessing.connection.wait(list(running)):
            task, process = running.pop(receiver)  # type: ignore[index]
            try:
                run = receiver.recv()  # type: ignore[union-attr]
            except EOFError:
                run = None
            process.join()
            if run is None:
                print(f"{task}: the process ended without a result (exit code {process.exitcode})")
                failed.append(task)
            else:
                on_run(run)
    return failed


def _send_run(task: Task, sender: Any) -> None:
    sender.send(one_run(*task))
    sender.close()


def _finished(
    args: argparse.Namespace, runs: list[dict[str, Any]], run: dict[str, Any], started: datetime
) -> None:
    runs.append(run)
    print(
        f"{run['dataset']} eps={run['epsilon']:g} seed={run['seed']}: "
        f"TSTR {run['tstr_auroc']:.3f} TRTR {run['trtr_auroc']:.3f} k5 {run['k5_auroc']:.3f} "
        f"k5(all QI) {run['k5_all_auroc']:.3f} attack {run['attack_auroc']:.3f} "
        f"({run['clone_seconds']:.0f} s, {run['peak_rss_mib']:.0f} MiB)",
        flush=True,
    )
    report(args, runs, started)


def summarize(args: argparse.Namespace) -> int:
    """``--summarize``: the summary of earlier results files, with what runs written before
    this script recorded them lacked: the attack's member and non-member counts (from the
    seed's split, as :func:`medsilo.clone.evaluate.membership_attack` draws them); the
    Mondrian baseline for runs of this session's schema made before it was recorded (it
    does not depend on the clone: recomputed on the seed's split exactly as ``evaluate``
    does); peak RSS stays unknown ("n/a")."""
    runs: list[dict[str, Any]] = []
    for name in args.summarize:
        source = json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
        have = {(r["dataset"], r["epsilon"], r["seed"]) for r in runs}
        runs += [r for r in source["runs"] if (r["dataset"], r["epsilon"], r["seed"]) not in have]
    for run in runs:
        if "attack_members" not in run:
            frame, _, _ = builtin.load(run["dataset"])
            train_idx, test_idx = split(frame[builtin.LABEL].to_numpy(), run["seed"])
            non_members = len(test_idx) - len(test_idx) // 2
            run["attack_members"] = float(min(non_members, len(train_idx)))
            run["attack_non_members"] = float(non_members)
        if "k5_all_auroc" in run and "k5_all_mondrian_auroc" not in run:
            run |= _mondrian_baseline(run["dataset"], run["seed"])
    if not args.name:
        raise SystemExit("--summarize needs --name for the new results file")
    report(args, runs, datetime.now(UTC), ", ".join(f"results/{n}" for n in args.summarize))
    return 0


def _mondrian_baseline(dataset: str, seed: int) -> dict[str, Any]:
    """The ``k5_all_mondrian_*`` fields of :func:`one_run` for this seed's split."""
    frame, schema, _ = builtin.load(dataset)
    domain = TableDomain(schema)
    train_idx, test_idx = split(frame[builtin.LABEL].to_numpy(), seed)
    codes = domain.encode(frame.iloc[train_idx].reset_index(drop=True)).codes
    holdout = domain.encode(frame.iloc[test_idx].reset_index(drop=True)).codes
    features = [c for c in domain.columns if c != builtin.LABEL]
    scores, measured = anonymized_baseline(
        domain,
        codes,
        holdout,
        features,
        5,
        label=builtin.LABEL,
        positive=domain.sizes[builtin.LABEL] - 2,
        seed=seed,
        algorithm="mondrian",
    )
    keys = ("attack_auroc", "domias_auroc", "distance_auroc", "rows_equal_share")
    return {"k5_all_mondrian_auroc": scores["auroc"]} | {
        f"k5_all_mondrian_{key}": measured[key] for key in keys
    }


def report(
    args: argparse.Namespace,
    runs: list[dict[str, Any]],
    started: datetime,
    source: str | None = None,
) -> None:
    """Summarize the runs so far and write the results files (``source``: the runs come
    from that earlier results file)."""
    rows: list[list[Any]] = []
    releases: list[list[Any]] = []
    goals: list[str] = []
    for dataset in args.datasets:
        for epsilon in args.epsilons:
            sel = [r for r in runs if r["dataset"] == dataset and r["epsilon"] == epsilon]
            if not sel:
                continue

            def col(key: str, digits: int = 3, sel: list[dict[str, Any]] = sel) -> str:
                if not all(key in r for r in sel):  # runs made before it was recorded
                    return "n/a"
                return fmt_mean_sd([r[key] for r in sel], digits)

            ratio = [r["tstr_auroc"] / r["trtr_auroc"] for r in sel]
            attacks = [r["attack_auroc"] for r in sel]
            low, high = t_interval(attacks)
            null_se = statistics.fmean(
                null_auroc_se(r["attack_members"], r["attack_non_members"]) for r in sel
            )
            rows.append(
                [
                    dataset,
                    f"{epsilon:g}",
                    len(sel),
                    col("tstr_auroc"),
                    col("trtr_auroc"),
                    fmt_mean_sd(ratio),
                    col("k5_auroc"),
                    col("k10_auroc"),
                    col("k5_all_auroc"),
                    col("k5_all_mondrian_auroc"),
                    col("tvd_1way"),
                    col("tvd_2way"),
                    col("corr_diff"),
                    col("dcr_clone"),
                    col("dcr_holdout"),
                    col("domias_auroc"),
                    col("distance_auroc"),
                    f"{statistics.fmean(attacks):.3f} [{low:.3f}, {high:.3f}]",
                    f"{null_se:.3f}",
                    col("attack_null_mean"),
                    col("attack_p_value"),
                    col("clone_seconds", 1),
                    col("peak_rss_mib", 0),
                ]
            )
            releases.append(
                [
                    dataset,
                    f"{epsilon:g}",
                    len(sel),
                    col("attack_auroc"),
                    col("k5_attack_auroc"),
                    col("k5_all_attack_auroc"),
                    col("k5_all_mondrian_attack_auroc"),
                    col("exact_share"),
                    col("k5_rows_equal_share"),
                    col("k5_all_rows_equal_share"),
                    col("k5_all_mondrian_rows_equal_share"),
                    col("holdout_exact_share"),
                    col("k5_all_suppressed", 0),
                ]
            )
            if epsilon == 1.0:
                mean_ratio = mean_sd(ratio)[0]
                tstr = mean_sd([r["tstr_auroc"] for r in sel])[0]
                k5 = mean_sd([r["k5_auroc"] for r in sel])[0]
                attack = statistics.fmean(attacks)
                matched = ""
                for key, what in (("k5_all", "Datafly"), ("k5_all_mondrian", "Mondrian")):
                    if all(f"{key}_auroc" in r for r in sel):
                        base = statistics.fmean(r[f"{key}_auroc"] for r in sel)
                        matched += (
                            f"; TSTR vs the privacy-matched k=5 ({what}, every non-label column "
                            f"a quasi-identifier) {base:.3f} ({'met' if tstr > base else 'MISSED'})"
                        )
                verdict = "met" if high <= 0.55 else "MISSED" if low > 0.55 else "undecided"
                goals.append(
                    f"- {dataset}, epsilon 1 ({len(sel)} seeds): TSTR/TRTR = {mean_ratio:.3f} "
                    f"(goal >= 0.95: {'met' if mean_ratio >= 0.95 else 'MISSED'}); TSTR "
                    f"{tstr:.3f} vs k=5 on the declared quasi-identifiers {k5:.3f} "
                    f"({'met' if tstr > k5 else 'MISSED'}){matched}; "
                    f"attack AUROC {attack:.3f}, 95 % CI [{low:.3f}, {high:.3f}] (goal <= 0.55: "
                    f"mean {'met' if attack <= 0.55 else 'MISSED'}; {verdict} at 95 %)"
                )
    header = [
        "dataset",
        "eps",
        "seeds",
        "TSTR",
        "TRTR",
        "TSTR/TRTR",
        "k=5",
        "k=10",
        "k=5 all QI",
        "k=5 all QI Mondrian",
        "TVD1",
        "TVD2",
        "|dcorr|",
        "DCR clone",
        "DCR holdout",
        "DOMIAS",
        "dist. attack",
        "attack (max) [95 % CI]",
        "null SE",
        "max at chance",
        "max p",
        "clone s",
        "peak RSS MiB",
    ]
    release_header = [
        "dataset",
        "eps",
        "seeds",
        "attack: clone",
        "attack: k=5",
        "attack: k=5 all QI",
        "attack: k=5 all QI Mondrian",
        "equal rows: clone",
        "k=5",
        "k=5 all QI",
        "k=5 all QI Mondrian",
        "holdout (chance)",
        "k=5 all QI suppressed",
    ]
    mechanism = args.mechanism.upper()
    if args.target:
        mechanism += (
            " with the target-aware tree (label)"
            if args.mechanism == "mst"
            else " with the label's triples in the workload"
        )
    body = (
        f"Mechanism: {mechanism}, delta = 1e-6, seeds {args.first_seed}-"
        f"{args.first_seed + args.seeds - 1} asked, the column "
        "'seeds' says how many ran (mean ± sd); AUROC on the real holdout (25 %, stratified). "
        "Attack AUROC 0.5 = no better than chance; 'attack (max)' is the larger of DOMIAS "
        "and the distance attack per seed, with a 95 % t-interval of its mean over seeds; "
        "'null SE' is the standard error of one attack AUROC at chance on that many members "
        "and non-members (Hanley & McNeil 1982); 'max at chance' is the mean of the same "
        "maximum when membership carries no signal (999 label permutations per seed: above "
        "0.5, since the larger of two attacks is biased upward) and 'max p' its permutation "
        "p-value (`medsilo.clone.evaluate.max_auroc_null`; 'n/a': runs made before)."
        + (
            f" Runs re-summarized from {source} (.json; their dates and machines are there).\n\n"
            if source
            else "\n\n"
        )
        + md_table(header, rows)
        + "\n\nk=5, k=10: Datafly, quasi-identifiers = the declared demographic/admission "
        "columns (the primary baseline); k=5 all QI: every non-label column a quasi-identifier "
        "(the baseline matched to the membership attacker, who knows a whole record), by "
        "Datafly and by Mondrian ('n/a': runs made before it was recorded; "
        "`clone_kanon.md` has every baseline for all seeds). The privacy "
        "of the releases on one scale: the same membership attack (max of DOMIAS and the "
        "distance attack) and the share of released rows equal to a private row (on the "
        "schema's bins), for the clone and for each k=5 table in the clone's place:\n\n"
        + md_table(release_header, releases)
        + "\n\nGoals at epsilon 1:\n\n"
        + "\n".join(goals)
        + "\n"
    )
    name = args.name or (
        "clone"
        + ("" if args.mechanism == "mst" else f"_{args.mechanism}")
        + ("_target" if args.target else "")
    )
    path = write_results(
        name,
        f"DP clones ({mechanism}) on {' and '.join(args.datasets)}",
        body,
        {"runs": runs, "goals": goals},
        started,
    )
    print(body)
    print(f"written: {path}")


if __name__ == "__main__":
    raise SystemExit(main())
