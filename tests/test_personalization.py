"""The final local fine-tuning step: which layers move, masks hold, and with DP the
steps are DP-SGD and land in the site's ledger (or are refused past its budget)."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import study_text, tiny_data_section, tiny_frame, write_csv
from medsilo.errors import ConfigError
from medsilo.fed import personalization
from medsilo.fed.dp import LocalDp
from medsilo.fed.lottery import full_masks, prunable_keys, prune_step
from medsilo.fed.messages import TrainConfig
from medsilo.fed.personalization import PersonalizationSpec, fine_tune, head_keys
from medsilo.fed.training import get_weights
from medsilo.privacy.accounting import epsilon_after
from medsilo.privacy.dpsgd import steps_per_epoch
from medsilo.privacy.events import DpSgdEvent
from medsilo.privacy.ledger import Budget, Ledger, Release
from medsilo.study.config import parse_study
from medsilo.study.run import run_study_text
from medsilo.tasks.models import ModelSpec, build_model

TRAIN = TrainConfig(local_epochs=1, batch_size=8, lr=0.1, momentum=0.5)


def _model() -> torch.nn.Module:
    return build_model(ModelSpec(name="cnn", channels=(4, 8), groups=2), (3, 8, 8), 3, seed=0)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(40, 3, 8, 8, generator=g), torch.randint(0, 3, (40,), generator=g)


def test_docstring_examples() -> None:
    assert doctest.testmod(personalization).failed == 0


def test_head_only_moves_only_the_head() -> None:
    model = _model()
    before = get_weights(model)
    assert head_keys(model) == {"head.2.weight", "head.2.bias"}
    spec = PersonalizationSpec(fine_tune_epochs=2, fine_tune_lr=0.05, layers="head")
    result = fine_tune(model, *_data(), spec, TRAIN, seed=0, round=4)
    assert result.trained == {"head.2.weight", "head.2.bias"} and result.steps == 2 * 5
    for k, v in result.weights.items():
        assert np.array_equal(v, before[k]) != (k in result.trained), k
    assert all(p.requires_grad for p in model.parameters())  # restored


def test_all_layers_with_a_mask_keep_pruned_weights_at_zero() -> None:
    model = _model()
    weights = get_weights(model)
    masks = prune_step(weights, full_masks(weights, prunable_keys(weights)), 0.5, 0.1)
    spec = PersonalizationSpec(fine_tune_epochs=1)
    result = fine_tune(model, *_data(), spec, TRAIN, seed=0, round=4, masks=masks)
    for k, m in masks.items():
        assert not result.weights[k][~m].any()
        assert not np.array_equal(result.weights[k][m], weights[k][m])


def _local_dp(tmp_path: Path, epsilon: float) -> LocalDp:
    ledger = Ledger.open(tmp_path / "site", site="site", budget=Budget(epsilon, 1e-5))
    return LocalDp(
        sample_rate=0.25,
        noise_multiplier=1.2,
        clip=1.0,
        steps_per_round=4,
        secret=bytes(range(32)),
        ledger=ledger,
    )


def test_dp_fine_tuning_is_dp_sgd_and_goes_into_the_ledger(tmp_path: Path) -> None:
    dp = _local_dp(tmp_path, epsilon=50.0)
    round_event = DpSgdEvent(0.25, 1.2, 4)  # one federated round recorded before
    dp.ledger.record(Release.of_payload(round=1, event=round_event, clip=1.0, payload=b"u"))
    model = _model()
    before = get_weights(model)
    spec = PersonalizationSpec(fine_tune_epochs=2, layers="head")
    result = fine_tune(model, *_data(), spec, TRAIN, seed=0, round=2, dp=dp)
    steps = 2 * steps_per_epoch(0.25)
    assert result.refused is None and result.steps == steps == 8
    assert result.train_loss is None  # a statistic of the records: it stays inside
    releases = dp.ledger.releases()
    assert len(releases) == 2
    last = releases[-1]
    assert (last.round, last.mechanism, last.steps, last.payload_bytes) == (2, "dp_sgd", 8, 0)
    assert (last.sample_rate, last.noise_multiplier, last.clip) == (0.25, 1.2, 1.0)
    expected = epsilon_after([round_event, DpSgdEvent(0.25, 1.2, 8)], 1e-5)
    assert result.epsilon == pytest.approx(expected, rel=1e-9)
    assert dp.ledger.epsilon_spent() == pytest.approx(expected, rel=1e-9)
    assert dp.ledger.verify().releases == 2
    assert not np.array_equal(result.weights["head.2.weight"], before["head.2.weight"])
    assert np.array_equal(result.weights["features.0.weight"], before["features.0.weight"])
    dp.ledger.close()


def test_dp_fine_tuning_past_the_budget_is_refused_and_nothing_recorded(tmp_path: Path) -> None:
    dp = _local_dp(tmp_path, epsilon=0.5)
    model = _model()
    before = get_weights(model)
    spec = PersonalizationSpec(fine_tune_epochs=50)
    result = fine_tune(model, *_data(), spec, TRAIN, seed=0, round=3, dp=dp)
    assert result.refused is not None and "privacy budget" in result.refused
    assert result.steps == 0 and dp.ledger.releases() == ()
    assert all(np.array_equal(v, before[k]) for k, v in get_weights(model).items())
    dp.ledger.close()


def test_spec_rules() -> None:
    assert not PersonalizationSpec().enabled
    with pytest.raises(ValueError):
        PersonalizationSpec(layers="body")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PersonalizationSpec(fine_tune_lr=0.0)


# ------------------------------------------------------------------ in a study


PERSONALIZED = """
[model]
name = "mlp"
hidden = [8]
[train]
batch_size = 16
lr = 0.1
[personalization]
fine_tune_epochs = 2
fine_tune_lr = 0.05
layers = "head"
[baselines]
local_only = false
pooled = false
"""


def test_fine_tuned_rows_sit_next_to_the_federated_ones(tmp_path: Path) -> None:
    write_csv(tmp_path / "data.csv", tiny_frame())
    text = study_text(tiny_data_section(), rounds=2, extra=PERSONALIZED)
    result = run_study_text(text, out=tmp_path / "run", base_dir=tmp_path)
    table = result.per_site
    assert sorted(set(table["setting"])) == ["federated", "fine_tuned"]
    assert len(table[table["setting"] == "fine_tuned"]) == 3
    tuned = result.history[result.history.get("setting") == "fine_tuned"]
    assert set(tuned["split"]) == {"val", "test"} and (tuned["round"] == 2).all()
    html = (tmp_path / "run" / "report.html").read_text()
    assert "fine_tuned" in html


def test_dp_fine_tuning_in_a_study_is_planned_and_in_the_ledger(tmp_path: Path) -> None:
    """With local DP the noise is calibrated for rounds + fine-tuning, the fine-tune is
    release R + 1 in each site's ledger (0 bytes left the site), and the epsilon the
    site spent equals the planned one and the accountant's over all its events."""
    write_csv(tmp_path / "data.csv", tiny_frame())
    dp = '[privacy]\nmode = "local"\nclip = 1.0\ntarget_epsilon = 4.0\ndelta = 1e-4\n'
    text = study_text(tiny_data_section(), rounds=2, evaluate_every=0, extra=PERSONALIZED + dp)
    result = run_study_text(text, out=tmp_path / "run", base_dir=tmp_path)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    for site, plan in meta["privacy"]["sites"].items():
        with Ledger.open(tmp_path / "run" / "sites" / site) as ledger:
            releases = ledger.releases()
            spent = ledger.epsilon_spent()
            events = ledger.events()
        assert [e.round for e in releases] == [1, 2, 3]
        assert releases[-1].payload_bytes == 0 and releases[0].payload_bytes > 0
        q = plan["sample_rate"]
        assert releases[-1].steps == 2 * steps_per_epoch(q)
        assert spent == pytest.approx(plan["planned_epsilon"], rel=1e-9)
        assert spent == pytest.approx(epsilon_after(events, 1e-4), rel=1e-9)
        assert spent <= 4.0 * (1 + 1e-6)
        tuned = result.history[
            (result.history.get("setting") == "fine_tuned") & (result.history["site"] == site)
        ]
        assert tuned["epsilon"].iloc[0] == pytest.approx(spent, rel=1e-9)


def test_fine_tuning_with_central_dp_is_refused_by_the_study_file() -> None:
    extra = (
        "[personalization]\nfine_tune_epochs = 1\n"
        '[privacy]\nmode = "central"\nunit = "site"\nclip = 1.0\nnoise_multiplier = 1.0\n'
        "delta = 1e-4\n"
    )
    with pytest.raises(ConfigError, match=r"personalization\.fine_tune_epochs"):
        parse_study(study_text('dataset = "heart"', extra=extra))
