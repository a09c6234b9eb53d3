"""Server strategies against values computed by hand, FedProx's proximal term, FedBN's
local normalization layers, and client selection.

The update rules are those of Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
Algorithm 2 (FedAdagrad / FedAdam / FedYogi: x <- x + eta * m / (sqrt(v) + tau), v
started at tau^2, m at 0, no bias correction), with the pseudo-gradient Delta weighted by
sample counts as medsilo documents, momentum m <- beta1 m + (1 - beta1) Delta for all
three adaptive methods (Algorithm 2 applies it to FedAdagrad too); FedAvgM is Hsu et
al. 2019 (m <- beta m + Delta).

The hand-computed example used throughout: two sites, a with n = 1 and b with n = 3;

    round 1: delta_a = w: [4, 4], b: [ 2]     delta_b = w: [0, 8], b: [-2]
             Delta_1 = (1 * delta_a + 3 * delta_b) / 4 = w: [1, 7], b: [-1]
    round 2: delta_a = w: [-4, 4], b: [4]     delta_b = w: [0, 0], b: [0]
             Delta_2 = w: [-1, 1], b: [1]

starting from w_0 = w: [1, -2], b: [0.5], and eta = 1, beta1 = beta2 = 0.5, tau = 1,
server momentum 0.5 (numbers chosen so that most square roots are exact).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from conftest import study_text
from medsilo.data import builtin
from medsilo.data.types import RawImages, SiteData
from medsilo.engines.local import LocalEngine
from medsilo.fed.coordinator import Coordinator
from medsilo.fed.messages import EvaluateRequest, Evaluation, RoundPlan, TrainConfig, Update
from medsilo.fed.site import Site
from medsilo.fed.strategies import StrategySpec, aggregate, pseudo_gradient
from medsilo.fed.training import get_weights, set_weights, train_local
from medsilo.report.rundir import load_arrays
from medsilo.study.run import run_study
from medsilo.tasks.models import ModelSpec, build_model, normalization_keys

W0 = {"w": np.array([1.0, -2.0]), "b": np.array([0.5])}
ROUND_DELTAS = [
    ({"w": [4.0, 4.0], "b": [2.0]}, {"w": [0.0, 8.0], "b": [-2.0]}),
    ({"w": [-4.0, 4.0], "b": [4.0]}, {"w": [0.0, 0.0], "b": [0.0]}),
]
HAND = {"server_lr": 1.0, "beta1": 0.5, "beta2": 0.5, "tau": 1.0, "server_momentum": 0.5}


def _updates(round_: int) -> list[Update]:
    da, db = ROUND_DELTAS[round_ - 1]
    return [
        Update("a", round_, {k: np.array(v) for k, v in da.items()}, num_samples=1),
        Update("b", round_, {k: np.array(v) for k, v in db.items()}, num_samples=3),
    ]


def _two_rounds(name: str, **params: float) -> list[dict[str, np.ndarray]]:
    spec = StrategySpec(name=name, **{**HAND, **params})  # type: ignore[arg-type]
    weights: dict[str, np.ndarray] = {k: v.copy() for k, v in W0.items()}
    state: dict[str, dict[str, np.ndarray]] = {}
    out = []
    for round_ in (1, 2):
        weights, state = aggregate(spec, weights, _updates(round_), state)
        out.append(weights)
    return out


def _check(got: dict[str, np.ndarray], w: list[float], b: list[float]) -> None:
    np.testing.assert_allclose(got["w"], w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["b"], b, rtol=1e-12, atol=1e-12)


def test_pseudo_gradient_is_sample_weighted() -> None:
    delta = pseudo_gradient(W0, _updates(1))
    _check(delta, [1.0, 7.0], [-1.0])  # (1 * 4 + 3 * 0) / 4 = 1, (4 + 24) / 4 = 7, ...
    _check(pseudo_gradient(W0, _updates(2)), [-1.0, 1.0], [1.0])


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_fedavg_and_fedprox_server_side(name: str) -> None:
    r1, r2 = _two_rounds(name)
    # w_1 = w_0 + Delta_1 = [2, 5], b -0.5; it equals the sample-weighted average of the
    # site models a = [5, 2], b_a = 2.5 and b = [1, 6], b_b = -1.5: (1 * 5 + 3 * 1) / 4 = 2.
    _check(r1, [2.0, 5.0], [-0.5])
    _check(r2, [1.0, 6.0], [0.5])


def test_fedavg_server_learning_rate() -> None:
    (r1, _) = _two_rounds("fedavg", server_lr=0.5)
    _check(r1, [1.5, 1.5], [0.0])  # w_0 + 0.5 * Delta_1


def test_fedavgm() -> None:
    r1, r2 = _two_rounds("fedavgm")
    # m_1 = Delta_1 = [1, 7], b -1             -> w_1 = [2, 5], b -0.5
    # m_2 = 0.5 m_1 + Delta_2 = [-0.5, 4.5], b 0.5 -> w_2 = [1.5, 9.5], b 0.0
    _check(r1, [2.0, 5.0], [-0.5])
    _check(r2, [1.5, 9.5], [0.0])


def test_fedadagrad() -> None:
    r1, r2 = _two_rounds("fedadagrad")
    # v_0 = tau^2 = 1; v_1 = 1 + Delta_1^2 = [2, 50], b 2
    # m_1 = 0.5 * 0 + 0.5 * Delta_1 = [0.5, 3.5], b -0.5
    w1 = [1 + 0.5 / (math.sqrt(2) + 1), -2 + 3.5 / (math.sqrt(50) + 1)]
    b1 = 0.5 - 0.5 / (math.sqrt(2) + 1)
    _check(r1, w1, [b1])
    # v_2 = v_1 + Delta_2^2 = [3, 51], b 3; m_2 = 0.5 m_1 + 0.5 Delta_2 = [-0.25, 2.25], b 0.25
    w2 = [w1[0] - 0.25 / (math.sqrt(3) + 1), w1[1] + 2.25 / (math.sqrt(51) + 1)]
    _check(r2, w2, [b1 + 0.25 / (math.sqrt(3) + 1)])


def test_fedadam() -> None:
    r1, r2 = _two_rounds("fedadam")
    # m_1 = 0.5 * 0 + 0.5 * Delta_1 = [0.5, 3.5], b -0.5
    # v_1 = 0.5 * 1 + 0.5 * Delta_1^2 = [1, 25], b 1
    # w_1 = w_0 + m_1 / (sqrt(v_1) + 1) = [1 + 0.5 / 2, -2 + 3.5 / 6], b 0.5 - 0.5 / 2
    _check(r1, [1.25, -2 + 3.5 / 6], [0.25])
    # m_2 = 0.5 m_1 + 0.5 Delta_2 = [-0.25, 2.25], b 0.25
    # v_2 = 0.5 v_1 + 0.5 Delta_2^2 = [1, 13], b 1
    _check(r2, [1.25 - 0.25 / 2, -2 + 3.5 / 6 + 2.25 / (math.sqrt(13) + 1)], [0.375])


def test_fedyogi() -> None:
    r1, r2 = _two_rounds("fedyogi")
    # v_1 = v_0 - 0.5 Delta^2 sign(v_0 - Delta^2): v_0 = 1, Delta_1^2 = [1, 49], b 1
    #     = [1 - 0.5 * 1 * 0, 1 + 0.5 * 49] = [1, 25.5], b 1;  m_1 as Adam = [0.5, 3.5]
    w1 = [1.25, -2 + 3.5 / (math.sqrt(25.5) + 1)]
    _check(r1, w1, [0.25])
    # Delta_2^2 = [1, 1]: v_2 = [1, 25.5 - 0.5 * 1 * sign(24.5)] = [1, 25], b 1 (Adam's
    # v would have halved to 13: Yogi's v moves additively, the point of the method)
    # m_2 = [-0.25, 2.25], b 0.25
    _check(r2, [w1[0] - 0.125, w1[1] + 2.25 / 6], [0.375])


def test_adaptive_defaults_match_reddi_et_al() -> None:
    spec = StrategySpec(name="fedadam")
    assert (spec.eta, spec.beta1, spec.beta2, spec.tau) == (0.01, 0.9, 0.99, 1e-3)
    assert StrategySpec(name="fedavg").eta == 1.0
    assert StrategySpec(name="fedyogi", server_lr=0.3).eta == 0.3
    # One FedAdam step with the defaults, Delta = [1, 7]: m = 0.1 Delta,
    # v = 0.99 * 1e-6 + 0.01 * Delta^2, w += 0.01 * m / (sqrt(v) + 1e-3)
    got, state = aggregate(spec, W0, _updates(1), {})
    v = [0.99e-6 + 0.01 * 1.0, 0.99e-6 + 0.01 * 49.0]
    expected = [
        1 + 0.01 * 0.1 / (math.sqrt(v[0]) + 1e-3),
        -2 + 0.01 * 0.7 / (math.sqrt(v[1]) + 1e-3),
    ]
    np.testing.assert_allclose(got["w"], expected, rtol=1e-12)
    np.testing.assert_allclose(state["v"]["w"], v, rtol=1e-12)
    np.testing.assert_allclose(state["m"]["w"], [0.1, 0.7], rtol=1e-12)


def test_aggregate_is_pure_and_keeps_dtypes() -> None:
    weights = {"w": np.array([1.0, -2.0], dtype=np.float32), "b": np.array([0.5], np.float32)}
    before = {k: v.copy() for k, v in weights.items()}
    spec = StrategySpec(name="fedadam", **HAND)  # type: ignore[arg-type]
    new, state = aggregate(spec, weights, _updates(1), {})
    state_copy = {s: {k: v.copy() for k, v in d.items()} for s, d in state.items()}
    new2, _ = aggregate(spec, new, _updates(2), state)
    for k in weights:
        np.testing.assert_array_equal(weights[k], before[k])
        np.testing.assert_array_equal(state["m"][k], state_copy["m"][k])
        np.testing.assert_array_equal(state["v"][k], state_copy["v"][k])
        assert new[k].dtype == np.float32 and new2[k].dtype == np.float32
    np.testing.assert_allclose(new["w"], [1.25, -2 + 3.5 / 6], rtol=1e-6)


def test_aggregate_rejects_bad_updates() -> None:
    spec = StrategySpec()
    with pytest.raises(ValueError, match="no updates"):
        aggregate(spec, W0, [], {})
    with pytest.raises(ValueError, match="no samples"):
        aggregate(spec, W0, [Update("a", 1, dict(W0), num_samples=0)], {})
    with pytest.raises(ValueError, match="update from 'x' has keys that do not match"):
        aggregate(spec, W0, [Update("x", 1, {"w": np.zeros(2)}, num_samples=1)], {})


def test_strategy_spec_rules() -> None:
    with pytest.raises(ValidationError, match="fedprox needs mu > 0"):
        StrategySpec(name="fedprox", mu=0)
    assert StrategySpec(name="fedprox", mu=0.5).proximal_mu == 0.5
    assert StrategySpec(name="fedavg", mu=0.5).proximal_mu == 0.0
    with pytest.raises(ValidationError):
        StrategySpec(name="fedavgg")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        StrategySpec(fraction=0)


# -- FedProx: the proximal term changes the site's update -------------------------------


def _toy(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(24, 3)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=24) > 0).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def _logreg() -> torch.nn.Module:
    return build_model(ModelSpec(name="logreg"), (3,), 2, seed=1)


def test_fedprox_proximal_gradient_by_hand() -> None:
    """train_local with mu > 0 equals SGD on cross-entropy plus the gradient of
    mu/2 ||w - w_g||^2, which is mu (w - w_g), written out here step by step."""
    x, y = _toy()
    mu, lr, batch, seed = 2.0, 0.1, 8, 123
    model = _logreg()
    anchor = {k: torch.from_numpy(v) for k, v in get_weights(model).items()}
    train_local(model, x, y, TrainConfig(2, batch, lr, proximal_mu=mu), seed=seed, anchor=anchor)

    ref = _logreg()
    params = dict(ref.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    for _ in range(2):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch):
            idx = order[start : start + batch]
            for p in params.values():
                p.grad = None
            torch.nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()
            with torch.no_grad():
                for k, p in params.items():
                    p -= lr * (p.grad + mu * (p - anchor[k]))
    for k, v in get_weights(ref).items():
        np.testing.assert_allclose(get_weights(model)[k], v, rtol=1e-5, atol=1e-6)


def test_fedprox_mu_changes_and_shrinks_the_site_update() -> None:
    x, y = _toy()
    data = SiteData("a", x.numpy(), y.numpy(), x.numpy()[:4], y.numpy()[:4], x.numpy(), y.numpy())
    global_weights = get_weights(_logreg())

    def delta(mu: float) -> dict[str, np.ndarray]:
        site = Site(0, data, _logreg, frozenset(), seed=7)
        plan = RoundPlan(1, global_weights, TrainConfig(3, 4, 0.2, proximal_mu=mu))
        return dict(site.on_plan(plan).delta)

    plain, prox, zero_anchor = delta(0.0), delta(5.0), delta(0.0)
    norm = lambda d: math.sqrt(sum(float((v**2).sum()) for v in d.values()))  # noqa: E731
    assert norm(plain) > 0
    assert not all(np.array_equal(plain[k], prox[k]) for k in plain)
    assert norm(prox) < 0.8 * norm(plain), "the proximal term pulls the site toward w_global"
    # mu = 0 with an anchor is bit-identical to no proximal term at all
    assert all(np.array_equal(plain[k], zero_anchor[k]) for k in plain)


def test_study_passes_mu_only_to_fedprox(heart_study: Callable[..., Path]) -> None:
    from medsilo.study.config import load_study

    prox, _ = load_study(heart_study(extra='[strategy]\nname = "fedprox"\nmu = 0.3'))
    avg, _ = load_study(heart_study(extra="[strategy]\nmu = 0.3", name="avg.toml"))
    assert prox.train_config().proximal_mu == 0.3
    assert avg.train_config().proximal_mu == 0.0
    assert avg.baseline_config().proximal_mu == 0.0
    assert prox.baseline_config().local_epochs == 3  # local epochs x rounds


# -- FedBN: normalization layers stay at each site ----------------------------------------


def _tiny_images() -> RawImages:
    rng = np.random.default_rng(0)
    labels = np.arange(90) % 3
    images = rng.uniform(0, 0.5, size=(90, 3, 8, 8)).astype(np.float32)
    images += labels[:, None, None, None].astype(np.float32) * 0.2
    return RawImages(images=images, labels=labels, class_names=("g0", "g1", "g2"))


FEDBN_STUDY = """\
dataset = "retina"
partition = "iid"
num_sites = 3
min_site_rows = 5
"""
FEDBN_EXTRA = """\
[model]
name = "cnn"
channels = [4]
groups = 2
[train]
batch_size = 16
lr = 0.1
[baselines]
local_only = false
pooled = false
[strategy]
fedbn = {fedbn}
"""


def test_fedbn_keeps_normalization_layers_local(
    tmp_path: Path,
    write_study: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    no_html_report: None,
) -> None:
    retina = builtin.get("retina")
    monkeypatch.setitem(
        builtin._DATASETS, "retina", dataclasses.replace(retina, loader=_tiny_images)
    )
    model = build_model(ModelSpec(name="cnn", channels=(4,), groups=2), (3, 8, 8), 3, 0)
    norm = normalization_keys(model)
    assert norm == {"features.1.weight", "features.1.bias"}

    def final(fedbn: bool) -> dict[str, np.ndarray]:
        extra = FEDBN_EXTRA.format(fedbn=str(fedbn).lower())
        study = write_study(study_text(FEDBN_STUDY, rounds=2, extra=extra), f"s{fedbn}.toml")
        run_study(study, tmp_path / f"run-{fedbn}")
        return load_arrays(tmp_path / f"run-{fedbn}" / "final_model.npz")

    with_bn = final(True)
    global_keys = {k.removeprefix("global/") for k in with_bn if k.startswith("global/")}
    assert global_keys == set(get_weights(model)) - norm, "norm layers never reach the server"
    locals_ = {
        site: {k: with_bn[f"local/{site}/{k}"] for k in norm}
        for site in ("site-0", "site-1", "site-2")
    }
    init = get_weights(model)
    for site, layers in locals_.items():
        assert set(layers) == norm, site
        assert not np.array_equal(layers["features.1.weight"], init["features.1.weight"])
    # each site trained its own normalization layers: they differ between sites
    assert not np.array_equal(
        locals_["site-0"]["features.1.weight"], locals_["site-1"]["features.1.weight"]
    )
    without = final(False)
    assert {k for k in without if k.startswith("local/")} == set()
    assert {f"global/{k}" for k in norm} <= set(without)


def test_fedbn_site_evaluates_with_its_own_layers() -> None:
    spec = ModelSpec(name="cnn", channels=(4,), groups=2)

    def factory() -> torch.nn.Module:
        return build_model(spec, (3, 8, 8), 3, seed=0)

    raw = _tiny_images()
    x, y = raw.images[:30], raw.labels[:30]
    norm = normalization_keys(factory())
    site = Site(0, SiteData("a", x, y, x, y, x, y), factory, norm, seed=0)
    shared = {k: v for k, v in get_weights(factory()).items() if k not in norm}
    site.on_plan(RoundPlan(1, shared, TrainConfig(1, 8, 0.5)))
    # the site's state is exactly its local layers, and evaluation uses them
    assert set(site.state_dict()) == norm
    ev = site.on_evaluate(EvaluateRequest(1, shared, "test"))
    reference = factory()
    set_weights(reference, shared)
    set_weights(reference, site.state_dict())
    from medsilo.fed.training import evaluate

    assert ev.metrics == evaluate(reference, torch.from_numpy(x), torch.from_numpy(y))


# -- client selection -------------------------------------------------------------------


def _coordinator(num_sites: int, fraction: float, min_sites: int = 1, seed: int = 0) -> Coordinator:
    names = [f"s{i}" for i in range(num_sites)]
    spec = StrategySpec(fraction=fraction, min_sites=min_sites)
    return Coordinator({"w": np.zeros(1)}, spec, names, TrainConfig(1, 1, 0.1), seed)


@pytest.mark.parametrize(
    ("num_sites", "fraction", "min_sites", "count"),
    [(10, 0.3, 1, 3), (10, 0.25, 1, 3), (10, 0.01, 1, 1), (10, 0.3, 5, 5), (4, 1.0, 1, 4)],
)
def test_selection_count(num_sites: int, fraction: float, min_sites: int, count: int) -> None:
    coordinator = _coordinator(num_sites, fraction, min_sites)
    for round_ in range(1, 6):
        chosen = coordinator.select(round_)
        assert len(chosen) == count == len(set(chosen))  # ceil(fraction K), >= min_sites
        assert chosen == sorted(chosen, key=lambda s: int(s[1:]))


def test_selection_is_deterministic_per_round_and_seed() -> None:
    a, b = _coordinator(20, 0.2), _coordinator(20, 0.2)
    rounds = range(1, 11)
    assert [a.select(r) for r in rounds] == [b.select(r) for r in rounds]
    assert a.select(3) == a.select(3)
    assert len({tuple(a.select(r)) for r in rounds}) > 1, "different rounds pick different sites"
    other = _coordinator(20, 0.2, seed=1)
    assert [a.select(r) for r in rounds] != [other.select(r) for r in rounds]


def test_min_sites_above_the_number_of_sites() -> None:
    with pytest.raises(ValueError, match=r"strategy\.min_sites = 5 but the study has 3 sites"):
        _coordinator(3, 1.0, min_sites=5)


class _FakeSite:
    """Answers a plan with delta = +1 on every weight and counts what it was asked."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.planned: list[int] = []
        self.evaluated: list[int] = []

    def on_plan(self, plan: RoundPlan) -> Update:
        self.planned.append(plan.round)
        return Update(
            self.name, plan.round, {k: np.ones_like(v) for k, v in plan.weights.items()}, 1
        )

    def on_evaluate(self, request: EvaluateRequest) -> Evaluation:
        self.evaluated.append(request.round)
        return Evaluation(self.name, request.round, request.split, 1, {"accuracy": 1.0})

    def mark_sent(self) -> None:
        """No ledger: nothing to mark."""


def test_engine_trains_only_the_selected_sites() -> None:
    coordinator = _coordinator(6, 0.5, seed=3)
    sites = {name: _FakeSite(name) for name in coordinator.site_names}
    trained: dict[int, list[str]] = {}

    def on_round(result: object) -> None:
        r = result.round  # type: ignore[attr-defined]
        trained[r] = [u.site for u in result.replies]  # type: ignore[attr-defined]

    LocalEngine().run(coordinator, sites, 4, on_round=on_round, evaluate_every=2)  # type: ignore[arg-type]
    expected = {r: _coordinator(6, 0.5, seed=3).select(r) for r in range(1, 5)}
    assert trained == expected
    assert all(len(v) == 3 for v in trained.values())
    for name, site in sites.items():
        assert site.planned == [r for r in range(1, 5) if name in expected[r]]
        assert site.evaluated == [2, 2, 4, 4]  # val and test, every 2nd round, all sites
    np.testing.assert_array_equal(coordinator.weights["w"], [4.0])  # fedavg of +1, 4 rounds
    assert coordinator.rounds_done == 4
