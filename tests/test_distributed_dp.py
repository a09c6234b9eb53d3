"""Distributed DP (Dopamine) in a run: Skellam shares through secure aggregation.

Checked: the coordinator's step is -lr x (sum of the sites' clipped per-record gradients +
the summed shares) / expected batch, to within rounding (noise made negligible); a site
that samples no record still adds its share; every release is written ahead with the
planned t shares and settled by an outcome row with the shares that reached the sum; a
dropped site's share is missing from the outcome; too few sites releases nothing; the
two epsilons per site (coordinator; coordinator + all other sites) reach the report;
bad combinations are refused before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medsilo.cli.main import app
from medsilo.errors import ConfigError
from medsilo.fed.dp import DistributedDp
from medsilo.fed.messages import Update
from medsilo.fed.secure import flatten
from medsilo.fed.training import per_sample_gradients, set_weights
from medsilo.privacy.accounting import epsilon_after
from medsilo.privacy.dpsgd import secret_seed
from medsilo.privacy.events import SkellamEvent
from medsilo.privacy.ledger import Ledger
from medsilo.report.rundir import RunDirectory
from medsilo.report.summary import privacy_table
from medsilo.secagg.messages import Setup, UnmaskRequest
from medsilo.study.config import parse_study
from medsilo.study.run import attach_privacy, build_federation, run_study_text

STUDY = """
[study]
name = "dist"
rounds = {rounds}
evaluate_every = 0
seed = 5

[data]
dataset = "heart"
test_fraction = 0.3

[model]
name = "logreg"

[train]
batch_size = 24
lr = 0.5

[strategy]
name = "fedavg"

[privacy]
mode = "distributed"
clip = 1.0
{noise}
delta = 1e-5

[secure_aggregation]
enabled = true
bits = 48
dropout_rate = {dropout}

[baselines]
local_only = false
pooled = false
"""


def _federation(tmp_path: Path, *, noise: str = "target_epsilon = 4.0", dropout: float = 0.2):
    config = parse_study(STUDY.format(rounds=2, noise=noise, dropout=dropout))
    fed = build_federation(config)
    run_dir = RunDirectory.create(tmp_path / "run", "", {"study": "dist"})
    attach_privacy(fed, run_dir)
    return fed


def _session(fed, replies, drop_at_unmask: frozenset[str] = frozenset()) -> None:  # type: ignore[no-untyped-def]
    outbox = fed.coordinator.secagg_open([r.site for r in replies if isinstance(r, Update)])
    while outbox:
        inbox = [
            fed.sites[s].on_secagg(m)
            for s, m in outbox.items()
            if not (s in drop_at_unmask and isinstance(m, UnmaskRequest))
        ]
        outbox = fed.coordinator.secagg_step(inbox)


def test_the_step_is_the_federations_dp_sgd_gradient(tmp_path: Path) -> None:
    fed = _federation(tmp_path, noise="noise_multiplier = 1e-7")
    coordinator, sites = fed.coordinator, fed.sites
    before = {k: v.copy() for k, v in coordinator.weights.items()}
    keys = tuple(sorted(before))
    plans = coordinator.plan(1)
    expected = np.zeros(sum(v.size for v in before.values()))
    for site in sites.values():  # the same Poisson samples, in the clear
        dp = site.dp
        assert isinstance(dp, DistributedDp)
        x, y = site._tensors["train"]
        draw = np.random.default_rng(secret_seed(dp.secret, 1, 1)).random(len(y))
        chosen = torch.from_numpy(np.flatnonzero(draw < dp.sample_rate))
        set_weights(site.model, before)
        rows = per_sample_gradients(site.model, x[chosen], y[chosen], keys)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        expected += (rows * np.minimum(1.0, 1.0 / np.maximum(norms, 1e-300))).sum(0)
    replies = [sites[n].on_plan(p) for n, p in plans.items()]
    assert all(isinstance(r, Update) and r.masked and not r.delta for r in replies)
    _session(fed, replies)
    assert coordinator.aggregate(1, replies)
    distributed = coordinator.distributed
    assert distributed is not None
    step = flatten(coordinator.weights, keys) - flatten(before, keys)
    reference = -0.5 * expected / distributed.expected_batch
    scale = distributed.skellam.scale
    rows_total = sum(len(s._tensors["train"][1]) for s in sites.values())
    # Stochastic rounding moves each coordinate by < 1/scale per record; float32 weights.
    tolerance = 0.5 * rows_total / scale / distributed.expected_batch + 1e-6
    assert np.max(np.abs(step - reference)) <= tolerance
    assert np.max(np.abs(reference)) > 100 * tolerance  # the check is not vacuous


def test_ledgers_hold_both_views_and_the_outcome(tmp_path: Path) -> None:
    fed = _federation(tmp_path, dropout=0.5)
    plans = fed.coordinator.plan(1)
    replies = [fed.sites[n].on_plan(p) for n, p in plans.items()]
    # One site drops after the consistency check: its input is still in the sum (its
    # self mask is recovered from the others), so every signed survivor's share counts.
    _session(fed, replies, drop_at_unmask=frozenset({"va"}))
    assert fed.coordinator.aggregate(1, replies)
    skellam = fed.coordinator.distributed.skellam  # type: ignore[union-attr]
    t = skellam.min_survivors
    assert t < len(fed.sites)  # dropout_rate 0.5 leaves room for dropouts
    for name, site in fed.sites.items():
        dp = site.dp
        assert isinstance(dp, DistributedDp)
        release, *rest = dp.ledger.releases()
        assert not rest and release.event == dp.event(t)
        assert release.collusion_event == dp.event(1)
        outcomes = [e for e in dp.ledger.entries() if e.kind == "outcome"]
        if name == "va":  # it never unmasked: its planned, pessimistic row stands
            assert outcomes == []
            assert dp.ledger.events() == (dp.event(t),)
        else:
            assert [o.reached for o in outcomes] == [dp.event(len(fed.sites))]
            assert dp.ledger.events() == (dp.event(len(fed.sites)),)
        spent = dp.ledger.epsilon_spent()
        assert spent < dp.ledger.epsilon_spent(view="collusion")
        assert dp.ledger.verify().epsilon_spent == pytest.approx(spent)


def test_a_release_is_marked_sent_once_its_masked_input_is_handed_over(tmp_path: Path) -> None:
    fed = _federation(tmp_path, dropout=0.5)  # t = 2 of 4: the session goes on without one
    plans = fed.coordinator.plan(1)
    replies = [fed.sites[n].on_plan(p) for n, p in plans.items()]
    for site in fed.sites.values():
        site.mark_sent()  # the Update carries no release: it leaves with the masked input
        assert [e.sent_at for e in site.dp.ledger.releases()] == [None]
    outbox = fed.coordinator.secagg_open([r.site for r in replies if isinstance(r, Update)])
    quiet = "va"  # hands nothing over after the key advertisement: never its masked input
    while outbox:
        inbox = []
        for s, m in outbox.items():
            if s == quiet and not isinstance(m, Setup):
                continue
            inbox.append(fed.sites[s].on_secagg(m))
            fed.sites[s].mark_sent()
        outbox = fed.coordinator.secagg_step(inbox)
    for name, site in fed.sites.items():
        (release,) = site.dp.ledger.releases()
        assert (release.sent_at is None) == (name == quiet), name


def test_too_few_sites_release_nothing(tmp_path: Path) -> None:
    fed = _federation(tmp_path)  # dropout_rate 0.2 with 4 sites: t = 4
    before = {k: v.copy() for k, v in fed.coordinator.weights.items()}
    plans = fed.coordinator.plan(1)
    replies = [fed.sites[n].on_plan(p) for n, p in list(plans.items())[:3]]
    _session(fed, replies)
    assert "aborted" in fed.coordinator.secagg_log
    assert not fed.coordinator.aggregate(1, replies)
    for k, v in before.items():
        np.testing.assert_array_equal(fed.coordinator.weights[k], v)


def test_a_site_that_samples_nobody_still_adds_its_share(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    site = fed.sites["switzerland"]
    dp = site.dp
    assert isinstance(dp, DistributedDp)
    dp.sample_rate = 1e-12  # nobody is sampled
    plan = fed.coordinator.plan(1)["switzerland"]
    site.on_plan(plan)
    vector = site._secagg.vector  # type: ignore[union-attr]
    assert np.count_nonzero(vector) > 0.9 * vector.size  # Skellam noise, not zeros


def test_a_plan_without_the_agreed_noise_is_refused(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    plan = fed.coordinator.plan(1)["hungary"]
    forged = type(plan)(plan.round, plan.weights, plan.config, secagg=None)
    reply = fed.sites["hungary"].on_plan(forged)
    assert not isinstance(reply, Update) and "noise plan" in reply.reason
    assert fed.sites["hungary"].dp.ledger.releases() == ()  # type: ignore[union-attr]


def test_run_reports_two_epsilons_per_site(tmp_path: Path) -> None:
    result = run_study_text(
        STUDY.format(rounds=3, noise="target_epsilon = 4.0", dropout=0.2), tmp_path / "run"
    )
    table = privacy_table(RunDirectory.open(result.run_dir))
    assert (table["epsilon_spent"] <= 4.0 * (1 + 1e-6)).all()
    assert (table["epsilon_collusion"] > 2 * table["epsilon_spent"]).all()
    with Ledger.open(result.run_dir / "sites" / "cleveland") as ledger:
        events = ledger.events()
        assert len(events) == 3 and all(isinstance(e, SkellamEvent) for e in events)
        assert ledger.epsilon_spent() == pytest.approx(epsilon_after(events, 1e-5))
    page = (result.run_dir / "report.html").read_text()
    assert "epsilon_collusion" in page and "Skellam" in page


@pytest.mark.parametrize(
    ("rounds", "batch", "epsilon", "warned"), [(200, 24, 2.0, True), (200, 2, 4.0, False)]
)
def test_plan_warns_when_skellam_needs_much_more_noise_than_central_dp(
    rounds: int, batch: int, epsilon: float, warned: bool
) -> None:
    """At a large sampling rate the subsampled Skellam bound is loose (q = 0.35 here):
    the plan says how much more noise than central DP-SGD it adds; at q = 0.03 it is
    close and says nothing."""
    text = STUDY.format(rounds=rounds, noise=f"target_epsilon = {epsilon}", dropout=0.2)
    fed = build_federation(parse_study(text.replace("batch_size = 24", f"batch_size = {batch}")))
    price = [w for w in fed.warnings if "what central DP-SGD would add" in w]
    assert bool(price) == warned
    if warned:
        assert "q=0.348" in price[0] and "smaller batch_size" in price[0]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ((("enabled = true", "enabled = false"),), "secure aggregation"),
        ((("delta = 1e-5", 'delta = 1e-5\naccountant = "pld"'),), "'pld' cannot account"),
        ((("lr = 0.5", "lr = 0.5\nlocal_epochs = 2"),), "local_epochs = 1"),
        (
            (
                ('name = "fedavg"', 'name = "fedltn"'),
                ("[baselines]", "[lottery]\naccuracy_threshold = 0\n\n[baselines]"),
            ),
            "'fedltn' is not available",
        ),
        ((("bits = 48", "bits = 8"),), "bits"),
    ],
)
def test_bad_combinations_exit_2_before_writing(
    tmp_path: Path, changes: tuple[tuple[str, str], ...], expected: str
) -> None:
    study = tmp_path / "study.toml"
    text = STUDY.format(rounds=2, noise="target_epsilon = 4.0", dropout=0.2)
    for change in changes:
        text = text.replace(*change)
    study.write_text(text)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(study), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert not out.exists()
    with pytest.raises(ConfigError):
        build_federation(parse_study(text))
