"""FedLTN / LotteryFL: masked aggregation by hand, pruning to the target per layer,
normalization that never leaves the site, and the masks held through training."""

from __future__ import annotations

import doctest
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import study_text, tiny_data_section, tiny_frame, write_csv
from medsilo.data.types import SiteData
from medsilo.engines.local import LocalEngine, RoundResult
from medsilo.errors import ConfigError
from medsilo.fed import lottery, sparse
from medsilo.fed.coordinator import Coordinator
from medsilo.fed.lottery import (
    LotteryClient,
    LotteryServer,
    LotterySpec,
    SparseUpload,
    at_target,
    full_masks,
    masked_mean,
    masked_training,
    prune_step,
    server_step,
    target_count,
)
from medsilo.fed.messages import RoundPlan, TrainConfig, Update
from medsilo.fed.secure import SecAggSpec
from medsilo.fed.site import Site
from medsilo.fed.strategies import StrategySpec
from medsilo.fed.training import evaluate, get_weights, train_local
from medsilo.privacy.dpsgd import train_dpsgd
from medsilo.privacy.ledger import Ledger
from medsilo.report.rundir import RunDirectory, load_arrays
from medsilo.study.config import parse_study
from medsilo.study.run import resume_run, run_study_text
from medsilo.tasks.models import ModelSpec, build_model, normalization_keys

SPEC = ModelSpec(name="cnn", channels=(4, 8), groups=2)
CONFIG = TrainConfig(local_epochs=1, batch_size=8, lr=0.1, momentum=0.9, weight_decay=1e-3)


def _model() -> torch.nn.Module:
    return build_model(SPEC, (3, 8, 8), 3, seed=0)


def _data(seed: int = 0, n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_docstring_examples() -> None:
    assert doctest.testmod(lottery).failed == 0


def test_masked_mean_by_hand_with_a_coordinate_nobody_kept() -> None:
    """Three sites, sample weights 1, 2, 1. Coordinate by coordinate:

    c0: kept by A (1.0), B (4.0), C (7.0): (1*1 + 2*4 + 1*7) / 4 = 4.0
    c1: kept by A (2.0) and C (8.0):        (1*2 + 1*8) / 2     = 5.0
    c2: kept by B (6.0) only:               6.0
    c3: kept by nobody:                     previous value 99.0
    bias (sent whole by all):               (1*1 + 2*2 + 1*3) / 4 = 2.0
    """
    prev = {"w": np.array([[0.0, 0.0], [0.0, 99.0]], np.float32), "b": np.zeros(1, np.float32)}
    uploads = [
        ({"w": [[1.0, 2.0], [0.0, 0.0]], "b": [1.0]}, [[1, 1], [0, 0]], 1.0),
        ({"w": [[4.0, 0.0], [6.0, 0.0]], "b": [2.0]}, [[1, 0], [1, 0]], 2.0),
        ({"w": [[7.0, 8.0], [0.0, 0.0]], "b": [3.0]}, [[1, 1], [0, 0]], 1.0),
    ]
    decoded = [
        SparseUpload(
            {k: np.array(v, np.float32) for k, v in values.items()},
            {"w": np.array(mask, bool)},
            weight,
        )
        for values, mask, weight in uploads
    ]
    mean, kept = masked_mean(prev, decoded)
    assert mean["w"].tolist() == [[4.0, 5.0], [6.0, 99.0]]
    assert kept["w"].tolist() == [[True, True], [True, False]]
    assert mean["b"].tolist() == [2.0]

    # Through the wire and the coordinator's state: the same numbers, then momentum.
    spec = LotterySpec(server_momentum=0.5, server_lr=1.0)
    server = LotteryServer(spec, {k: v.copy() for k, v in prev.items()})
    payloads = [
        (site, sparse.encode(u.values, {"w": np.asarray(u.masks["w"])}), u.weight)
        for site, u in zip("ABC", decoded, strict=True)
    ]
    server.aggregate(payloads)
    assert server.weights["w"].tolist() == [[4.0, 5.0], [6.0, 99.0]]
    assert server.weights["w"].dtype == np.float32
    # Second round, same uploads: Delta = 0 where kept, so w <- w + 0.5 * m_old.
    server.aggregate(payloads)
    assert server.weights["w"].tolist() == [[6.0, 7.5], [9.0, 99.0]]
    assert server.momentum["w"][1, 1] == 0.0  # nobody kept it: untouched
    assert server.site_masks["B"]["w"].tolist() == [[True, False], [True, False]]


def test_server_step_freezes_what_nobody_kept() -> None:
    prev = {"w": np.array([1.0, 2.0])}
    w, m = server_step(
        prev, {"w": np.array([3.0, 2.0])}, {"w": np.array([True, False])}, {}, 0.9, 0.5
    )
    assert w["w"].tolist() == [2.0, 2.0] and m["w"].tolist() == [2.0, 0.0]


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.5])
def test_pruning_reaches_the_target_density_in_every_layer(rate: float) -> None:
    weights = get_weights(_model())
    keys = lottery.prunable_keys(weights, normalization_keys(_model()))
    assert keys == ("features.0.weight", "features.4.weight", "head.2.weight")
    masks = full_masks(weights, keys)
    rng = np.random.default_rng(0)
    steps = 0
    while not at_target(masks, 0.1):
        weights = {k: v + rng.normal(0, 0.01, v.shape).astype(v.dtype) for k, v in weights.items()}
        before = {k: int(m.sum()) for k, m in masks.items()}
        new = prune_step(weights, masks, rate, 0.1)
        for k, m in new.items():
            assert not (m & ~masks[k]).any()  # nothing revived
            alive = before[k]
            target = target_count(m.size, 0.1)
            assert int(m.sum()) == max(target, alive - max(1, round(rate * alive)))
            # magnitude pruning: every survivor is at least as large as every pruned one
            w = np.abs(weights[k])
            dropped = masks[k] & ~m
            if dropped.any() and m.any():
                assert w[m].min() >= w[dropped].max()
        masks = new
        steps += 1
        assert steps < 200
    for m in masks.values():
        assert int(m.sum()) == target_count(m.size, 0.1)
        assert abs(m.mean() - 0.1) <= 1 / m.size
    again = prune_step(weights, masks, rate, 0.1)  # at the target: nothing more is pruned
    assert all(np.array_equal(a, masks[k]) for k, a in again.items())


@pytest.mark.parametrize("dp", [False, True])
def test_masked_training_keeps_pruned_weights_at_zero(dp: bool) -> None:
    model = _model()
    weights = get_weights(model)
    keys = lottery.prunable_keys(weights)
    masks = prune_step(weights, full_masks(weights, keys), 0.5, 0.1)
    x, y = _data()
    with masked_training(model, masks):
        if dp:  # DP-SGD noise touches every coordinate; the mask is re-applied after
            train_dpsgd(
                model,
                x,
                y,
                sample_rate=0.5,
                steps=3,
                noise_multiplier=1.0,
                clip=1.0,
                lr=0.1,
                momentum=0.9,
                weight_decay=0.0,
                sampling_seed=1,
                noise=torch.Generator().manual_seed(2),
            )
        else:
            train_local(model, x, y, CONFIG, seed=0)
    after = get_weights(model)
    for k, m in masks.items():
        assert not after[k][~m].any()
        assert not np.array_equal(after[k][m], weights[k][m])  # it did train
    # outside the block the hook is gone: a later optimizer step is not masked
    train_local(model, x, y, CONFIG, seed=1)
    assert any(get_weights(model)[k][~m].any() for k, m in masks.items())


def _client(spec: LotterySpec) -> tuple[LotteryClient, torch.nn.Module]:
    model = _model()
    local = normalization_keys(model) if spec.local_normalization else frozenset()
    return LotteryClient(spec, get_weights(model), local), model


def _train(x: torch.Tensor, y: torch.Tensor):  # type: ignore[no-untyped-def]
    def train(model: torch.nn.Module) -> dict[str, float]:
        return {"train_loss": train_local(model, x, y, CONFIG, seed=0)}

    return train


def test_normalization_never_leaves_the_site() -> None:
    spec = LotterySpec(accuracy_threshold=0.0, prune_rate=0.5, jump_start_epochs=1)
    data = {"A": _data(1), "B": _data(2)}
    server = LotteryServer(spec, {})
    clients = {}
    for site in ("A", "B"):
        clients[site], model = _client(spec)
        clients[site].jump_start(model, _train(*data[site]), lambda m: 1.0)
    norm = normalization_keys(_model())
    assert norm == {"features.1.weight", "features.1.bias", "features.5.weight", "features.5.bias"}
    server.weights = {k: v for k, v in get_weights(_model()).items() if k not in norm}
    messages: list[bytes] = []
    for round_ in (1, 2):
        uploads = []
        for site, client in clients.items():
            down = server.download(site, round_)
            messages.append(down)
            model = _model()
            values, masks, _ = client.train_round(
                model, client.download(down), _train(*data[site]), lambda m: 1.0
            )
            up = client.upload(values, masks)
            messages.append(up)
            uploads.append((site, up, 24.0))
        server.aggregate(uploads)
    assert messages[0] == b"" and messages[2] == b""  # round 1 after Jump-Start
    for payload in messages:
        if payload:
            values, _ = sparse.decode(payload)
            assert not set(values) & norm
            assert set(values) == set(server.weights)
    # each site's own normalization trained and differs between the sites
    a, b = clients["A"].local_weights, clients["B"].local_weights
    assert set(a) == norm and any(not np.array_equal(a[k], b[k]) for k in norm)


def test_download_holds_only_the_sites_kept_coordinates() -> None:
    spec = LotterySpec(accuracy_threshold=0.0, prune_rate=0.5)
    client, model = _client(spec)
    shared = {k: v for k, v in client.initial.items() if k not in client.local_keys}
    server = LotteryServer(spec, shared)
    first = server.download("A", 1)
    assert sparse.decode(first)[1]["head.2.weight"].all()  # mask unknown: whole model
    x, y = _data()
    values, masks, metrics = client.train_round(
        model, client.download(first), _train(x, y), lambda m: 1.0
    )
    assert metrics["pruned"] == 1.0 and metrics["density"] < 0.6
    server.aggregate([("A", client.upload(values, masks), 1.0)])
    down_values, down_masks = sparse.decode(server.download("A", 2))
    for k, m in masks.items():
        assert np.array_equal(down_masks[k], m)
    assert len(server.download("A", 2)) < len(first) * 0.7
    # the personalized model: the mask on the global weights, the site's own norm layers
    personal = client.personalized(server.weights)
    for k, m in masks.items():
        assert np.array_equal(personal[k], np.where(m, server.weights[k], 0))
        assert np.array_equal(down_values[k], personal[k])
    for k in client.local_keys:
        assert np.array_equal(personal[k], client.local_weights[k])


def test_pruning_waits_for_the_accuracy_threshold() -> None:
    spec = LotterySpec(accuracy_threshold=0.9)
    client, model = _client(spec)
    x, y = _data()
    _, masks, metrics = client.train_round(model, client.initial, _train(x, y), lambda m: 0.5)
    assert metrics["pruned"] == 0.0 and all(m.all() for m in masks.values())
    _, masks, metrics = client.train_round(model, client.initial, _train(x, y), lambda m: 0.95)
    assert metrics["pruned"] == 1.0 and client.density() == pytest.approx(0.9, abs=0.01)


def test_lotteryfl_prunes_before_training_and_rewinds_to_the_initial_weights() -> None:
    spec = LotterySpec(variant="lotteryfl", accuracy_threshold=0.0, prune_rate=0.2)
    client, model = _client(spec)
    assert not client.local_keys  # shared normalization
    seen: dict[str, np.ndarray] = {}

    def train(m: torch.nn.Module) -> dict[str, float]:
        seen.update(get_weights(m))
        return {}

    global_weights = {k: v + 1.0 for k, v in client.initial.items()}
    _, masks, metrics = client.train_round(model, global_weights, train, lambda m: 1.0)
    assert metrics["pruned"] == 1.0
    for k, v in client.initial.items():
        expected = np.where(masks[k], v, 0) if k in masks else v
        assert np.array_equal(seen[k], expected), k  # rewound, not the global weights
    # FedLTN instead trains from mask * global and keeps the trained values
    fedltn, model = _client(LotterySpec(accuracy_threshold=0.0))
    fedltn.train_round(model, {k: v + 1.0 for k, v in fedltn.initial.items()}, train, lambda m: 1)
    assert np.array_equal(seen["head.2.weight"], fedltn.initial["head.2.weight"] + 1.0)


def test_jump_start_prunes_before_federation() -> None:
    spec = LotterySpec(accuracy_threshold=0.0, prune_rate=0.5, jump_start_epochs=3)
    client, model = _client(spec)
    x, y = _data()
    client.jump_start(model, _train(x, y), lambda m: evaluate(m, x, y)["accuracy"])
    assert client.prunings == 3 and client.density() < 0.2
    assert client.jump_started is not None
    for k, m in client.masks.items():
        assert not client.jump_started[k][~m].any()
    client.train_round(_model(), None, _train(x, y), lambda m: 1.0)  # from Jump-Start
    with pytest.raises(ValueError, match="Jump-Start"):  # only once
        client.train_round(_model(), None, _train(x, y), lambda m: 1.0)


def test_checkpoint_round_trip() -> None:
    spec = LotterySpec(server_momentum=0.9)
    server = LotteryServer(spec, {"w": np.ones((2, 2), np.float32)})
    up = sparse.encode({"w": np.full((2, 2), 3, np.float32)}, {"w": np.eye(2, dtype=bool)})
    server.aggregate([("A", up, 1.0)])
    again = LotteryServer(spec, {})
    again.load_state_dict(server.state_dict())
    assert np.array_equal(again.weights["w"], server.weights["w"])
    assert np.array_equal(again.momentum["w"], server.momentum["w"])
    assert np.array_equal(again.site_masks["A"]["w"], np.eye(2, dtype=bool))


def test_spec_rules() -> None:
    with pytest.raises(ValueError):
        LotterySpec(target_density=0.0)
    with pytest.raises(ValueError):
        LotterySpec(prune_rate=1.0)
    assert LotterySpec().local_normalization and LotterySpec(variant="lotteryfl").rewind


# ------------------------------------------------------------------ in the round logic


def _image_site(name: str, seed: int, n: int = 24) -> SiteData:
    g = np.random.default_rng(seed)

    def split(k: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(k) % 3
        x = g.random((k, 3, 8, 8), dtype=np.float32) + y[:, None, None, None] * 0.3
        return x.astype(np.float32), y.astype(np.int64)

    (xt, yt), (xv, yv), (xs, ys) = split(n), split(9), split(9)
    return SiteData(name, xt, yt, xv, yv, xs, ys)


def _federation(
    spec: LotterySpec, secure: bool = False, sites: int = 2
) -> tuple[Coordinator, dict[str, Site], list[dict[str, RoundPlan]]]:
    template = _model()
    initial = get_weights(template)
    local = normalization_keys(template) if spec.local_normalization else frozenset()
    data = [_image_site(f"h{i}", i) for i in range(sites)]
    site_objs = {
        d.name: Site(i, d, _model, local, seed=3, lottery=LotteryClient(spec, initial, local))
        for i, d in enumerate(data)
    }
    coordinator = Coordinator(
        {k: v for k, v in initial.items() if k not in local},
        StrategySpec(name="fedltn"),
        list(site_objs),
        TrainConfig(local_epochs=1, batch_size=8, lr=0.05),
        seed=3,
        secagg=SecAggSpec(enabled=secure, clip=10.0),
        lottery=spec,
    )
    registry = {name: s.verify_key for name, s in site_objs.items()}
    coordinator.verify_keys = dict(registry)
    for s in site_objs.values():
        s.verify_keys = dict(registry)
    plans: list[dict[str, RoundPlan]] = []
    plan = coordinator.plan

    def recording_plan(round_: int) -> dict[str, RoundPlan]:
        plans.append(plan(round_))
        return plans[-1]

    coordinator.plan = recording_plan  # type: ignore[method-assign]
    return coordinator, site_objs, plans


def test_site_and_coordinator_send_no_normalization_and_count_exact_bytes() -> None:
    spec = LotterySpec(accuracy_threshold=0.0, prune_rate=0.3, jump_start_epochs=2)
    coordinator, sites, plans = _federation(spec)
    norm = normalization_keys(_model())
    rounds: list[RoundResult] = []

    def on_round(result: RoundResult) -> None:
        rounds.append(result)
        updates = [u for u in result.replies if isinstance(u, Update)]
        assert coordinator.traffic["bytes_up"] == sum(len(u.sparse or b"") for u in updates)
        down = sum(len(p.sparse or b"") for p in plans[-1].values())
        assert coordinator.traffic["bytes_down"] == down

    LocalEngine().run(coordinator, sites, 3, on_round=on_round, splits=("test",))
    assert [len(p.sparse or b"") for p in plans[0].values()] == [0, 0]  # Jump-Start
    for round_plans in plans:
        for p in round_plans.values():
            assert dict(p.weights) == {}
            if p.sparse:
                assert not set(sparse.decode(p.sparse)[0]) & norm
    for result in rounds:
        for u in result.replies:
            assert isinstance(u, Update) and dict(u.delta) == {} and u.sparse is not None
            values, masks = sparse.decode(u.sparse)
            assert not set(values) & norm and set(values) == set(coordinator.weights)
            assert masks["head.2.weight"].mean() < 1.0
    # every site's personalized model is what it evaluated
    for name, site in sites.items():
        assert set(site.state_dict()) >= {f"lottery/mask/{k}" for k in site.lottery.masks}
        assert site.local_weights.keys() == norm
        evaluation = site.on_evaluate(coordinator.evaluate_request("test"))
        assert evaluation.metrics == rounds[-1].evaluations[list(sites).index(name)].metrics


def test_secure_aggregation_gives_the_masked_mean_and_hides_the_masks() -> None:
    """Common support = the whole model: each site sends its masked delta and its masks
    inside the secure sum; the coordinator learns the per-coordinate mean and how many
    sites kept each coordinate, never a site's mask or values. Same result (up to
    quantization) as the clear path when the sites hold equal sample counts."""
    spec = LotterySpec(accuracy_threshold=0.0, prune_rate=0.5, server_momentum=0.5)
    clear, clear_sites, _ = _federation(spec, secure=False, sites=3)
    LocalEngine().run(clear, clear_sites, 1, evaluate_every=0, splits=())
    secure, secure_sites, plans = _federation(spec, secure=True, sites=3)
    replies: list[Update] = []
    LocalEngine().run(
        secure,
        secure_sites,
        1,
        on_round=lambda r: replies.extend(u for u in r.replies if isinstance(u, Update)),
        evaluate_every=0,
        splits=(),
    )
    assert all(u.masked and u.sparse is None and dict(u.delta) == {} for u in replies)
    assert all(p.sparse is None and dict(p.weights) for p in plans[0].values())
    assert secure.lottery is not None and secure.lottery.site_masks == {}
    assert secure.secagg_log["survivors"] == ["h0", "h1", "h2"]
    for k, v in clear.weights.items():
        np.testing.assert_allclose(secure.weights[k], v, atol=1e-6)
    for name, site in secure_sites.items():  # the sites pruned the same way
        for k, m in site.lottery.masks.items():
            assert np.array_equal(m, clear_sites[name].lottery.masks[k])


def test_fedltn_study_from_toml_with_dp_records_exact_payload_sizes(tmp_path: Path) -> None:
    """``[strategy] name = "fedltn"`` + ``[lottery]`` in a study file with local DP: the
    ledger records each release with the exact size of the sparse payload that left, and
    the validation accuracy (which DP-SGD does not protect) stays at the site."""
    write_csv(tmp_path / "data.csv", tiny_frame())
    text = study_text(tiny_data_section(), rounds=3, evaluate_every=0, extra=FEDLTN + DP)
    sent: list[bytes] = []
    original = Site._lottery_round

    def spy(self: Site, plan: RoundPlan, client: LotteryClient) -> Update:
        update = original(self, plan, client)
        if self.name == "A":
            sent.append(update.sparse or b"")
        return update

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Site, "_lottery_round", spy)
        result = run_study_text(text, out=tmp_path / "run", base_dir=tmp_path)
    with Ledger.open(tmp_path / "run" / "sites" / "A") as ledger:
        releases = ledger.releases()
    assert [e.payload_bytes for e in releases] == [len(p) for p in sent] and len(sent) == 3
    assert all(e.payload_bytes > 0 for e in releases)
    history = result.history
    trains = history[history["kind"] == "train"]
    assert "val_accuracy" not in trains.columns or trains["val_accuracy"].isna().all()
    assert "epsilon" in trains and trains["density"].iloc[-1] < 1.0
    rounds = history[history["kind"] == "round"]
    assert (rounds["bytes_up"] < rounds["dense_bytes_up"]).iloc[1:].all()


def test_fedltn_with_secure_aggregation_dp_and_fine_tuning_in_a_study(tmp_path: Path) -> None:
    """All together from one study file: each release in the ledger is the masked input
    (deltas and masks over the whole model, float64), the coordinator never learns a
    mask, the upload counted is the three sites' masked vectors (32-bit elements), and the
    fine-tune is release R + 1."""
    write_csv(tmp_path / "data.csv", tiny_frame())
    extra = FEDLTN + DP + "[secure_aggregation]\nenabled = true\nclip = 2.0\n"
    extra += "[personalization]\nfine_tune_epochs = 1\n"
    text = study_text(tiny_data_section(), rounds=2, evaluate_every=0, extra=extra)
    result = run_study_text(text, out=tmp_path / "run", base_dir=tmp_path)
    model = load_arrays(tmp_path / "run" / "final_model.npz")
    weights = [v for k, v in model.items() if k.startswith("global/")]
    shared = sum(v.size for v in weights)
    prunable = sum(v.size for v in weights if v.ndim == 2)  # masks ride along
    with Ledger.open(tmp_path / "run" / "sites" / "A") as ledger:
        sizes = [e.payload_bytes for e in ledger.releases()]
    assert sizes == [8 * (shared + prunable)] * 2 + [0]
    rounds = result.history[result.history["kind"] == "round"]
    assert (rounds["bytes_up"] == 3 * 4 * (shared + prunable)).all()
    assert (rounds["bytes_down"] == rounds["dense_bytes_down"]).all()
    assert set(result.per_site["setting"]) == {"federated", "fine_tuned"}


def test_fedltn_study_resumes_exactly(tmp_path: Path) -> None:
    """A FedLTN run (Jump-Start, momentum, masks) interrupted after round 2 and resumed
    ends with the uninterrupted run's weights, masks, local layers and metrics."""
    write_csv(tmp_path / "data.csv", tiny_frame())
    text = study_text(
        tiny_data_section(),
        rounds=4,
        evaluate_every=2,
        extra=FEDLTN + "jump_start_epochs = 2\n[baselines]\nlocal_only = false\npooled = false\n",
    )
    run_study_text(text, out=tmp_path / "ref", base_dir=tmp_path)
    original = RunDirectory.save_checkpoint

    def interrupt(self: RunDirectory, arrays: Any, rounds_completed: int) -> None:
        original(self, arrays, rounds_completed)
        if rounds_completed == 2:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RunDirectory, "save_checkpoint", interrupt)
        with pytest.raises(KeyboardInterrupt):
            run_study_text(text, out=tmp_path / "run", base_dir=tmp_path)
    resume_run(tmp_path / "run")
    a = load_arrays(tmp_path / "ref" / "final_model.npz")
    b = load_arrays(tmp_path / "run" / "final_model.npz")
    assert a.keys() == b.keys() and any(k.startswith("local/A/lottery/mask/") for k in a)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    drop = {"seconds"}
    ref = [
        {k: v for k, v in r.items() if k not in drop}
        for r in RunDirectory(tmp_path / "ref").records()
    ]
    run = [
        {k: v for k, v in r.items() if k not in drop}
        for r in RunDirectory(tmp_path / "run").records()
    ]
    assert ref == run


FEDLTN = """
[model]
name = "mlp"
hidden = [16]
[train]
batch_size = 8
lr = 0.1
[strategy]
name = "fedltn"
[lottery]
target_density = 0.3
prune_rate = 0.3
accuracy_threshold = 0.0
server_momentum = 0.5
"""

DP = """
[privacy]
mode = "local"
clip = 1.0
noise_multiplier = 1.0
delta = 1e-4
[baselines]
local_only = false
pooled = false
"""


@pytest.mark.parametrize(
    "extra, field",
    [
        ("[lottery]\ntarget_density = 0.2\n", "lottery"),
        ('[strategy]\nname = "fedltn"\n[lottery]\ntarget_density = 0.0\n', "lottery.target"),
        (
            '[strategy]\nname = "fedltn"\n[privacy]\nmode = "local"\nclip = 1.0\n'
            "noise_multiplier = 1.0\ndelta = 1e-4\n",
            "lottery.accuracy_threshold",
        ),
        (
            '[strategy]\nname = "fedltn"\n[lottery]\naccuracy_threshold = 0.0\n'
            'jump_start_epochs = 2\n[privacy]\nmode = "local"\nclip = 1.0\n'
            "noise_multiplier = 1.0\ndelta = 1e-4\n",
            "lottery.jump_start_epochs",
        ),
        (
            '[strategy]\nname = "fedltn"\n[privacy]\nmode = "central"\nunit = "site"\n'
            "clip = 1.0\nnoise_multiplier = 1.0\ndelta = 1e-4\n",
            "strategy.name",
        ),
    ],
)
def test_bad_lottery_studies_name_the_field(extra: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_study(study_text('dataset = "heart"', extra=extra))
