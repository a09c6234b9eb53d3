"""``medsilo run --resume`` after a real SIGKILL (and after interruptions at the worst
moments) ends with exactly what an uninterrupted run ends with: bit-identical weights,
checkpoint, baselines and metrics (wall-clock seconds aside)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import study_text, tiny_data_section, tiny_frame, write_csv
from medsilo.cli.main import app
from medsilo.report.rundir import RunDirectory, load_arrays

ROUNDS = 40
EVERY = 10
KILL_AFTER = EVERY + 2  # after an evaluation was recorded, long before the end
STUDY = study_text(
    tiny_data_section(),
    name="resume",
    seed=5,
    rounds=ROUNDS,
    evaluate_every=EVERY,
    extra='[train]\nbatch_size = 16\nlr = 0.1\nmomentum = 0.5\n[strategy]\nname = "fedadam"',
)
CLI = [sys.executable, "-c", "from medsilo.cli.main import app; app()"]


def records(run: Path) -> list[dict[str, Any]]:
    return RunDirectory(run).records()


def comparable(run: Path) -> list[str]:
    return [
        json.dumps({k: v for k, v in r.items() if k != "seconds"}, sort_keys=True)
        for r in records(run)
    ]


def arrays_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a
    )


def assert_same_as(run: Path, reference: Path) -> None:
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "completed"
    assert meta["rounds_completed"] == ROUNDS
    for name in ("final_model.npz", "checkpoint.npz"):
        assert arrays_equal(load_arrays(run / name), load_arrays(reference / name)), name
    assert comparable(run) == comparable(reference)
    assert (run / "baselines.json").read_bytes() == (reference / "baselines.json").read_bytes()
    assert (run / "results.csv").read_bytes() == (reference / "results.csv").read_bytes()


def assert_valid_unfinished(run: Path) -> int:
    """A killed run directory is valid: run.json parses and says running, every metrics
    line but possibly a torn last one parses, and the checkpoint (if any) is at most one
    round ahead of run.json. Returns the checkpoint's round (0 without one)."""
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "running"
    assert 0 <= meta["rounds_completed"] < ROUNDS
    assert (run / "study.toml").read_text() == STUDY
    lines = (run / "metrics.jsonl").read_text().split("\n")
    for line in lines[:-1]:
        json.loads(line)
    assert not (run / "final_model.npz").exists()
    if not (run / "checkpoint.npz").exists():
        assert meta["rounds_completed"] == 0
        return 0
    done = int(load_arrays(run / "checkpoint.npz")["coordinator/rounds_done"])
    assert done - meta["rounds_completed"] in (0, 1)
    return done


def resume(run: Path, done: int) -> None:
    """Resume and check that it continued after round ``done`` instead of starting over:
    the records of rounds 1..done, wall-clock seconds included, are kept as they were."""
    kept = [r for r in records(run) if r["round"] <= done]
    result = CliRunner().invoke(app, ["run", "--resume", str(run), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["run_dir"] == str(run)
    assert len(payload["per_site"]) == 3 * 3  # sites x (federated, local_only, pooled)
    assert records(run)[: len(kept)] == kept
    trained = [r["round"] for r in records(run)[len(kept) :] if r["kind"] == "round"]
    assert trained == list(range(done + 1, ROUNDS + 1))


@pytest.fixture(scope="module", autouse=True)
def _no_html_report() -> Iterator[None]:
    """report.html is not what these tests compare; rendering it costs ~1 s a run."""
    import medsilo.study.run

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(medsilo.study.run, "write_report", lambda run_dir: None)
        yield


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("resume")
    write_csv(base / "data.csv", tiny_frame())
    (base / "study.toml").write_text(STUDY)
    return base


@pytest.fixture(scope="module")
def reference(workdir: Path) -> Path:
    """The uninterrupted run."""
    out = workdir / "reference"
    result = CliRunner().invoke(app, ["run", str(workdir / "study.toml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    evals = [r for r in records(out) if r["kind"] == "eval"]
    assert sorted({r["round"] for r in evals}) == [10, 20, 30, 40]
    return out


def _last_round(run: Path) -> int:
    try:
        text = (run / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return -1
    done = [json.loads(line)["round"] for line in text.splitlines() if '"kind": "round"' in line]
    return max(done, default=0)


@pytest.fixture(scope="module")
def killed(workdir: Path) -> dict[str, Path]:
    """Two real ``medsilo run`` processes, started together and SIGKILLed: ``early`` as
    soon as its run directory appears (before any checkpoint), ``mid`` once round
    KILL_AFTER is recorded."""
    runs = {"early": workdir / "early", "mid": workdir / "mid"}
    ready: dict[str, Callable[[Path], bool]] = {
        "early": lambda run: (run / "run.json").exists(),
        "mid": lambda run: _last_round(run) >= KILL_AFTER,
    }
    procs = {
        key: subprocess.Popen(
            [*CLI, "run", str(workdir / "study.toml"), "--out", str(run), "--json"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for key, run in runs.items()
    }
    deadline = time.monotonic() + 180
    try:
        while any(p.returncode is None for p in procs.values()):
            for key, proc in procs.items():
                if proc.returncode is None and ready[key](runs[key]):
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=30)
                elif proc.returncode is None:
                    assert proc.poll() is None, f"run '{key}' ended before it could be killed"
            assert time.monotonic() < deadline, "the runs did not reach their kill points"
            time.sleep(0.001)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for key, proc in procs.items():
        assert proc.returncode == -signal.SIGKILL, key
    return runs


def test_sigkill_mid_run_then_resume_equals_uninterrupted(
    killed: dict[str, Path], reference: Path
) -> None:
    run = killed["mid"]
    done = assert_valid_unfinished(run)
    assert KILL_AFTER - 1 <= done < ROUNDS
    # evaluations recorded before the kill (round EVERY) are part of the run directory
    assert any(r["kind"] == "eval" and r["round"] == EVERY for r in records(run))
    resume(run, done)
    assert_same_as(run, reference)


def test_sigkill_before_the_first_checkpoint_then_resume(
    killed: dict[str, Path], reference: Path
) -> None:
    run = killed["early"]
    assert assert_valid_unfinished(run) == 0, "killed too late: a checkpoint was written"
    assert records(run) == []
    resume(run, 0)
    assert_same_as(run, reference)


@pytest.mark.parametrize(
    "when",
    ["before-round-1", "after-records-before-checkpoint", "torn-metrics-line"],
)
def test_interrupted_at_the_worst_moment_then_resume(
    workdir: Path, reference: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """Deterministic versions of a kill at the moments a SIGKILL rarely hits."""
    from medsilo.engines.local import LocalEngine

    run = workdir / f"interrupted-{when}"
    if when == "before-round-1":

        def interrupt_engine(*args: object, **kwargs: object) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(LocalEngine, "run", interrupt_engine)
    elif when == "after-records-before-checkpoint":
        original = RunDirectory.save_checkpoint

        def save(self: RunDirectory, arrays: Any, rounds_completed: int) -> None:
            if rounds_completed == 5:
                raise KeyboardInterrupt  # round 5's metrics are on disk, its checkpoint not
            original(self, arrays, rounds_completed)

        monkeypatch.setattr(RunDirectory, "save_checkpoint", save)
    else:
        original_append = RunDirectory.append_records

        def append(self: RunDirectory, recs: Any) -> None:
            recs = list(recs)
            if recs and recs[0]["round"] == 7:
                with open(self.path / "metrics.jsonl", "a") as handle:
                    handle.write(json.dumps(recs[0])[:25])  # half a line, no newline
                raise KeyboardInterrupt
            original_append(self, recs)

        monkeypatch.setattr(RunDirectory, "append_records", append)

    result = CliRunner().invoke(app, ["run", str(workdir / "study.toml"), "--out", str(run)])
    assert result.exit_code == 130, result.output
    assert "medsilo run --resume" in result.output
    monkeypatch.undo()
    done = assert_valid_unfinished(run)
    assert done == {"before-round-1": 0, "after-records-before-checkpoint": 4}.get(when, 6)
    if when == "after-records-before-checkpoint":
        assert max(r["round"] for r in records(run)) == 5  # ahead of the checkpoint
    resume(run, done)
    assert_same_as(run, reference)


def test_resume_refuses_changed_data(workdir: Path, reference: Path, tmp_path: Path) -> None:
    """A resumed run must see the data it started with (the fingerprint in run.json)."""
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(reference, run)
    meta = json.loads((run / "run.json").read_text())
    meta["status"] = "running"
    meta["data_fingerprint"] = "0" * 64
    (run / "run.json").write_text(json.dumps(meta))
    result = CliRunner().invoke(app, ["run", "--resume", str(run)])
    assert result.exit_code == 2
    assert "the data differ from those the run started with" in result.output
    assert json.loads((run / "run.json").read_text()) == meta  # left as it was
