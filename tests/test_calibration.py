"""Noise calibration never overshoots, is tight, and rejects bad input by name; DpSgdSpec."""

from __future__ import annotations

import pytest
from dp_accounting import dp_event, mechanism_calibration
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st

from medsilo.privacy.accounting import RDP_ORDERS, epsilon_after
from medsilo.privacy.calibration import (
    NOISE_MULTIPLIER_MIN,
    calibrate_noise_multiplier,
    validate_delta,
)
from medsilo.privacy.errors import PrivacyConfigError
from medsilo.privacy.events import DpFedAvgEvent, DpSgdEvent
from medsilo.privacy.spec import DpSgdSpec


@settings(max_examples=8, deadline=None)
@given(
    q=st.floats(min_value=0.002, max_value=0.2),
    steps=st.integers(min_value=1, max_value=3000),
    target=st.floats(min_value=0.5, max_value=15.0),
    accountant=st.sampled_from(["rdp", "rdp_classic"]),
)
def test_never_overshoots_and_is_tight(
    q: float, steps: int, target: float, accountant: str
) -> None:
    c = calibrate_noise_multiplier(
        target_epsilon=target, delta=1e-5, sample_rate=q, steps=steps, accountant=accountant
    )
    spent = epsilon_after([DpSgdEvent(q, c.noise_multiplier, steps)], 1e-5, accountant)
    assert spent == c.epsilon <= target
    if not c.at_minimum:
        less = epsilon_after([DpSgdEvent(q, c.noise_multiplier / 1.01, steps)], 1e-5, accountant)
        assert less > target  # 1% less noise would overshoot: within 1% of the optimum
    else:
        assert c.noise_multiplier == NOISE_MULTIPLIER_MIN


@pytest.mark.parametrize(
    ("accountant", "target"), [("rdp_classic", 9.08), ("rdp", 8.18), ("pld", 7.44)]
)
def test_recovers_the_published_noise(accountant: str, target: float) -> None:
    # Dopamine's CDP run spent these epsilons with sigma = 1.0 (REFERENCES.md).
    c = calibrate_noise_multiplier(
        target_epsilon=target,
        delta=1e-4,
        sample_rate=50 / 2931,
        steps=5800,
        accountant=accountant,
        dataset_size=2931,
    )
    assert c.epsilon <= target
    assert c.noise_multiplier == pytest.approx(1.0, rel=0.01)
    assert c.evaluations <= 15


def test_agrees_with_dp_accounting_calibration() -> None:
    # dp-accounting's own bisection (mechanism_calibration) as an independent search.
    q, steps, target = 0.01, 2000, 3.0

    def make_event(sigma: float) -> dp_event.DpEvent:
        return DpSgdEvent(q, sigma, steps).to_dp_event()

    theirs = mechanism_calibration.calibrate_dp_mechanism(
        lambda: rdp_privacy_accountant.RdpAccountant(orders=RDP_ORDERS),
        make_event,
        target,
        1e-5,
        mechanism_calibration.LowerEndpointAndGuess(0.1, 1.0),
        tol=1e-4,
    )
    ours = calibrate_noise_multiplier(
        target_epsilon=target, delta=1e-5, sample_rate=q, steps=steps, rtol=1e-3
    )
    assert ours.noise_multiplier == pytest.approx(theirs, rel=1.5e-3)
    assert ours.epsilon <= target


def test_pld_calibration_never_overshoots() -> None:
    c = calibrate_noise_multiplier(
        target_epsilon=1.0, delta=1e-5, sample_rate=0.02, steps=500, accountant="pld"
    )
    assert epsilon_after([DpSgdEvent(0.02, c.noise_multiplier, 500)], 1e-5, "pld") <= 1.0
    assert epsilon_after([DpSgdEvent(0.02, c.noise_multiplier / 1.01, 500)], 1e-5, "pld") > 1.0


def test_very_loose_target_stops_at_the_minimum_noise() -> None:
    c = calibrate_noise_multiplier(target_epsilon=1e4, delta=1e-5, sample_rate=0.01, steps=1)
    assert c.at_minimum and c.noise_multiplier == NOISE_MULTIPLIER_MIN and c.epsilon <= 1e4


def test_unreachable_target_is_named() -> None:
    with pytest.raises(PrivacyConfigError, match=r"^target_epsilon must be reachable"):
        calibrate_noise_multiplier(target_epsilon=1e-5, delta=1e-5, sample_rate=1.0, steps=10**6)


@pytest.mark.parametrize(
    ("kwargs", "parameter", "value"),
    [
        ({"target_epsilon": 0.0}, "target_epsilon", "0.0"),
        ({"target_epsilon": -1.0}, "target_epsilon", "-1.0"),
        ({"target_epsilon": float("nan")}, "target_epsilon", "nan"),
        ({"delta": 0.0}, "delta", "0.0"),
        ({"delta": 1.0}, "delta", "1.0"),
        ({"delta": 2.0}, "delta", "2.0"),
        ({"sample_rate": 0.0}, "sample_rate", "0.0"),
        ({"sample_rate": 1.01}, "sample_rate", "1.01"),
        ({"steps": 0}, "steps", "0"),
        ({"steps": 10.5}, "steps", "10.5"),
        ({"accountant": "moments"}, "accountant", "'moments'"),
        ({"rtol": 0.0}, "rtol", "0.0"),
        ({"dataset_size": 0}, "dataset_size", "0"),
    ],
)
def test_bad_input_names_parameter_rule_and_value(
    kwargs: dict[str, object], parameter: str, value: str
) -> None:
    args: dict[str, object] = {
        "target_epsilon": 5.0,
        "delta": 1e-5,
        "sample_rate": 0.01,
        "steps": 100,
        **kwargs,
    }
    with pytest.raises(PrivacyConfigError) as info:
        calibrate_noise_multiplier(**args)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith(f"{parameter} must be "), message
    assert f"got {value}" in message, message


def test_delta_must_be_well_below_one_over_the_site_size() -> None:
    with pytest.raises(PrivacyConfigError) as info:
        calibrate_noise_multiplier(
            target_epsilon=5.0,
            delta=1e-3,
            sample_rate=0.01,
            steps=100,
            dataset_size=2931,
            site="hospital-a",
        )
    message = str(info.value)
    assert message.startswith("delta must be well below 1/n = 1/2931")
    assert "2931 records at site 'hospital-a'" in message and "got 0.001" in message
    assert validate_delta(1e-5, dataset_size=2931) == 1e-5
    with pytest.raises(PrivacyConfigError, match="10 sites"):
        validate_delta(0.2, dataset_size=10, unit="site")


# --------------------------------------------------------------------------- DpSgdSpec


def test_spec_local_with_target_epsilon_calibrates() -> None:
    spec = DpSgdSpec.parse(
        {"mode": "local", "clip": 2.0, "target_epsilon": 8.18, "delta": 1e-4, "batch_size": 50}
    )
    q = spec.sampling_rate(2931)
    assert q == 50 / 2931
    sigma = spec.resolve_noise_multiplier(sample_rate=q, steps=5800, dataset_size=2931)
    assert sigma == pytest.approx(1.0, rel=0.01)
    event = spec.event(sample_rate=q, noise_multiplier=sigma, steps=58)
    assert isinstance(event, DpSgdEvent) and event.steps == 58


def test_spec_with_noise_multiplier_still_checks_delta_against_the_site() -> None:
    spec = DpSgdSpec(mode="local", clip=1.0, noise_multiplier=1.1, delta=1e-3, sample_rate=0.1)
    assert spec.resolve_noise_multiplier(sample_rate=0.1, steps=10) == 1.1
    with pytest.raises(PrivacyConfigError, match=r"delta must be well below 1/n = 1/5000"):
        spec.resolve_noise_multiplier(sample_rate=0.1, steps=10, dataset_size=5000, site="B")


def test_spec_site_level_is_dp_fedavg() -> None:
    spec = DpSgdSpec(
        mode="central", unit="site", clip=0.5, noise_multiplier=1.0, delta=1e-3, sample_rate=0.5
    )
    assert isinstance(spec.event(sample_rate=0.5, noise_multiplier=1.0, steps=1), DpFedAvgEvent)


@pytest.mark.parametrize(
    ("data", "field", "phrase"),
    [
        (
            {
                "mode": "distributed",
                "clip": 1.0,
                "delta": 1e-5,
                "noise_multiplier": 1.0,
                "unit": "site",
            },
            "(section)",
            "needs mode = 'central'",
        ),
        ({"mode": "local", "clip": 0.0}, "clip", "greater than 0 (got 0.0)"),
        ({"mode": "local", "clip": -2}, "clip", "greater than 0 (got -2)"),
        ({"mode": "local", "delta": 1.5}, "delta", "less than 1 (got 1.5)"),
        ({"mode": "local", "sample_rate": 0}, "sample_rate", "greater than 0 (got 0)"),
        ({"mode": "local", "accountant": "moments"}, "accountant", "'rdp'"),
        ({"mode": "parallel"}, "mode", "'local'"),
        ({"mode": "local", "clip": 1.0, "delta": 1e-5}, "(section)", "exactly one of"),
        (
            {"mode": "local", "clip": 1, "delta": 1e-5, "noise_multiplier": 1, "target_epsilon": 1},
            "(section)",
            "got both",
        ),
        (
            {"mode": "local", "noise_multiplier": 1.0, "delta": 1e-5},
            "(section)",
            "clip is required",
        ),
        ({"mode": "local", "clip": 1.0, "noise_multiplier": 1.0}, "(section)", "delta is required"),
        ({"mode": "none", "noise_multiplier": 1.0}, "(section)", "mode = 'none'"),
        (
            {"mode": "local", "unit": "site", "clip": 1, "noise_multiplier": 1, "delta": 1e-5},
            "(section)",
            "needs mode = 'central'",
        ),
        (
            {
                "mode": "local",
                "clip": 1,
                "noise_multiplier": 1,
                "delta": 1e-5,
                "sample_rate": 0.1,
                "batch_size": 10,
            },
            "(section)",
            "not both",
        ),
        ({"mode": "local", "clipp": 1.0}, "clipp", "Extra inputs are not permitted"),
    ],
)
def test_spec_errors_name_field_rule_and_value(
    data: dict[str, object], field: str, phrase: str
) -> None:
    with pytest.raises(PrivacyConfigError) as info:
        DpSgdSpec.parse(data)
    message = str(info.value)
    assert f"[privacy]: {field}: " in message, message
    assert phrase in message, message


def test_spec_batch_larger_than_site_is_named() -> None:
    spec = DpSgdSpec(mode="local", clip=1.0, noise_multiplier=1.0, delta=1e-5, batch_size=64)
    with pytest.raises(PrivacyConfigError, match=r"^batch_size must be at most .* n = 40; got 64"):
        spec.sampling_rate(40)
    assert DpSgdSpec(mode="none").enabled is False
    assert DpSgdSpec(mode="local", clip=1, noise_multiplier=1, delta=1e-5).sampling_rate(
        100, default_batch_size=10
    ) == pytest.approx(0.1)
