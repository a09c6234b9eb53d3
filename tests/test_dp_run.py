"""Differential privacy inside a run: the epsilon a site reads is the epsilon it spent.

* per-sample clipping bounds what one record can change (DP-SGD's sensitivity);
* the epsilon reported per round equals the independent accountant's epsilon for the
  rounds actually released, and never exceeds the target;
* a site whose budget would be exceeded refuses, and the refused round is not in its
  ledger; every site spent -> exit 2 before anything is released;
* central mode (DP-FedAvg) clips each site's update;
* bad privacy settings are errors naming field, rule and value.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from medsilo.cli.main import app
from medsilo.errors import ConfigError
from medsilo.fed.dp import CentralDp, dp_fedavg_pseudo_gradient
from medsilo.fed.messages import Update
from medsilo.privacy.accounting import epsilon_after
from medsilo.privacy.dpsgd import grad_sample_mode_for, train_dpsgd, unsupported_layers
from medsilo.privacy.events import DpFedAvgEvent, DpSgdEvent
from medsilo.privacy.ledger import Ledger
from medsilo.study.run import run_study_text

HEART_DP = """
[study]
name = "dp"
rounds = {rounds}
evaluate_every = 0

[data]
dataset = "heart"
test_fraction = 0.3

[train]
batch_size = 32
lr = 0.1

[privacy]
mode = "local"
clip = 1.0
target_epsilon = 1.0
delta = 1e-4

[baselines]
local_only = false
pooled = false
{extra}
"""


def _train_once(x: torch.Tensor, y: torch.Tensor, clip: float) -> torch.Tensor:
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    train_dpsgd(
        model,
        x,
        y,
        sample_rate=1.0,
        steps=1,
        noise_multiplier=0.0,
        clip=clip,
        lr=1.0,
        momentum=0.0,
        weight_decay=0.0,
        sampling_seed=0,
        noise=torch.Generator().manual_seed(0),
    )
    return torch.cat([model.weight.flatten(), model.bias])


def test_per_sample_clipping_bounds_one_records_contribution() -> None:
    """Replacing one record by an extreme one moves the step by at most 2 C lr / B."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, generator=gen)
    y = torch.randint(0, 2, (20,), generator=gen)
    x_outlier = x.clone()
    x_outlier[0] = torch.tensor([1e4, -1e4, 1e4])
    clip = 0.5
    change = torch.linalg.norm(_train_once(x, y, clip) - _train_once(x_outlier, y, clip))
    assert change <= 2 * clip / 20 + 1e-6
    # Without clipping (a huge C) the same record moves the step far more: the bound bites.
    unclipped = torch.linalg.norm(_train_once(x, y, 1e9) - _train_once(x_outlier, y, 1e9))
    assert unclipped > 100 * change


def test_empty_poisson_sample_still_adds_noise() -> None:
    """Dopamine's code skips the noise of a site that samples no record; we must not."""
    model = nn.Linear(3, 2)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    run = train_dpsgd(
        model,
        torch.randn(10, 3),
        torch.zeros(10, dtype=torch.long),
        sample_rate=1e-9,
        steps=1,
        noise_multiplier=1.0,
        clip=1.0,
        lr=1.0,
        momentum=0.0,
        weight_decay=0.0,
        sampling_seed=0,
        noise=torch.Generator().manual_seed(1),
    )
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert run.records_seen == 0
    assert not torch.equal(before, after)


def test_batchnorm_is_reported_as_unsupported() -> None:
    problems = unsupported_layers(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))
    assert problems and "BatchNorm" in " ".join(problems)


def _train_records(run_dir: Path) -> list[dict[str, object]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] in ("train", "refusal")]


def test_reported_epsilon_is_the_accountants(tmp_path: Path) -> None:
    rounds = 3
    result = run_study_text(HEART_DP.format(rounds=rounds, extra=""), tmp_path / "run")
    meta = json.loads((result.run_dir / "run.json").read_text())["privacy"]
    records = _train_records(result.run_dir)
    assert {r["kind"] for r in records} == {"train"}
    for site, plan in meta["sites"].items():
        mine = sorted((r for r in records if r["site"] == site), key=lambda r: r["round"])
        assert len(mine) == rounds
        for r in mine:
            event = DpSgdEvent(
                plan["sample_rate"],
                plan["noise_multiplier"],
                plan["steps_per_round"] * int(r["round"]),
            )
            assert r["epsilon"] == pytest.approx(epsilon_after([event], 1e-4, "rdp"), rel=1e-9)
        assert mine[-1]["epsilon"] <= 1.0  # calibration never overshoots the target
        with Ledger.open(result.run_dir / "sites" / site) as ledger:
            report = ledger.verify()
            assert report.releases == rounds
            assert report.epsilon_spent == pytest.approx(mine[-1]["epsilon"], rel=1e-9)
            # the local engine handed every update to the coordinator: all marked sent
            assert all(entry.sent_at is not None for entry in ledger.releases())


def test_site_refuses_past_its_budget_and_ledger_holds_only_releases(tmp_path: Path) -> None:
    extra = """
[budgets]
default = { epsilon = 1.0, delta = 1e-4 }
sites = { switzerland = { epsilon = 0.5, delta = 1e-4 } }
"""
    result = run_study_text(HEART_DP.format(rounds=4, extra=extra), tmp_path / "run")
    records = [r for r in _train_records(result.run_dir) if r["site"] == "switzerland"]
    refused = [r for r in records if r["kind"] == "refusal"]
    released = [r for r in records if r["kind"] == "train"]
    assert refused and released
    assert all("budget" in str(r["reason"]) for r in refused)
    assert max(int(r["round"]) for r in released) < min(int(r["round"]) for r in refused)
    with Ledger.open(result.run_dir / "sites" / "switzerland") as ledger:
        assert len(ledger.releases()) == len(released)
        assert ledger.epsilon_spent() <= 0.5


def test_every_budget_spent_is_exit_2_and_nothing_released(tmp_path: Path) -> None:
    study = tmp_path / "study.toml"
    study.write_text(HEART_DP.format(rounds=2, extra='[budgets]\nledger_dir = "ledgers"\n'))
    runner = CliRunner()
    first = runner.invoke(app, ["run", str(study), "--out", str(tmp_path / "r1")])
    assert first.exit_code == 0, first.output
    heads = {}
    for site_dir in (tmp_path / "ledgers").iterdir():
        with Ledger.open(site_dir) as ledger:
            heads[site_dir.name] = ledger.head()
    second = runner.invoke(app, ["run", str(study), "--out", str(tmp_path / "r2")])
    assert second.exit_code == 2
    assert "already spent" in second.output and "Traceback" not in second.output
    assert not (tmp_path / "r2").exists()
    for site_dir in (tmp_path / "ledgers").iterdir():
        with Ledger.open(site_dir) as ledger:
            assert ledger.head() == heads[site_dir.name]  # nothing new recorded


def test_central_dp_fedavg_clips_each_site_and_uses_a_fixed_denominator() -> None:
    dp = CentralDp(clip=1.0, noise_multiplier=0.0, expected_sites=4.0, secret=bytes(32))
    updates = [
        Update("a", 1, {"w": np.array([30.0, 40.0])}, 1000),
        Update("b", 1, {"w": np.array([0.3, 0.4])}, 1),
    ]
    delta = dp_fedavg_pseudo_gradient({"w": np.zeros(2)}, updates, dp, 1)
    # a is clipped to norm 1 ([0.6, 0.8]); b is inside; the sample counts do not matter.
    np.testing.assert_allclose(delta["w"], np.array([0.9, 1.2]) / 4.0)


def test_central_mode_run_records_dp_fedavg_events(tmp_path: Path) -> None:
    text = (
        HEART_DP.format(rounds=2, extra="")
        .replace('mode = "local"', 'mode = "central"\nunit = "site"')
        .replace("target_epsilon = 1.0", "noise_multiplier = 1.0")
    )
    result = run_study_text(text, tmp_path / "run")
    with Ledger.open(result.run_dir / "sites" / "cleveland") as ledger:
        events = ledger.events()
        spent = ledger.epsilon_spent()
    assert events == (DpFedAvgEvent(1.0, 1.0, 1),) * 2
    assert spent == pytest.approx(epsilon_after([DpFedAvgEvent(1.0, 1.0, 2)], 1e-4, "rdp"))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("target_epsilon = 1.0", "target_epsilon = 0"), "target_epsilon"),
        (("target_epsilon = 1.0", "target_epsilon = -2"), "target_epsilon"),
        (("clip = 1.0", "clip = 0"), "clip"),
        (("clip = 1.0", "clip = -1.0"), "clip"),
        (("delta = 1e-4", "delta = 0.1"), "delta"),
        (('mode = "local"', 'mode = "distributed"'), "secure aggregation"),
        (('mode = "local"', 'mode = "central"'), "unit"),
    ],
)
def test_bad_privacy_settings_exit_2_naming_the_field(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    study = tmp_path / "study.toml"
    study.write_text(HEART_DP.format(rounds=2, extra="").replace(*change))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(study), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_delta_at_least_one_over_n_names_the_site(tmp_path: Path) -> None:
    # Cleveland has 166 training records: delta = 0.01 >= 1/166.
    text = HEART_DP.format(rounds=1, extra="").replace("delta = 1e-4", "delta = 0.01")
    with pytest.raises(ConfigError, match=r"site 'cleveland', 166 training records"):
        run_study_text(text, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("q", [0.3, 1e-9])
def test_expanded_weights_and_hooks_give_the_same_dp_sgd(q: float) -> None:
    """The mode chosen for Linear-only models (ExpandedWeights) equals Opacus' hooks,
    including steps whose Poisson sample is empty (pure noise)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=gen)
    y = (x[:, 0] > 0).long()

    def run(mode: str) -> torch.Tensor:
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
        train_dpsgd(
            model,
            x,
            y,
            sample_rate=q,
            steps=5,
            noise_multiplier=0.7,
            clip=0.5,
            lr=0.5,
            momentum=0.9,
            weight_decay=0.0,
            sampling_seed=3,
            noise=torch.Generator().manual_seed(4),
            grad_sample_mode=mode,
        )  # type: ignore[arg-type]
        assert not any(hasattr(p, "grad_sample") for p in model.parameters())
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    torch.testing.assert_close(run("ew"), run("hooks"), rtol=1e-5, atol=1e-6)
    assert grad_sample_mode_for(nn.Sequential(nn.Flatten(), nn.Linear(5, 2))) == "ew"
    assert grad_sample_mode_for(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4))) == "hooks"


def test_dp_baselines_record_the_epsilon_they_spent(tmp_path: Path) -> None:
    """The pooled-DP and local-only-DP baselines are calibrated to the study's target: the
    baselines file says what each spent, and the pooled one's plan composes to it."""
    extra = "[baselines]\nlocal_only = true\npooled = true\n"
    text = HEART_DP.format(rounds=1, extra="").replace(
        "[baselines]\nlocal_only = false\npooled = false\n", extra
    )
    result = run_study_text(text, tmp_path / "run")
    spent = json.loads((result.run_dir / "baselines.json").read_text())["privacy"]
    sites = json.loads((result.run_dir / "run.json").read_text())["privacy"]["sites"]
    assert set(spent) == {"pooled", *(f"local_only/{s}" for s in sites)}
    pooled = spent["pooled"]
    event = DpSgdEvent(pooled["sample_rate"], pooled["noise_multiplier"], pooled["steps"])
    assert pooled["epsilon"] == pytest.approx(epsilon_after([event], 1e-4, "rdp"), rel=1e-9)
    for plan in spent.values():
        assert 0.9 < plan["epsilon"] <= 1.0  # calibrated to the target, never above it
    assert set(result.per_site["setting"]) == {"federated", "local_only", "pooled"}
