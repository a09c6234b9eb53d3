"""End to end on loopback with real processes: a SuperLink (TLS, SuperNode authentication)
started by ``medsilo coordinator start`` and three SuperNodes started by ``medsilo site
start``. Each test bounds its own time; every process is stopped and the temp directory
removed afterwards (the ``Loopback`` context and pytest's ``tmp_path``)."""

from __future__ import annotations

import functools
import os
import secrets
import signal
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec

import numpy as np
import pytest

from medsilo.cli.loopback import Loopback, wait_until
from medsilo.privacy.ledger import Ledger
from medsilo.report.rundir import MODEL_FILE, RunDirectory, load_arrays
from medsilo.study.run import run_study_text

P = ParamSpec("P")
SITES = ("cleveland", "hungary", "va")
DATA = f'dataset = "heart"\nsites = {list(SITES)}\ntest_fraction = 0.3'.replace("'", '"')

STUDY = f"""
[study]
name = "deployed"
seed = 3
rounds = {{rounds}}
evaluate_every = 0

[data]
{DATA}

[train]
batch_size = 16
lr = 0.05

[privacy]
mode = "local"
noise_multiplier = 1.5
clip = 1.0
delta = 1e-5

[budgets]
default = {{{{ epsilon = 50.0, delta = 1e-5 }}}}
{{ledger}}

[secure_aggregation]
enabled = true
clip = 0.05
dropout_rate = {{dropout}}

[baselines]
local_only = false
pooled = false

[engine]
name = "{{engine}}"
sites = {list(SITES)}
join_timeout = 120
train_timeout = {{train_timeout}}
secagg_timeout = 30
""".replace("'", '"')


def bounded(seconds: int) -> Callable[[Callable[P, None]], Callable[P, None]]:
    """Fail the test (its processes are then stopped) after ``seconds``."""

    def wrap(test: Callable[P, None]) -> Callable[P, None]:
        @functools.wraps(test)
        def run(*args: P.args, **kwargs: P.kwargs) -> None:
            def expire(*_: object) -> None:
                raise TimeoutError(f"{test.__name__} ran over {seconds} s")

            previous = signal.signal(signal.SIGALRM, expire)
            signal.alarm(seconds)
            try:
                test(*args, **kwargs)
            finally:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, previous)

        return run

    return wrap


def study(engine: str, rounds: int = 2, ledger: str = "", dropout: float = 0.2) -> str:
    timeout = 20 if dropout > 0.2 else 120
    return STUDY.format(
        engine=engine, rounds=rounds, ledger=ledger, dropout=dropout, train_timeout=timeout
    )


def share_secrets(*site_dirs: Path) -> None:
    """Give each site the same 32-byte DP secret in every run (the noise seeds)."""
    for name in SITES:
        secret = secrets.token_bytes(32)
        for root in site_dirs:
            path = root / name / "secret.key"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(secret)
            os.chmod(path, 0o600)


def with_site_state(loop: Loopback) -> list[Path]:
    return [path.parent / "state" for path in loop.sites.values()]


def releases(loop: Loopback, name: str) -> list[int]:
    with Ledger.open(loop.sites[name].parent / "state" / name) as ledger:
        return [int(e.round or 0) for e in ledger.releases()]


def unsent(loop: Loopback, name: str) -> list[int]:
    """The rounds of releases a site recorded and never handed to Flower."""
    with Ledger.open(loop.sites[name].parent / "state" / name) as ledger:
        return [int(e.round or 0) for e in ledger.releases() if e.sent_at is None]


@bounded(300)
@pytest.mark.slow  # real processes, about 2 minutes: opt-in (pytest -m slow)
def test_dp_secure_study_on_flower_equals_local_and_refuses_unknown_node(tmp_path: Path) -> None:
    local_ledgers = tmp_path / "local-ledgers"
    with Loopback(tmp_path / "flower", study("flower"), SITES, DATA) as loop:
        share_secrets(local_ledgers, *with_site_state(loop))
        for name in SITES:
            loop.start_site(name)
        loop.start_coordinator()
        loop.add_site("intruder", DATA, register=False)
        loop.start_site("intruder", "--max-retries", "2")
        text = study("local", ledger=f'ledger_dir = "{local_ledgers}"')
        run_study_text(text, tmp_path / "local")
        assert loop.wait("coordinator", 240) == 0, loop.log("coordinator")[-3000:]
        # the unknown node was refused by the SuperLink and gave up
        assert loop.wait("site-intruder", 120) != 0
        assert "SuperNode exited" in loop.log("site-intruder")
        for name in SITES:  # one release per round in each site's own ledger
            assert releases(loop, name) == [1, 2]
            assert unsent(loop, name) == []  # each left with its masked input
        run = RunDirectory.open(loop.out)
        assert run.meta["status"] == "completed"
        assert len(run.meta["flower_events"]) == len(SITES)  # three joins, nothing dropped
    flower = load_arrays(loop.out / MODEL_FILE)
    local = load_arrays(tmp_path / "local" / MODEL_FILE)
    shared = {k: v for k, v in local.items() if k.startswith("global/")}
    assert shared.keys() == flower.keys()
    for key, value in shared.items():
        np.testing.assert_array_equal(flower[key], value, err_msg=key)


@pytest.mark.slow  # real processes, 2-3 minutes: opt-in (pytest -m slow)
@bounded(600)
def test_site_killed_mid_round_and_coordinator_restart(tmp_path: Path) -> None:
    """Site 'va' is killed while round 2 trains: secure aggregation completes the round
    without it. Then the coordinator (SuperLink included) is killed during round 3 and
    restarted: the study resumes from its checkpoint and no ledger counts a round twice."""
    with Loopback(tmp_path, study("flower", rounds=4, dropout=0.4), SITES, DATA) as loop:
        for name in SITES:
            loop.start_site(name)
        loop.start_coordinator()
        metrics = loop.out / "metrics.jsonl"

        def rounds_done() -> int:
            text = metrics.read_text() if metrics.exists() else ""
            return text.count('"kind": "round"')

        wait_until(lambda: rounds_done() >= 1, 240, "round 1")
        wait_until(lambda: loop.log("site-va").count("Receiving: train") >= 2, 60, "round 2")
        loop.kill("site-va")
        wait_until(lambda: rounds_done() >= 2, 120, "round 2 without va")
        wait_until(lambda: loop.log("site-cleveland").count("Receiving: train") >= 3, 60, "round 3")
        loop.kill("coordinator")
        loop.start_coordinator()
        assert loop.wait("coordinator", 300) == 0, loop.log("coordinator")[-3000:]
        records = RunDirectory.open(loop.out).records()
        round2 = next(r for r in records if r.get("kind") == "round" and r["round"] == 2)
        assert round2["aggregated"] and round2["secagg"]["survivors"] == ["cleveland", "hungary"]
        assert [r["round"] for r in records if r.get("kind") == "round"] == [1, 2, 3, 4]
        for name in ("cleveland", "hungary"):
            assert releases(loop, name) == [1, 2, 3, 4]
        assert releases(loop, "va") in ([1], [1, 2])
