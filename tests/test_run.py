"""End to end through the Python API: determinism, the per-site table, the report,
the run directory."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conftest import heart_study_text, study_text, tiny_data_section, tiny_frame, write_csv
from medsilo.errors import ConfigError
from medsilo.report.rundir import load_arrays
from medsilo.study.run import RunResult, collect, resume_run, run_study, run_study_text

HEART_SITES = ("cleveland", "hungary", "switzerland", "va")


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def comparable(run: Path) -> list[str]:
    """metrics.jsonl without wall-clock times, as canonical JSON (NaN compares equal)."""
    return [
        json.dumps({k: v for k, v in r.items() if k != "seconds"}, sort_keys=True)
        for r in records(run)
    ]


def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].tobytes() == b[key].tobytes(), f"{key} differs"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, RunResult]]:
    """Two heart runs with seed 0 and one with seed 1 (3 rounds each)."""
    base = tmp_path_factory.mktemp("runs")
    out: dict[str, tuple[Path, RunResult]] = {}
    for key, seed in (("a", 0), ("b", 0), ("other", 1)):
        study = base / f"{key}.toml"
        study.write_text(heart_study_text(seed))
        out[key] = (base / key, run_study(study, base / key))
    return out


def test_same_study_and_seed_give_bit_identical_weights_and_metrics(
    runs: dict[str, tuple[Path, RunResult]],
) -> None:
    (a, _), (b, _) = runs["a"], runs["b"]
    assert_same_arrays(load_arrays(a / "final_model.npz"), load_arrays(b / "final_model.npz"))
    assert_same_arrays(load_arrays(a / "checkpoint.npz"), load_arrays(b / "checkpoint.npz"))
    assert comparable(a) == comparable(b)
    evals = [r for r in records(a) if r["kind"] == "eval"]
    assert len(evals) == 3 * 2 * len(HEART_SITES)  # rounds x (val, test) x sites
    assert json.loads((a / "baselines.json").read_text()) == json.loads(
        (b / "baselines.json").read_text()
    )
    assert (a / "results.csv").read_bytes() == (b / "results.csv").read_bytes()


def test_a_different_seed_gives_different_weights(
    runs: dict[str, tuple[Path, RunResult]],
) -> None:
    (a, _), (other, _) = runs["a"], runs["other"]
    wa, wo = load_arrays(a / "final_model.npz"), load_arrays(other / "final_model.npz")
    assert wa.keys() == wo.keys()
    assert any(wa[k].tobytes() != wo[k].tobytes() for k in wa)
    assert comparable(a) != comparable(other)


def test_per_site_table_has_every_setting_for_every_site(
    runs: dict[str, tuple[Path, RunResult]],
) -> None:
    run_dir, result = runs["a"]
    table = result.per_site
    assert result.run_dir == run_dir
    assert set(zip(table["site"], table["setting"], strict=True)) == {
        (s, setting) for s in HEART_SITES for setting in ("federated", "local_only", "pooled")
    }
    assert len(table) == 12
    assert table["accuracy"].between(0, 1).all()
    federated = table[table["setting"] == "federated"]
    assert (federated["round"] == 3).all()
    # The federated row is the last round's test evaluation of that site, verbatim.
    last = {
        r["site"]: r
        for r in records(run_dir)
        if r["kind"] == "eval" and r["split"] == "test" and r["round"] == 3
    }
    for _, row in federated.iterrows():
        assert row["accuracy"] == last[row["site"]]["accuracy"]
        assert row["num_samples"] == last[row["site"]]["num_samples"]
    # collect() reads the same table back from disk; results.csv holds it too
    again = collect(run_dir)
    pd.testing.assert_frame_equal(again.per_site, table)
    assert len(pd.read_csv(run_dir / "results.csv")) == 12
    assert set(again.history["kind"]) == {"train", "eval", "round"}


def test_run_directory_is_complete(runs: dict[str, tuple[Path, RunResult]]) -> None:
    run_dir, _ = runs["a"]
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "completed"
    assert meta["rounds_completed"] == 3
    assert meta["sites"] == list(HEART_SITES)
    assert meta["seed"] == 0
    assert len(meta["data_fingerprint"]) == 64
    assert (run_dir / "study.toml").read_text() == heart_study_text(0)
    assert not list(run_dir.parent.glob(".*partial*"))
    assert not list(run_dir.glob(".*")), "no temporary files left behind"
    arrays = load_arrays(run_dir / "checkpoint.npz")
    assert int(arrays["coordinator/rounds_done"]) == 3
    trains = [r for r in records(run_dir) if r["kind"] == "train"]
    assert [(r["round"], r["site"]) for r in trains] == [
        (k, s) for k in (1, 2, 3) for s in HEART_SITES
    ]


def test_report_mentions_every_site(runs: dict[str, tuple[Path, RunResult]]) -> None:
    run_dir, _ = runs["a"]
    html = (run_dir / "report.html").read_text()
    assert html.startswith("<!doctype html>")
    for site in HEART_SITES:
        assert site in html
    assert "Status <b>completed</b>" in html
    assert "3 of 3 rounds" in html
    assert html.count("data:image/png;base64,") >= 3  # accuracy, balanced accuracy, ... curves


def test_resuming_a_completed_run_changes_nothing(
    runs: dict[str, tuple[Path, RunResult]],
) -> None:
    run_dir, result = runs["b"]
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != "report.html"}
    again = resume_run(run_dir)
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != "report.html"}
    assert before == after
    pd.testing.assert_frame_equal(again.per_site, result.per_site)


def test_fraction_trains_a_subset_each_round(
    tmp_path: Path, tiny_csv: Path, write_study: Callable[..., Path], no_html_report: None
) -> None:
    text = study_text(
        tiny_data_section(),
        rounds=4,
        evaluate_every=2,
        extra="[strategy]\nfraction = 0.5\n[baselines]\nlocal_only = false\npooled = false",
    )
    result = run_study(write_study(text), tmp_path / "run")
    history = result.history
    trains = history[history["kind"] == "train"]
    per_round = trains.groupby("round")["site"].apply(list).to_dict()
    assert sorted(per_round) == [1, 2, 3, 4]
    assert all(len(s) == 2 for s in per_round.values())  # ceil(0.5 * 3)
    assert len({tuple(s) for s in per_round.values()}) > 1
    evals = history[history["kind"] == "eval"]
    assert sorted(set(evals["round"])) == [2, 4]  # evaluate_every = 2
    assert set(evals["site"]) == {"A", "B", "C"}  # every site evaluates
    assert set(result.per_site["setting"]) == {"federated"}


def test_run_study_text_resolves_paths_against_base_dir(
    tmp_path: Path, no_html_report: None
) -> None:
    write_csv(tmp_path / "data.csv", tiny_frame())
    text = study_text(
        tiny_data_section(), rounds=1, extra="[baselines]\nlocal_only = false\npooled = false"
    )
    result = run_study_text(text, tmp_path / "run", base_dir=tmp_path)
    assert set(result.per_site["site"]) == {"A", "B", "C"}
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["base_dir"] == str(tmp_path.resolve())


def test_no_validation_split_evaluates_on_test_only(
    tmp_path: Path, tiny_csv: Path, no_html_report: None
) -> None:
    text = study_text(
        tiny_data_section(options="val_fraction = 0"),
        rounds=2,
        extra="[baselines]\nlocal_only = false\npooled = false",
    )
    result = run_study_text(text, tmp_path / "run", base_dir=tmp_path)
    evals = result.history[result.history["kind"] == "eval"]
    assert set(evals["split"]) == {"test"}
    assert len(evals) == 2 * 3  # rounds x sites
    assert len(result.per_site) == 3


def test_run_refuses_a_flower_study_with_the_command_to_use(tmp_path: Path) -> None:
    text = '[study]\nname = "f"\nrounds = 1\n[data]\ndataset = "heart"\n[engine]\nname = "flower"\n'
    with pytest.raises(ConfigError, match="medsilo coordinator start"):
        run_study_text(text, tmp_path / "run")
    assert not (tmp_path / "run").exists()
