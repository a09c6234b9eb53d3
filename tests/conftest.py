"""Shared fixtures: small study files, a tiny three-hospital CSV, fast heart studies.

Every study here is small on purpose: the whole suite must stay fast on two CPU cores.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# Flower (an optional engine) must never install packages at run time or phone home; the
# subprocesses the tests start inherit this environment.
os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
# One intra-op thread, here and in the subprocesses the tests start: the models are tiny,
# and on a busy two-core machine OpenMP's threads make each step ~50x slower. Results are
# compared between runs that use the same setting.
os.environ["OMP_NUM_THREADS"] = "1"

SITES = ("A", "B", "C")

#: ``[data.schema]`` of :func:`tiny_frame`'s columns.
TINY_SCHEMA = """\
[data.schema]
label = "y"
site = "hosp"
[data.schema.features]
age = "numeric"
bp = "numeric"
sex = { type = "categorical", categories = ["f", "m"] }
"""


def tiny_frame(rows_per_site: int = 40, seed: int = 0) -> pd.DataFrame:
    """Three hospitals A, B, C; numeric ``age`` and ``bp`` (every 7th ``bp`` is ``?``),
    categorical ``sex``, binary label ``y`` that depends on age; all values as text, the
    way a CSV holds them."""
    rng = np.random.default_rng(seed)
    rows = []
    for site in SITES:
        for i in range(rows_per_site):
            age = rng.normal(55, 10)
            rows.append(
                {
                    "age": f"{age:.1f}",
                    "bp": "?" if i % 7 == 0 else f"{rng.normal(130, 15):.0f}",
                    "sex": str(rng.choice(["f", "m"])),
                    "y": str(int(age + rng.normal(0, 8) > 55)),
                    "hosp": site,
                }
            )
    return pd.DataFrame(rows)


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


def study_text(
    data: str,
    *,
    name: str = "t",
    seed: int = 0,
    rounds: int = 3,
    extra: str = "",
    evaluate_every: int = 1,
) -> str:
    """A study file: ``data`` is the body of ``[data]`` (plus its sub-tables), ``extra``
    any further sections."""
    return (
        f'[study]\nname = "{name}"\nseed = {seed}\nrounds = {rounds}\n'
        f"evaluate_every = {evaluate_every}\n\n[data]\n{data}\n{extra}\n"
    )


def tiny_data_section(csv_name: str = "data.csv", options: str = "") -> str:
    return f'path = "{csv_name}"\n{options}\n{TINY_SCHEMA}'


HEART_FAST = """\
[model]
name = "logreg"
[train]
batch_size = 64
lr = 0.1
"""


@pytest.fixture
def write_study(tmp_path: Path) -> Callable[..., Path]:
    """``write_study(text, name="study.toml")`` -> the path of the study file in tmp_path."""

    def write(text: str, name: str = "study.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    """``tmp_path/data.csv``: 3 sites x 40 rows (see :func:`tiny_frame`)."""
    return write_csv(tmp_path / "data.csv", tiny_frame())


@pytest.fixture
def tiny_study(tmp_path: Path, tiny_csv: Path, write_study: Callable[..., Path]) -> Path:
    """A 3-round study of the tiny CSV (data path relative to the study file)."""
    return write_study(study_text(tiny_data_section()))


def heart_study_text(seed: int = 0, rounds: int = 3, extra: str = "") -> str:
    """The heart dataset, its 4 natural sites, a logistic regression, few rounds."""
    return study_text(
        'dataset = "heart"\ntest_fraction = 0.3',
        name="heart-test",
        seed=seed,
        rounds=rounds,
        extra=HEART_FAST + extra,
    )


@pytest.fixture
def heart_study(write_study: Callable[..., Path]) -> Callable[..., Path]:
    """``heart_study(seed=0, rounds=3, extra="", name="heart.toml")`` -> a study file."""

    def make(seed: int = 0, rounds: int = 3, extra: str = "", name: str = "heart.toml") -> Path:
        return write_study(heart_study_text(seed, rounds, extra), name)

    return make


@pytest.fixture
def no_html_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip rendering report.html (matplotlib, ~1 s a run) in tests about something else;
    test_run.py and test_cli.py check the report itself."""
    import medsilo.study.run

    monkeypatch.setattr(medsilo.study.run, "write_report", lambda run_dir: None)
