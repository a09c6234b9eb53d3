"""Running studies from TOML text for the accuracy benchmarks, and reading their curves."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from _common import md_table

from medsilo.engines.local import LocalEngine
from medsilo.report.rundir import RunDirectory
from medsilo.report.summary import setting_means
from medsilo.study.config import parse_study
from medsilo.study.run import RunResult, attach_privacy, build_federation, run_study_text


def run(text: str) -> RunResult:
    """``run_study_text`` into a temporary run directory (deleted afterwards)."""
    with tempfile.TemporaryDirectory() as tmp:
        return run_study_text(text, out=Path(tmp) / "run")


def val_curve(result: RunResult, metric: str) -> dict[int, float]:
    """Round -> mean over sites of the federated model's validation ``metric``."""
    h = result.history
    val = h[(h["kind"] == "eval") & (h["split"] == "val")]
    return {int(r): float(g[metric].mean()) for r, g in val.groupby("round")}


def best_by_validation(
    strategy: str,
    candidates: list[dict[str, Any]],
    seeds: tuple[int, ...],
    make_study: Callable[..., str],
    metric: str,
    log: list[dict[str, Any]],
) -> dict[str, Any]:
    """Run every candidate on every seed (up to the maximal rounds, validating on the
    way); score each (candidate, rounds) by the mean over seeds of the mean over sites of
    the validation ``metric``; return the best (ties: the earlier one)."""
    best: tuple[float, dict[str, Any]] | None = None
    for params in candidates:
        curves = []
        start = time.perf_counter()
        for seed in seeds:
            curves.append(val_curve(run(make_study(strategy, seed, **params)), metric))
        print(f"  {strategy} {params}: {time.perf_counter() - start:.1f} s", flush=True)
        for rounds in sorted(curves[0]):
            score = sum(c[rounds] for c in curves) / len(curves)
            log.append({"strategy": strategy, **params, "rounds": rounds, f"val_{metric}": score})
            if best is None or score > best[0] + 1e-12:
                best = (score, {**params, "rounds": rounds})
    assert best is not None
    print(f"{strategy}: chosen {best[1]} (validation {metric} {best[0]:.4f})", flush=True)
    return best[1]


def edge_notes(
    chosen: dict[str, dict[str, Any]],
    log: list[dict[str, Any]],
    max_rounds: int,
) -> list[str]:
    """Say where a chosen value sits on the edge of what the grid tried (a wider grid
    might then do better)."""
    notes = []
    for strategy, values in chosen.items():
        tried = [e for e in log if e["strategy"] == strategy]
        for key, value in values.items():
            if key == "rounds":
                if value == max_rounds:
                    notes.append(f"{strategy}: rounds = {value} is the most the grid ran")
                continue
            options = sorted({e[key] for e in tried if e.get(key) is not None})
            if len(options) > 1 and value in (options[0], options[-1]):
                side = "smallest" if value == options[0] else "largest"
                notes.append(f"{strategy}: {key} = {value} is the {side} value tried")
    return notes


HEART_DATA = """dataset = "heart"
partition = "natural"
val_fraction = 0.15
test_fraction = 0.3"""
"""FLamby's Fed-Heart-Disease: the 4 hospitals as sites (medsilo's split fractions)."""

EICU_DATA = """dataset = "eicu"
options = { group_by = "region" }
partition = "natural"
val_fraction = 0.15
test_fraction = 0.25"""
"""eICU mortality with the 5 US regions as sites."""


def dp_sections(
    mode: str, clip: float, epsilon: float, delta: float, budget: float | None = None
) -> str:
    """The ``[privacy]`` and ``[budgets]`` sections: DP in ``mode`` calibrated to
    ``epsilon`` at ``delta`` (RDP accountant), every site's budget ``budget`` epsilon
    (default: ``epsilon``, the whole budget spent by the study)."""
    budget = epsilon if budget is None else budget
    return f"""
[privacy]
mode = "{mode}"
clip = {clip}
target_epsilon = {epsilon}
delta = {delta}
accountant = "rdp"

[budgets]
default = {{ epsilon = {budget}, delta = {delta} }}
"""


def logreg_study(
    *,
    name: str,
    seed: int,
    rounds: int,
    evaluate_every: int,
    data: str,
    local_epochs: int,
    batch: int,
    lr: float,
    strategy: str = "fedavg",
    strategy_options: dict[str, float | None] | None = None,
    baselines: bool = False,
    dp: dict[str, float] | None = None,
) -> str:
    """The study text of the table benchmarks: logistic regression, ``data`` (the
    ``[data]`` section's body, e.g. :data:`HEART_DATA`), the strategy with its options
    (``None`` values left out), local-only and pooled baselines on or off, and with
    ``dp = {"clip", "epsilon", "delta"[, "budget"]}`` record-level DP-SGD at every site
    calibrated to epsilon (:func:`dp_sections`)."""
    extra = "".join(
        f"\n{key} = {value}" for key, value in (strategy_options or {}).items() if value is not None
    )
    flag = "true" if baselines else "false"
    privacy = ""
    if dp is not None:
        privacy = dp_sections(
            "local", dp["clip"], dp["epsilon"], dp["delta"], budget=dp.get("budget")
        )
    return f"""
[study]
name = "{name}"
seed = {seed}
rounds = {rounds}
evaluate_every = {evaluate_every}

[data]
{data}

[model]
name = "logreg"

[train]
local_epochs = {local_epochs}
batch_size = {batch}
lr = {lr}

[strategy]
name = "{strategy}"{extra}

[baselines]
local_only = {flag}
pooled = {flag}
{privacy}"""


def final_runs(
    chosen: dict[str, dict[str, Any]],
    seeds: tuple[int, ...],
    make_study: Callable[..., str],
    metrics: tuple[str, ...],
) -> dict[str, dict[str, list[float]]]:
    """Every chosen configuration on every seed, evaluated once after its last round;
    FedAvg's runs also train the local-only and pooled baselines. Returns label ->
    metric -> per-seed values of the mean over sites (test split); the labels are the
    strategies, ``local_only`` and ``pooled``."""
    per_seed: dict[str, dict[str, list[float]]] = {}
    for strategy, values in chosen.items():
        params = {k: v for k, v in values.items() if k != "rounds"}
        rounds = int(values["rounds"])
        baselines = strategy == "fedavg"
        for seed in seeds:
            text = make_study(
                strategy, seed, rounds=rounds, evaluate_every=rounds, baselines=baselines, **params
            )
            means = setting_means(run(text).per_site).set_index("setting")
            settings = {strategy: "federated"}
            if baselines:
                settings.update(local_only="local_only", pooled="pooled")
            for label, setting in settings.items():
                slot = per_seed.setdefault(label, {m: [] for m in metrics})
                for metric in metrics:
                    slot[metric].append(float(means.loc[setting, metric]))
            print(
                f"  final {strategy} seed {seed}: {metrics[0]} "
                f"{float(means.loc['federated', metrics[0]]):.4f}",
                flush=True,
            )
    return per_seed


def grid_report(
    log: list[dict[str, Any]],
    chosen: dict[str, dict[str, Any]],
    recorded: dict[str, dict[str, Any]],
    *,
    max_rounds: int,
    metric: str,
    label: str,
    columns: tuple[str, ...],
    seeds: int,
) -> str:
    """The markdown a grid search adds to its benchmark's results: whether it chose the
    values the script records for ``--quick`` (``recorded``), the chosen values on the edge
    of the grid, and the best three (configuration, rounds) points per strategy by mean
    validation ``metric`` (``label`` in the text). Empty when no grid ran (``log`` empty)."""
    if not log:
        return ""
    body = ""
    if chosen != recorded:
        body += (
            "\nThe search chose other values than the script's CHOSEN (used by `--quick`): "
            "update CHOSEN.\n"
        )
    notes = edge_notes(chosen, log, max_rounds)
    if notes:
        body += "\nOn the edge of the grid (a wider grid might do better): " + "; ".join(notes)
        body += ".\n"
    key = f"val_{metric}"
    frame = pd.DataFrame(log).sort_values(["strategy", key], ascending=[True, False])
    top = frame.groupby("strategy", sort=False).head(3)
    rows = [
        [
            r["strategy"],
            *(
                r.get(k, "") if pd.notna(r.get(k, float("nan"))) else ""
                for k in ("lr", "local_epochs", *columns)
            ),
            int(r["rounds"]),
            f"{r[key]:.4f}",
        ]
        for _, r in top.iterrows()
    ]
    return body + (
        f"\nGrid search ({len(frame)} (configuration, rounds) points, each the mean over "
        f"{seeds} seeds); the best three per strategy by validation {label} (the full grid "
        "is in the JSON file):\n\n"
        + md_table(["strategy", "lr", "local_epochs", *columns, "rounds", f"val {label}"], rows)
        + "\n"
    )


def final_validation(text: str, metric: str) -> list[float]:
    """Each site's validation ``metric`` of the federated model after the last round, by
    the library's own path (attach_privacy and the local engine; no test evaluation,
    baselines or report): what a DP grid search may look at."""
    config = parse_study(text, source="<study text>")
    fed = build_federation(config)
    evaluations: list[Any] = []
    with tempfile.TemporaryDirectory() as tmp:
        attach_privacy(fed, RunDirectory.create(Path(tmp) / "run", text, {"study": "tune"}))
        LocalEngine().run(
            fed.coordinator,
            fed.sites,
            config.study.rounds,
            on_round=lambda r: evaluations.extend(r.evaluations),
            evaluate_every=0,
            splits=("val",),
        )
    return [float(e.metrics[metric]) for e in evaluations]
