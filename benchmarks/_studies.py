"""Running studies from TOML text for the accuracy benchmarks, and reading their curves."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medsilo.study.run import RunResult, run_study_text


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
