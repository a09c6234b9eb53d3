"""What medsilo's in-process engine costs over a hand-written FedAvg loop.

Workload: the heart study (4 natural sites, 20 rounds of FedAvg, batch 16, lr 0.05,
one local epoch), logistic regression and a small MLP (64 hidden units).

Rows (each a wall-time ratio medsilo / plain, median of interleaved repetitions; the
two sides of a ratio always do the same work, same batches in the same order):

* ``engine, no evaluation``: ``LocalEngine.run(..., splits=())`` on a federation built
  beforehand by ``build_federation`` vs a plain loop (one torch model, one SGD optimizer,
  sample-weighted averaging of the weights) on the same tensors;
* ``engine, final evaluation``: ``LocalEngine.run(..., evaluate_every=0)`` (the global
  model evaluated once, after the last round, on every site's val and test split) vs the
  plain loop followed by the same evaluation (``medsilo.fed.training.evaluate``);
* ``run_study (whole path)``: ``run_study_text`` with ``evaluate_every = 0`` and the
  baselines off, i.e. including loading and splitting the data, creating the run
  directory, appending metrics and writing a checkpoint (fsync) after every round, the
  final model, results.csv and report.html; against the plain loop plus the same data
  preparation (``builtin.load`` + ``federate``) and final evaluation.

Before timing, the final weights of the engine and the plain loop are compared (they
must agree up to float32 rounding: the engine averages in float64).

    python benchmarks/engine_overhead.py [--quick] [--reps N]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from _common import md_table, median, write_results
from torch.nn import functional as F

from medsilo.data import builtin
from medsilo.data.federate import federate
from medsilo.data.types import FederatedData
from medsilo.engines.local import LocalEngine
from medsilo.fed.site import derive_seed
from medsilo.fed.training import evaluate
from medsilo.study.config import StudyConfig, parse_study
from medsilo.study.run import build_federation, run_study_text
from medsilo.tasks.models import build_model

ROUNDS = 20
SEED = 0


def study_text(model: str) -> str:
    hidden = "\nhidden = [64]" if model == "mlp" else ""
    return f"""
[study]
name = "engine-overhead"
seed = {SEED}
rounds = {ROUNDS}
evaluate_every = 0

[data]
dataset = "heart"
partition = "natural"
val_fraction = 0.15
test_fraction = 0.3

[model]
name = "{model}"{hidden}

[train]
local_epochs = 1
batch_size = 16
lr = 0.05

[strategy]
name = "fedavg"

[baselines]
local_only = false
pooled = false
"""


# --------------------------------------------------------------------------- medsilo


def medsilo_engine(config: StudyConfig, final_eval: bool) -> tuple[float, dict[str, np.ndarray]]:
    """Time ``LocalEngine.run`` alone (the federation is built before the clock starts)."""
    fed = build_federation(config)
    splits: tuple[str, ...] = ("val", "test") if final_eval else ()
    gc.collect()
    start = time.perf_counter()
    LocalEngine().run(
        fed.coordinator,
        fed.sites,
        ROUNDS,
        evaluate_every=0,
        splits=splits,  # type: ignore[arg-type]
    )
    seconds = time.perf_counter() - start
    return seconds, {k: np.asarray(v) for k, v in fed.coordinator.weights.items()}


def medsilo_run_study(text: str, phases: dict[str, list[float]]) -> float:
    marks: dict[str, float] = {}

    def progress(event: str, info: dict[str, object]) -> None:
        marks.setdefault(event, time.perf_counter())
        if event == "round":
            marks["last_round"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        gc.collect()
        start = time.perf_counter()
        run_study_text(text, out=Path(tmp) / "run", progress=progress)
        end = time.perf_counter()
    phases["setup (load + federate + run dir)"].append(marks["start"] - start)
    phases["rounds (engine + records + checkpoints)"].append(marks["last_round"] - marks["start"])
    phases["finish (model, results.csv, report.html)"].append(end - marks["last_round"])
    return end - start


# --------------------------------------------------------------------------- plain loop


def prepare(config: StudyConfig) -> FederatedData:
    data, _ = federate(builtin.load("heart"), config.data, config.study.seed)
    return data


def plain_loop(
    config: StudyConfig, data: FederatedData, final_eval: bool
) -> tuple[float, dict[str, np.ndarray]]:
    """FedAvg by hand: one model, one optimizer; per site load the global state, run
    the same mini-batches as medsilo (same seeds), accumulate the weighted state."""
    train = config.train
    xs = [(torch.from_numpy(s.x_train), torch.from_numpy(s.y_train)) for s in data.sites]
    seeds = [[derive_seed(SEED, i, r) for i in range(len(xs))] for r in range(1, ROUNDS + 1)]
    gc.collect()
    start = time.perf_counter()
    model = build_model(config.model, data.input_shape, data.num_classes, derive_seed(SEED, 5))
    optimizer = torch.optim.SGD(model.parameters(), lr=train.lr)
    total = sum(len(y) for _, y in xs)
    shares = [len(y) / total for _, y in xs]
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    for r in range(ROUNDS):
        summed = {k: torch.zeros_like(v) for k, v in global_state.items()}
        for i, (x, y) in enumerate(xs):
            model.load_state_dict(global_state)
            model.train()
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seeds[r][i]))
            for b in range(0, len(y), train.batch_size):
                idx = order[b : b + train.batch_size]
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                optimizer.step()
            for k, v in model.state_dict().items():
                summed[k] += shares[i] * v
        global_state = summed
    model.load_state_dict(global_state)
    if final_eval:
        for s in data.sites:
            for split in ("val", "test"):
                evaluate(
                    model,
                    torch.from_numpy(getattr(s, f"x_{split}")),
                    torch.from_numpy(getattr(s, f"y_{split}")),
                )
    seconds = time.perf_counter() - start
    return seconds, {k: v.numpy().copy() for k, v in global_state.items()}


def plain_with_prep(config: StudyConfig) -> float:
    gc.collect()
    start = time.perf_counter()
    data = prepare(config)
    plain_loop(config, data, final_eval=True)
    return time.perf_counter() - start


# --------------------------------------------------------------------------- breakdown


def breakdown(config: StudyConfig, data: FederatedData, reps: int) -> list[tuple[str, float]]:
    """Median microseconds of the pieces of one site-round (the largest site, cleveland)
    and of one aggregation, each timed ``reps`` times in interleaved blocks."""
    from medsilo.fed.training import train_local

    fed = build_federation(config)
    site = next(iter(fed.sites.values()))
    plan = fed.coordinator.plan(1)[site.name]
    x = torch.from_numpy(site.data.x_train)
    y = torch.from_numpy(site.data.y_train)
    model = fed.model_factory()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.train.lr)
    batch = config.train.batch_size
    replies = [s.on_plan(fed.coordinator.plan(1)[n]) for n, s in fed.sites.items()]

    def bare() -> None:
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(3))
        for b in range(0, len(y), batch):
            idx = order[b : b + batch]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()

    def seeding() -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)

    def library_loop() -> None:
        train_local(model, x, y, plan.config, seed=3)

    def on_plan() -> None:
        site.on_plan(plan)

    def aggregate() -> None:
        from medsilo.fed.strategies import aggregate as agg

        agg(fed.coordinator.strategy, fed.coordinator.weights, replies, {})

    pieces = {
        f"bare loop: {-(-len(y) // batch)} SGD steps on {len(y)} rows": bare,
        "torch.random.fork_rng + torch.manual_seed (inside train_local)": seeding,
        "medsilo train_local (same steps)": library_loop,
        "Site.on_plan (train_local + weights in/out + delta)": on_plan,
        "strategies.aggregate, 4 updates (once per round)": aggregate,
    }
    times: dict[str, list[float]] = {k: [] for k in pieces}
    for fn in pieces.values():
        fn()
    for _ in range(reps):
        for name, fn in pieces.items():
            for _ in range(10):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return [(name, median(v) * 1e6) for name, v in times.items()]


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions instead of 11")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (overrides)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads on both sides (default 1)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reps = args.reps or (3 if args.quick else 11)
    started = datetime.now(UTC)

    configs = {m: parse_study(study_text(m)) for m in ("logreg", "mlp")}
    data = {m: prepare(c) for m, c in configs.items()}

    # Same computation? (and warm-up: first SGD construction imports torch._dynamo)
    agreement = {}
    for m, config in configs.items():
        _, w_engine = medsilo_engine(config, final_eval=False)
        _, w_plain = plain_loop(config, data[m], final_eval=False)
        agreement[m] = max(float(np.max(np.abs(w_engine[k] - w_plain[k]))) for k in w_engine)
        print(f"{m}: max |w_engine - w_plain| = {agreement[m]:.2e}", flush=True)
        if agreement[m] > 1e-4:
            raise SystemExit(f"{m}: engine and plain loop disagree ({agreement[m]:.2e})")

    pairs: dict[str, tuple[Callable[[], float], Callable[[], float]]] = {}
    for m, config in configs.items():
        pairs[f"{m}: engine, no evaluation"] = (
            lambda c=config: medsilo_engine(c, final_eval=False)[0],
            lambda c=config, d=data[m]: plain_loop(c, d, final_eval=False)[0],
        )
        pairs[f"{m}: engine, final evaluation"] = (
            lambda c=config: medsilo_engine(c, final_eval=True)[0],
            lambda c=config, d=data[m]: plain_loop(c, d, final_eval=True)[0],
        )
    phases: dict[str, list[float]] = {
        "setup (load + federate + run dir)": [],
        "rounds (engine + records + checkpoints)": [],
        "finish (model, results.csv, report.html)": [],
    }
    text = study_text("logreg")
    pairs["logreg: run_study (whole path, run directory)"] = (
        lambda: medsilo_run_study(text, phases),
        lambda: plain_with_prep(configs["logreg"]),
    )
    # Warm-up of the whole path (report/matplotlib imports) before timing.
    medsilo_run_study(text, {k: [] for k in phases})
    plain_with_prep(configs["logreg"])

    times: dict[str, dict[str, list[float]]] = {k: {"medsilo": [], "plain": []} for k in pairs}
    ratios: dict[str, list[float]] = {k: [] for k in pairs}
    for rep in range(reps):
        for label, (ours, plain) in pairs.items():
            if rep % 2 == 0:
                a, b = ours(), plain()
            else:
                b, a = plain(), ours()
            times[label]["medsilo"].append(a)
            times[label]["plain"].append(b)
            ratios[label].append(a / b)
        print(
            f"rep {rep + 1}/{reps}: "
            + ", ".join(
                f"{k.split(':')[0]}/{k.split(': ')[1][:12]} {ratios[k][-1]:.2f}" for k in pairs
            ),
            flush=True,
        )

    target = 1.25
    rows = []
    summary = {}
    for label in pairs:
        ms, ps, rs = times[label]["medsilo"], times[label]["plain"], ratios[label]
        ratio = median(rs)
        verdict = "met" if ratio <= target else f"MISSED (+{ratio / target - 1:.0%})"
        rows.append(
            [
                label,
                f"{median(ms) * 1000:.0f}",
                f"{median(ps) * 1000:.0f}",
                f"**{ratio:.2f}**",
                f"{min(rs):.2f}-{max(rs):.2f}",
                verdict,
            ]
        )
        summary[label] = {
            "medsilo_seconds": ms,
            "plain_seconds": ps,
            "ratios": rs,
            "median_ratio": ratio,
        }
    phase_rows = [[k, f"{median(v) * 1000:.0f}"] for k, v in phases.items()]
    pieces = breakdown(configs["logreg"], data["logreg"], reps=max(reps, 5) * 4)
    body = (
        f"Heart study, 4 natural sites, {ROUNDS} rounds of FedAvg, 1 local epoch, batch 16, "
        f"lr 0.05. torch threads: {args.threads} on both sides (tiny models; two threads "
        f"only add scheduling noise on this 2-core VM). Median of {reps} interleaved "
        "repetitions (the order of the two sides alternates); ratio = medsilo / plain, "
        "computed per repetition. Target: ratio <= "
        f"{target} for the engine rows.\n\n"
        + md_table(
            ["comparison", "medsilo ms", "plain ms", "ratio (median)", "ratio range", "target"],
            rows,
        )
        + "\n\nWhere `run_study` spends its time (median ms):\n\n"
        + md_table(["phase", "ms"], phase_rows)
        + "\n\nWhere the engine's extra time goes, logreg, one site-round at the largest "
        "site (median µs):\n\n"
        + md_table(["piece", "µs"], [[k, f"{v:.0f}"] for k, v in pieces])
        + "\n\nEngine and plain loop compute the same model: largest difference of the "
        "final weights "
        + ", ".join(f"{m} {v:.1e}" for m, v in agreement.items())
        + " (float64 vs float32 averaging).\n"
    )
    out = write_results(
        "engine_overhead",
        "Engine overhead: medsilo's local engine vs a plain FedAvg loop",
        body,
        {
            "rounds": ROUNDS,
            "repetitions": reps,
            "target_ratio": target,
            "results": summary,
            "run_study_phases_seconds": phases,
            "breakdown_microseconds": dict(pieces),
            "weight_agreement": agreement,
        },
        started,
    )
    print(out.read_text())


if __name__ == "__main__":
    main()
