"""Empirical privacy audits: the math against independent oracles, attacks that detect a
leaking model, canary bounds that detect a broken DP-SGD and never exceed the accountant's
epsilon of an honest one, and ``medsilo audit`` on a run directory.

Oracles: scipy's exact binomial interval (``binomtest(...).proportion_ci(method="exact")``
is Clopper-Pearson); the Mann-Whitney U statistic (AUC = U / (n1 n0)); a brute-force ROC
over every threshold; the Gaussian mechanism, whose epsilon the PLD accountant computes
nearly exactly (Balle & Wang, ICML 2018), as a mechanism of known privacy.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats
from torch import nn
from typer.testing import CliRunner

from conftest import HEART_FAST, study_text
from medsilo.cli.audit import audit as audit_command
from medsilo.fed.messages import TrainConfig
from medsilo.fed.training import train_local
from medsilo.privacy.accounting import epsilon_after
from medsilo.privacy.audit import (
    balanced_inclusion,
    clopper_pearson_upper,
    epsilon_lower_bound,
    epsilon_lower_bound_from_scores,
    lira_scores,
    logit_confidence,
    loss_threshold_attack,
    membership_attack,
)
from medsilo.privacy.canary import (
    canary_experiment,
    dpsgd_trainer,
    make_canary,
    max_provable_epsilon,
)
from medsilo.privacy.errors import PrivacyConfigError
from medsilo.privacy.events import DpSgdEvent, GaussianEvent
from medsilo.privacy.ledger import Ledger
from medsilo.study.audit import (
    AUDIT_FILE,
    AuditOptions,
    audit_run,
    site_procedure,
)
from medsilo.study.config import parse_study
from medsilo.study.run import build_federation, run_study

DELTA = 1e-5


# --------------------------------------------------------------------------- Clopper-Pearson


@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 10), (3, 10), (5, 10), (9, 10), (17, 250)])
def test_clopper_pearson_upper_is_the_upper_end_of_scipys_exact_interval(k: int, n: int) -> None:
    exact = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert clopper_pearson_upper(k, n, 0.025) == pytest.approx(exact.high, rel=1e-9)


def test_clopper_pearson_closed_forms() -> None:
    # k = 0: P[0 successes] = (1 - p)^n = alpha  =>  p = 1 - alpha^(1/n)
    assert clopper_pearson_upper(0, 50, 0.05) == pytest.approx(1 - 0.05 ** (1 / 50))
    assert clopper_pearson_upper(7, 7, 0.05) == 1.0
    with pytest.raises(PrivacyConfigError, match="successes must be at most trials"):
        clopper_pearson_upper(8, 7, 0.05)


def test_epsilon_lower_bound_by_hand() -> None:
    # A perfect test on 100 + 100 trials: FPR_ub = FNR_ub = 1 - 0.025^(1/100) at 95%.
    u = 1 - 0.025 ** (1 / 100)
    expected = math.log((1 - DELTA - u) / u)
    assert epsilon_lower_bound(0, 100, 0, 100, DELTA) == pytest.approx(expected)
    assert expected == pytest.approx(3.281, abs=1e-3)
    # FPR 2/100, FNR 10/100: the first term, log((1 - delta - FNR_ub) / FPR_ub), wins.
    fpr, fnr = clopper_pearson_upper(2, 100, 0.025), clopper_pearson_upper(10, 100, 0.025)
    assert epsilon_lower_bound(2, 100, 10, 100, DELTA) == pytest.approx(
        math.log((1 - DELTA - fnr) / fpr)
    )
    assert epsilon_lower_bound(50, 100, 50, 100, DELTA) == 0.0  # a coin flip proves nothing
    assert epsilon_lower_bound(0, 3, 0, 3, DELTA) == 0.0  # too few trials prove nothing


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 200),
    st.integers(1, 200),
    st.data(),
)
def test_epsilon_lower_bound_is_symmetric_and_falls_with_errors(
    n_neg: int, n_pos: int, data: st.DataObject
) -> None:
    fp = data.draw(st.integers(0, n_neg))
    fn = data.draw(st.integers(0, n_pos))
    eps = epsilon_lower_bound(fp, n_neg, fn, n_pos, DELTA)
    assert eps >= 0
    assert eps == pytest.approx(epsilon_lower_bound(fn, n_pos, fp, n_neg, DELTA))
    if fp < n_neg:
        assert epsilon_lower_bound(fp + 1, n_neg, fn, n_pos, DELTA) <= eps + 1e-12
    assert epsilon_lower_bound(fp, n_neg, fn, n_pos, DELTA, confidence=0.99) <= eps + 1e-12


# --------------------------------------------------------------------------- attacks


def test_auc_is_half_for_identical_and_one_for_separated_distributions() -> None:
    rng = np.random.default_rng(0)
    same = rng.normal(size=500)
    assert membership_attack(same, same).auc == 0.5
    assert membership_attack(rng.normal(size=4000), rng.normal(size=4000)).auc == pytest.approx(
        0.5, abs=0.02
    )
    separated = membership_attack(rng.normal(10, 1, 300), rng.normal(0, 1, 300))
    assert separated.auc == 1.0 and separated.advantage == 1.0
    assert all(tpr == 1.0 for tpr in separated.tpr_at_fpr.values())


def _brute_force_roc(members: np.ndarray, nonmembers: np.ndarray) -> list[tuple[float, float]]:
    """(FPR, TPR) of "member iff score >= t" for every t, and of "nobody is a member"."""
    points = [(0.0, 0.0)]
    for t in np.unique(np.concatenate([members, nonmembers])):
        points.append((float(np.mean(nonmembers >= t)), float(np.mean(members >= t))))
    return points


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-5, 5), min_size=1, max_size=40),
    st.lists(st.integers(-5, 5), min_size=1, max_size=40),
)
def test_auc_and_tpr_at_fpr_match_brute_force(members: list[int], nonmembers: list[int]) -> None:
    m, n = np.array(members, float), np.array(nonmembers, float)
    result = membership_attack(m, n, fprs=(0.5, 0.1, 0.01))
    u = stats.mannwhitneyu(m, n, alternative="two-sided").statistic
    assert result.auc == pytest.approx(u / (len(m) * len(n)))
    roc = _brute_force_roc(m, n)
    for f, tpr in result.tpr_at_fpr.items():
        # the best TPR of a threshold whose FPR is within the target: achievable, never more
        assert tpr == pytest.approx(max(t for fpr, t in roc if fpr <= f))
    assert result.advantage == pytest.approx(max(t - f for f, t in roc))


def test_tpr_at_low_fpr_is_flagged_when_the_sample_cannot_resolve_it() -> None:
    result = membership_attack(np.arange(10.0) + 0.5, np.arange(10.0))  # 10 non-members
    assert result.resolved(0.1) and not result.resolved(0.01)
    assert result.to_dict()["unresolved_fprs"] == ["0.01", "0.001", "1e-05"]


def test_loss_threshold_attack_calls_low_loss_member() -> None:
    assert loss_threshold_attack([0.01, 0.02, 0.03], [1.0, 2.0]).auc == 1.0
    assert loss_threshold_attack([1.0, 2.0], [0.01, 0.02, 0.03]).auc == 0.0


def test_logit_confidence_is_the_log_odds_of_the_softmax() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, size=(50, 4))
    labels = rng.integers(0, 4, 50)
    p = special.softmax(logits, axis=1)[np.arange(50), labels]
    assert logit_confidence(logits, labels) == pytest.approx(np.log(p / (1 - p)))
    # stays finite where p rounds to 1
    assert logit_confidence(np.array([[800.0, 0.0]]), np.array([0]))[0] == pytest.approx(800.0)


def test_balanced_inclusion_puts_every_example_in_half_of_the_models() -> None:
    mask = balanced_inclusion(8, 1000, np.random.default_rng(0))
    assert (mask.sum(axis=0) == 4).all()
    assert abs(mask.sum(axis=1).mean() - 500) < 1e-9 and mask.sum(axis=1).min() > 400


def test_lira_calibrates_per_example_difficulty() -> None:
    """Each example has its own typical confidence (its difficulty); membership adds +1.
    The raw confidence hardly separates members; LiRA, which compares each example with
    its own shadow distributions, does (Carlini et al. 2022, Sec. IV)."""
    rng = np.random.default_rng(0)
    n, k = 400, 16
    difficulty = rng.normal(0, 4, n)
    inside = balanced_inclusion(k, n, rng)
    shadow = difficulty + inside * 1.0 + rng.normal(0, 0.3, (k, n))
    member = rng.random(n) < 0.5
    target = difficulty + member * 1.0 + rng.normal(0, 0.3, n)
    raw = membership_attack(target[member], target[~member]).auc
    online = lira_scores(target, shadow, inside)
    offline = lira_scores(target, shadow, inside, online=False)
    per_example = lira_scores(target, shadow, inside, global_variance=False)
    assert raw < 0.65
    for scores in (online, offline, per_example):
        assert membership_attack(scores[member], scores[~member]).auc > 0.9
    with pytest.raises(PrivacyConfigError, match="IN and OUT shadow"):
        lira_scores(target, shadow, np.zeros_like(inside), global_variance=False)
    with pytest.raises(PrivacyConfigError, match="estimate a variance"):
        lira_scores(target[:3], [[1, 2, 3], [1, 2, 3]], [[1, 1, 0], [0, 0, 1]])


# --------------------------------------------------------------------------- lower bound


@pytest.mark.parametrize("selection", ["holdout", "bonferroni"])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_threshold_bound_never_exceeds_the_gaussian_mechanisms_epsilon(
    sigma: float, selection: str
) -> None:
    """A mechanism of known privacy: releasing N(0, sigma^2) or N(1, sigma^2) (sensitivity
    1). The Neyman-Pearson test is a threshold, so this is the best a threshold audit can
    do; its bound stays below the (near-exact, PLD) epsilon and is not vacuous."""
    claimed = epsilon_after([GaussianEvent(sigma)], DELTA, "pld")
    for seed in range(3):
        rng = np.random.default_rng(seed)
        bound = epsilon_lower_bound_from_scores(
            rng.normal(1, sigma, 2000),
            rng.normal(0, sigma, 2000),
            delta=DELTA,
            selection=selection,
            rng=rng,  # type: ignore[arg-type]
        )
        assert 0 <= bound.epsilon_lower_bound <= claimed
        if selection == "holdout":  # the bound is the plain one of the held-out counts
            assert bound.epsilon_lower_bound == pytest.approx(
                epsilon_lower_bound(
                    bound.false_positives,
                    bound.n_negative,
                    bound.false_negatives,
                    bound.n_positive,
                    DELTA,
                )
            )
        if sigma == 0.5:
            assert bound.epsilon_lower_bound > 1.5  # claimed: 10.0


def test_holdout_bound_counts_only_the_held_out_trials() -> None:
    rng = np.random.default_rng(0)
    bound = epsilon_lower_bound_from_scores(
        np.arange(40.0) + 100, np.arange(40.0), delta=DELTA, rng=rng
    )
    assert (bound.n_positive, bound.n_negative) == (20, 20)
    assert (bound.false_positives, bound.false_negatives) == (0, 0)
    assert bound.epsilon_lower_bound == pytest.approx(max_provable_epsilon(40))
    assert epsilon_lower_bound(0, 20, 0, 20, DELTA) == pytest.approx(max_provable_epsilon(40))


# --------------------------------------------------------------------------- training


def _random_label_data(seed: int, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows: 8 Gaussian features (+ 2 always 0), labels independent of them."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(size=(n, 8)), np.zeros((n, 2))], axis=1)
    return x.astype(np.float32), rng.integers(0, 2, n)


def _mlp() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 2))


def _logreg() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(10, 2))


OVERFIT = TrainConfig(local_epochs=150, batch_size=8, lr=0.1, momentum=0.9)


def _plain_trainer(
    config: TrainConfig,
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor, int], None]:
    def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
        train_local(model, x, y, config, seed)

    return train


@torch.no_grad()
def _losses(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    logits = model(torch.from_numpy(x)).double()
    return torch.nn.functional.cross_entropy(logits, torch.from_numpy(y), reduction="none").numpy()


def test_loss_attack_detects_an_overfit_non_private_model() -> None:
    x, y = _random_label_data(0)
    x_out, y_out = _random_label_data(1)
    model = _mlp()
    train_local(model, torch.from_numpy(x), torch.from_numpy(y), OVERFIT, seed=0)
    result = loss_threshold_attack(_losses(model, x, y), _losses(model, x_out, y_out))
    # Every member is fitted; a non-member's random label is right by chance half the time
    # (and then as confidently), so the AUC tops out near 0.75 + ...
    assert result.auc > 0.8
    assert result.advantage > 0.6


def test_canary_bound_is_positive_without_dp() -> None:
    x, y = _random_label_data(2)
    canary = make_canary(x, y, 2, np.random.default_rng(0))
    result = canary_experiment(
        _logreg,
        x,
        y,
        canary,
        _plain_trainer(TrainConfig(20, 8, 0.1)),
        trials=20,
        seed=0,
        delta=DELTA,
    )
    assert result.bound.false_positives == result.bound.false_negatives == 0
    assert result.epsilon_lower_bound == pytest.approx(max_provable_epsilon(20))
    assert result.epsilon_lower_bound > 0.8
    assert result.consistent and math.isinf(result.accountant_epsilon)
    assert min(result.in_scores) > max(result.out_scores)


DP_TRAIN = {"sample_rate": 0.5, "clip": 1.0, "steps": 10, "lr": 1.0}


def _dp_canary(sigma: float, trials: int, seed: int) -> float:
    x, y = _random_label_data(seed)
    canary = make_canary(x, y, 2, np.random.default_rng(seed))
    trainer = dpsgd_trainer(noise_multiplier=sigma, **DP_TRAIN)  # type: ignore[arg-type]
    result = canary_experiment(
        _logreg, x, y, canary, trainer, trials=trials, seed=seed, delta=DELTA
    )
    return result.epsilon_lower_bound


@pytest.mark.parametrize("sigma", [0.7, 5.0])
def test_canary_bound_never_exceeds_the_accountants_epsilon(sigma: float) -> None:
    claimed = epsilon_after([DpSgdEvent(0.5, sigma, 10)], DELTA, "rdp")
    assert _dp_canary(sigma, trials=32, seed=1) <= claimed


def test_canary_bound_catches_dp_sgd_that_forgot_its_noise() -> None:
    """Claim sigma = 8 (epsilon 0.82), but train with almost no noise: 40 trials prove
    more than the claim (at most 1.60 is provable with 40), so the audit flags the run.
    With the claimed noise they prove nothing."""
    claimed = epsilon_after([DpSgdEvent(0.5, 8.0, 10)], DELTA, "rdp")
    assert claimed == pytest.approx(0.82, abs=0.01)
    assert _dp_canary(1e-3, trials=40, seed=0) > claimed
    assert _dp_canary(8.0, trials=40, seed=0) <= claimed


def test_canary_experiment_is_deterministic_given_its_seed() -> None:
    x, y = _random_label_data(3)
    canary = make_canary(x, y, 2, np.random.default_rng(0))
    trainer = dpsgd_trainer(noise_multiplier=1.0, **DP_TRAIN)  # type: ignore[arg-type]
    runs = [
        canary_experiment(_logreg, x, y, canary, trainer, trials=3, seed=s, delta=DELTA)
        for s in (7, 7, 8)
    ]
    assert runs[0].in_scores == runs[1].in_scores and runs[0].out_scores == runs[1].out_scores
    assert runs[0].in_scores != runs[2].in_scores


# --------------------------------------------------------------------------- medsilo audit


DP_STUDY = """\
[privacy]
mode = "local"
clip = 1.0
noise_multiplier = 1.0
delta = 1e-5
"""


def _heart_run(base: Path, name: str, extra: str = "") -> Path:
    study = base / f"{name}.toml"
    study.write_text(
        study_text(
            'dataset = "heart"\ntest_fraction = 0.3',
            name="heart-audit",
            rounds=3,
            extra=HEART_FAST + extra,
        )
    )
    run_study(study, base / name)
    return base / name


@pytest.fixture(scope="module")
def heart_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-round heart run without DP."""
    return _heart_run(tmp_path_factory.mktemp("audit"), "plain")


@pytest.fixture(scope="module")
def heart_dp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same with local DP-SGD (sigma 1, C 1, q = 64 / n at each site)."""
    return _heart_run(tmp_path_factory.mktemp("audit"), "dp", DP_STUDY)


def test_audit_run_writes_audit_json(heart_run: Path) -> None:
    events: list[str] = []
    report = audit_run(
        heart_run,
        AuditOptions(shadow_models=4, canary_trials=4),
        progress=lambda event, info: events.append(event),
    )
    written = json.loads((heart_run / AUDIT_FILE).read_text())
    assert written == json.loads(json.dumps(report.to_dict()))
    assert [s["site"] for s in written["sites"]] == ["cleveland", "hungary", "switzerland", "va"]
    for site in report.sites:
        assert 0 <= site.loss_attack.auc <= 1 and site.lira is not None
        assert site.loss_attack.n_members > site.loss_attack.n_nonmembers > 0
        assert site.procedure.mechanism == "non_private"
        assert site.canary is not None and site.canary.trials == 4
    assert written["consistent"] is True and written["privacy"] is None
    assert events.count("site") == 4 and "train" in events


def test_audit_of_a_dp_run_replays_what_each_ledger_recorded(heart_dp_run: Path) -> None:
    report = audit_run(heart_dp_run, AuditOptions(shadow_models=4, canary_trials=2))
    planned = json.loads((heart_dp_run / "run.json").read_text())["privacy"]["sites"]
    assert report.privacy is not None and report.privacy.mode == "local"
    for site in report.sites:
        p, plan = site.procedure, planned[site.site]
        assert (p.mechanism, p.source) == ("dp_sgd", "ledger")
        assert (p.sample_rate, p.noise_multiplier, p.clip) == (
            plan["sample_rate"],
            plan["noise_multiplier"],
            1.0,
        )
        assert p.steps == 3 * plan["steps_per_round"]  # every round released
        with Ledger.open(heart_dp_run / "sites" / site.site) as ledger:
            assert p.accountant_epsilon == pytest.approx(ledger.epsilon_spent(), rel=1e-9)
        assert p.accountant_epsilon == pytest.approx(plan["planned_epsilon"], rel=1e-9)
        assert site.canary is not None and site.canary.consistent
    assert report.consistent


def test_site_procedure_without_a_ledger_replays_every_planned_round(
    heart_dp_run: Path,
) -> None:
    config = parse_study((heart_dp_run / "study.toml").read_text())
    fed = build_federation(config)
    assert fed.privacy is not None
    plan = fed.privacy.sites["va"]
    p = site_procedure(config, fed.privacy, "va")
    assert (p.source, p.steps) == ("plan", 3 * plan.steps_per_round)
    released = DpSgdEvent(0.5, 2.0, 7)
    p = site_procedure(config, fed.privacy, "va", released=released)
    assert (p.source, p.sample_rate, p.noise_multiplier, p.steps) == ("ledger", 0.5, 2.0, 7)
    assert p.accountant_epsilon == epsilon_after([released], DELTA)
    plain = site_procedure(config, None, "va")
    assert plain.mechanism == "non_private" and math.isinf(plain.accountant_epsilon)


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(audit_command)
    return app


def test_cli_prints_a_table_and_json(heart_run: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(_cli(), [str(heart_run), "--shadow-models", "4", "--canary-trials", "2"])
    assert result.exit_code == 0, result.output
    assert "Privacy audit of heart-audit" in result.output
    assert "AUC" in result.output and "cleveland" in result.output
    result = runner.invoke(
        _cli(), [str(heart_run), "--shadow-models", "0", "--canary-trials", "0", "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["sites"][0]["lira"] is None and payload["sites"][0]["canary"] is None


def test_cli_bad_input_exits_2_without_traceback(heart_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    unfinished = tmp_path / "unfinished"
    shutil.copytree(heart_run, unfinished)
    meta = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**meta, "status": "running"}))
    cases = [
        ([str(tmp_path)], "not a medsilo run directory"),
        ([str(heart_run), "--shadow-models", "3"], "shadow_models"),
        ([str(unfinished)], "not complete"),
    ]
    for args, needle in cases:
        result = runner.invoke(_cli(), args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert needle in result.stderr


@pytest.mark.slow
def test_default_audit_of_a_20_round_dp_run(tmp_path: Path) -> None:
    """The defaults (8 shadow models, 32 canary trials) on a 20-round local-DP heart run:
    about 2 minutes on two cores. The bound stays under every site's epsilon."""
    study = tmp_path / "dp.toml"
    study.write_text(
        study_text(
            'dataset = "heart"\ntest_fraction = 0.3',
            name="heart-audit-slow",
            rounds=20,
            extra=HEART_FAST + DP_STUDY,
        )
    )
    run_study(study, tmp_path / "run")
    report = audit_run(tmp_path / "run")
    assert report.consistent
    for site in report.sites:
        assert site.canary is not None and site.canary.trials == 32
        assert site.procedure.steps is not None and site.procedure.steps >= 20


def test_docstring_examples() -> None:
    import doctest

    from medsilo.privacy import audit as audit_module
    from medsilo.privacy import canary as canary_module

    for module in (audit_module, canary_module):
        assert doctest.testmod(module).failed == 0
