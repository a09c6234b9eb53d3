"""Secure aggregation inside a run: the coordinator only sees masked vectors and the sum,
and the global step equals the plaintext mean of the sites' clipped deltas (within the
quantizer's proven bound)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medsilo.cli.main import app
from medsilo.engines.local import LocalEngine
from medsilo.fed.messages import Update
from medsilo.fed.secure import flatten
from medsilo.secagg.messages import MaskedInput
from medsilo.study.config import parse_study
from medsilo.study.run import build_federation, run_study_text

STUDY = """
[study]
name = "sa"
rounds = {rounds}
evaluate_every = 0

[data]
dataset = "heart"
test_fraction = 0.3

[train]
batch_size = 16
lr = 0.05

[secure_aggregation]
enabled = true
clip = 0.05

[baselines]
local_only = false
pooled = false
"""


def test_masked_round_equals_plaintext_mean_of_clipped_deltas() -> None:
    fed = build_federation(parse_study(STUDY.format(rounds=1)))
    coordinator, sites = fed.coordinator, fed.sites
    before = {k: v.copy() for k, v in coordinator.weights.items()}
    plans = coordinator.plan(1)
    # The same local training, in the clear, for the reference (sites are deterministic).
    clear = build_federation(parse_study(STUDY.format(rounds=1).replace("true", "false")))
    clear_plans = clear.coordinator.plan(1)
    deltas = [clear.sites[n].on_plan(p).delta for n, p in clear_plans.items()]
    keys = sorted(before)
    expected = np.mean([np.clip(flatten(d, keys), -0.05, 0.05) for d in deltas], axis=0)

    replies = [sites[n].on_plan(p) for n, p in plans.items()]
    assert all(isinstance(r, Update) and r.masked and not r.delta for r in replies)
    seen: list[object] = []
    outbox = coordinator.secagg_open([r.site for r in replies])
    while outbox:
        inbox = [sites[s].on_secagg(m) for s, m in outbox.items()]
        seen += inbox
        outbox = coordinator.secagg_step(inbox)
    assert coordinator.aggregate(1, replies)
    got = flatten(coordinator.weights, keys) - flatten(before, keys)
    quantizer = plans["cleveland"].secagg.quantizer  # type: ignore[attr-defined]
    bound = quantizer.error_bound(len(replies), stochastic=False) / len(replies)
    # The global weights are float32: adding the step rounds to float32 once more.
    float32 = np.finfo(np.float32).eps * np.max(np.abs(flatten(coordinator.weights, keys)))
    assert np.max(np.abs(got - expected)) <= bound + float32
    assert bound < 1e-5  # 32 bits leave a fine grid
    # What reached the coordinator of each site's input: masked vectors only.
    masked = [m for m in seen if isinstance(m, MaskedInput)]
    assert len(masked) == len(sites)
    for message in masked:
        assert not np.array_equal(message.vector, quantizer.encode(np.clip(expected, -1, 1)))


def test_secure_run_logs_the_session_and_is_deterministic(tmp_path: Path) -> None:
    first = run_study_text(STUDY.format(rounds=2), tmp_path / "a")
    second = run_study_text(STUDY.format(rounds=2), tmp_path / "b")
    a = np.load(first.run_dir / "final_model.npz")
    b = np.load(second.run_dir / "final_model.npz")
    for key in a.files:  # fresh masks and session ids each run, the same sums
        np.testing.assert_array_equal(a[key], b[key])
    rounds = [
        json.loads(line) for line in (first.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    logs = [r["secagg"] for r in rounds if r["kind"] == "round"]
    assert len(logs) == 2
    assert all(sorted(log["survivors"]) == sorted(log["participants"]) for log in logs)
    assert "only the sum" in (first.run_dir / "report.html").read_text()


def test_secure_aggregation_rejects_central_dp(tmp_path: Path) -> None:
    study = tmp_path / "s.toml"
    study.write_text(
        STUDY.format(rounds=1)
        + '\n[privacy]\nmode = "central"\nunit = "site"\nclip = 1.0\nnoise_multiplier = 1.0\n'
        "delta = 1e-4\n"
    )
    result = CliRunner().invoke(app, ["run", str(study), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "secure_aggregation" in result.output and "central" in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("field", "value"), [("bits", 4), ("clip", 0), ("clip", -1.0)])
def test_bad_secure_aggregation_values(tmp_path: Path, field: str, value: float) -> None:
    study = tmp_path / "s.toml"
    text = STUDY.format(rounds=1).replace("clip = 0.05", f"clip = 0.05\n{field} = {value}")
    study.write_text(text.replace("clip = 0.05\nclip", "clip"))
    result = CliRunner().invoke(app, ["run", str(study), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert f"secure_aggregation.{field}" in result.output


def test_local_engine_carries_the_session(tmp_path: Path) -> None:
    fed = build_federation(parse_study(STUDY.format(rounds=2)))
    logs = []
    LocalEngine().run(
        fed.coordinator,
        fed.sites,
        2,
        on_round=lambda r: logs.append(r.secagg),
        evaluate_every=0,
        splits=(),
    )
    assert [log["threshold"] for log in logs] == [4, 4]


def test_secure_run_counts_the_masked_vectors_uploaded(tmp_path: Path) -> None:
    result = run_study_text(STUDY.format(rounds=1), tmp_path / "run")
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    (round_record,) = [r for r in map(json.loads, lines) if r["kind"] == "round"]
    weights = np.load(result.run_dir / "final_model.npz")
    dim = sum(weights[k].size for k in weights.files if k.startswith("global/"))
    # Every one of the 4 sites' masked vectors reached the coordinator: dim elements of
    # 32 bits each.
    assert round_record["bytes_up"] == 4 * dim * 4
    # The whole session: keys, encrypted shares, signatures and unmasking shares as well
    # (4 sites, complete graph: each sends 3 encrypted shares and reveals shares).
    assert round_record["secagg_bytes_up"] > round_record["bytes_up"] + 4 * 3 * 64
    assert round_record["secagg_bytes_down"] > 4 * 3 * 64
