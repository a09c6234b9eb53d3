"""The flower engine in one process: medsilo messages through Flower's wire format
(deflated to bytes and inflated again, large arrays in 5 MiB chunks), the engine and the
ServerApp's ``coordinate`` over an in-memory Grid, Sites built from SITE.toml, dropouts,
and the ledger's replay guard. The real multi-process deployment is in test_flower_e2e."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message, RecordDict
from flwr.app.message.arraychunk import ArrayChunk
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.task_identity import TaskIdentity

from medsilo.engines import wire
from medsilo.engines.flower import ReplayLedger, SiteService
from medsilo.errors import ConfigError
from medsilo.fed.messages import EvaluateRequest, Refusal, RoundPlan, TrainConfig, Update
from medsilo.fed.secure import SecAggRound
from medsilo.privacy.events import DpSgdEvent
from medsilo.privacy.ledger import Budget, Ledger, Release
from medsilo.report.rundir import MODEL_FILE, RunDirectory, load_arrays
from medsilo.report.summary import privacy_table
from medsilo.secagg.quantize import Quantizer
from medsilo.study.deploy import build_site, coordinate
from medsilo.study.run import run_study_text
from medsilo.study.site_config import parse_site

SITES = ("cleveland", "hungary", "va")
DATA = 'dataset = "heart"\nsites = ["cleveland", "hungary", "va"]\ntest_fraction = 0.3'
STUDY = f"""
[study]
seed = 1
rounds = 2
evaluate_every = 1

[data]
{DATA}

[train]
batch_size = 16
lr = 0.05

[secure_aggregation]
enabled = true
clip = 0.05
dropout_rate = 0.4

[baselines]
local_only = false
pooled = false

[engine]
name = "{{engine}}"
sites = ["cleveland", "hungary", "va"]
train_timeout = 1
secagg_timeout = 1
evaluate_timeout = 1
"""


def over_the_wire(content: RecordDict) -> RecordDict:
    """Deflate every object of a record to bytes and inflate the record again."""
    objects = get_all_nested_objects(content)
    contents = {oid: obj.deflate() for oid, obj in objects.items()}
    rebuilt = inflate_object_from_contents(content.object_id, contents)
    assert isinstance(rebuilt, RecordDict)
    return rebuilt


def test_round_messages_survive_the_wire() -> None:
    weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.float32(0.5)}
    weights = {k: np.asarray(v) for k, v in weights.items()}
    plan = RoundPlan(
        4,
        weights,
        TrainConfig(2, 16, 0.1, momentum=0.9, proximal_mu=0.01),
        SecAggRound(Quantizer(0.05, 3, 32, 2.0**20), ("b", "w"), ()),
        b"\x00sparse\xff",
    )
    got = wire.decode(wire.unpack(over_the_wire(wire.pack(wire.encode(plan)))))
    assert isinstance(got, RoundPlan)
    assert (got.round, got.config, got.secagg, got.sparse) == (
        plan.round,
        plan.config,
        plan.secagg,
        plan.sparse,
    )
    for key, value in weights.items():  # dtype and shape kept, 0-d included
        assert got.weights[key].dtype == value.dtype and got.weights[key].shape == value.shape
        np.testing.assert_array_equal(got.weights[key], value)
    for message in (
        Update("va", 4, {"w": weights["w"]}, 110, {"epsilon": 1.5}, masked=False),
        Refusal("va", 4, "privacy budget"),
        EvaluateRequest(4, weights, "test"),
    ):
        back = wire.decode(wire.unpack(over_the_wire(wire.pack(wire.encode(message)))))
        assert type(back) is type(message)
        assert wire.encode(back).keys() == wire.encode(message).keys()


def test_large_arrays_travel_in_chunks_of_at_most_5_mib() -> None:
    big = np.random.default_rng(0).standard_normal(3_000_000).astype(np.float32)  # 12 MB
    content = wire.pack({"weights": {"big": big}, "blob": big.tobytes()[:7_000_000]})
    chunks = [o for o in get_all_nested_objects(content).values() if isinstance(o, ArrayChunk)]
    assert len(chunks) == -(-(12_000_000 + 7_000_000) // (5 * 2**20))  # one buffer, 5 MiB pieces
    assert max(len(c.deflate()) for c in chunks) <= 5 * 2**20 + 1024
    tree = wire.unpack(over_the_wire(content))
    np.testing.assert_array_equal(tree["weights"]["big"], big)
    assert tree["blob"] == big.tobytes()[:7_000_000]


def test_one_message_is_a_handful_of_flower_objects() -> None:
    """Every array and bytes value shares one buffer, next to the skeleton while it fits
    in one Flower chunk: Flower moves each object with its own HTTP request, and a
    secure-aggregation stage carries dozens of small values."""
    tree = {"keys": [bytes([i]) * 32 for i in range(40)], "w": np.ones((3, 4), np.float32)}
    objects = get_all_nested_objects(wire.pack(tree))
    assert len(objects) == 2  # record dict, one config record (skeleton and buffer)
    back = wire.unpack(over_the_wire(wire.pack(tree)))
    assert back["keys"] == tree["keys"] and back["w"].dtype == np.float32
    model = {"w": np.ones(wire.INLINE_LIMIT // 4 - 1024, np.float32)}  # just under 5 MiB
    assert len(get_all_nested_objects(wire.pack(model))) == 2
    model = {"w": np.ones(wire.INLINE_LIMIT // 4 + 1, np.float32)}  # past it: chunked
    content = wire.pack(model)
    assert wire.BUFFER not in content.config_records[wire.SKELETON]
    np.testing.assert_array_equal(wire.unpack(over_the_wire(content))["w"], model["w"])


def test_malformed_records_are_refused() -> None:
    with pytest.raises(wire.WireError, match="not a medsilo message"):
        wire.unpack(RecordDict())
    content = wire.pack({"w": np.zeros(4, np.float32)})
    content.config_records[wire.SKELETON][wire.BUFFER] = "not bytes"
    with pytest.raises(wire.WireError, match="buffer is not bytes"):
        wire.unpack(content)
    content = wire.pack({"w": np.zeros(4, np.float32)})
    skeleton = content.config_records[wire.SKELETON][wire.SKELETON]
    for bad in (skeleton.replace("[0, 16]", "[8, 16]"), skeleton.replace("<f4", "|O")):
        content.config_records[wire.SKELETON][wire.SKELETON] = bad
        with pytest.raises(wire.WireError, match="malformed"):
            wire.unpack(content)
    with pytest.raises(wire.WireError, match="unknown message kind"):
        wire.decode({"kind": "Pickle"})
    with pytest.raises(wire.WireError, match="malformed Update"):
        wire.decode({"kind": "Update", "site": "va"})


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    """A ServerApp process knows its run and node; Flower's Message needs them."""
    saved = {k: getattr(TaskIdentity, k) for k in ("_run_id", "_node_id", "_task_id")}
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 1
    yield
    for key, value in saved.items():
        setattr(TaskIdentity, key, value)


class MemoryGrid:
    """Flower's Grid API (get_node_ids, push_messages, pull_messages) in memory: every
    message and reply goes through :func:`over_the_wire`; nodes in ``silent`` never
    answer (a site that dropped out)."""

    def __init__(self, services: dict[int, SiteService]) -> None:
        self.services = services
        self.silent: set[int] = set()
        self.replies: dict[str, Any] = {}
        self.ids = (f"m{i}" for i in itertools.count())

    def get_node_ids(self) -> list[int]:
        return list(self.services)

    def push_messages(self, messages: list[Message]) -> list[str]:
        out = []
        for message in messages:
            mid = next(self.ids)
            node = message.metadata.dst_node_id
            if node not in self.silent:
                reply = self.services[node].handle(over_the_wire(message.content))
                self.replies[mid] = Message(over_the_wire(reply), reply_to=_sent(message, mid))
            out.append(mid)
        return out

    def pull_messages(self, ids: list[str]) -> list[Message]:
        return [self.replies.pop(i) for i in ids if i in self.replies]


def _sent(message: Message, mid: str) -> Message:
    message.metadata.__dict__["_message_id"] = mid
    return message


def site_services(tmp_path: Path) -> dict[int, SiteService]:
    services = {}
    for node, name in zip((11, 22, 33), SITES, strict=True):
        text = (
            f'[site]\nname = "{name}"\nstate_dir = "{tmp_path / name}"\n\n[data]\n{DATA}\n\n'
            '[superlink]\naddress = "127.0.0.1:9092"\ninsecure = true\n'
        )
        config = parse_site(text, "site.toml")
        services[node] = SiteService(lambda study, c=config: build_site(c, study))  # type: ignore[misc]
    return services


def test_coordinate_over_flower_messages_equals_local_engine(tmp_path: Path) -> None:
    study = tmp_path / "study.toml"
    study.write_text(STUDY.format(engine="flower"))
    grid = MemoryGrid(site_services(tmp_path / "sites"))
    run_dir = coordinate(grid, study, tmp_path / "flower", poll=0.001)
    run_study_text(STUDY.format(engine="local"), tmp_path / "local")
    flower = load_arrays(run_dir.path / MODEL_FILE)
    local = load_arrays(tmp_path / "local" / MODEL_FILE)
    assert flower.keys() == {k for k in local if k.startswith("global/")}
    for key, value in flower.items():
        np.testing.assert_array_equal(value, local[key], err_msg=key)
    evals = [r for r in run_dir.records() if r.get("kind") == "eval"]
    local_evals = [
        r for r in RunDirectory.open(tmp_path / "local").records() if r.get("kind") == "eval"
    ]
    assert [(r["site"], r["split"], r["accuracy"]) for r in evals] == [
        (r["site"], r["split"], r["accuracy"]) for r in local_evals
    ]
    assert run_dir.meta["status"] == "completed"
    assert (run_dir.path / "report.html").is_file()


def test_a_site_that_stops_answering_is_dropped_and_secure_aggregation_recovers(
    tmp_path: Path,
) -> None:
    study = tmp_path / "study.toml"
    study.write_text(STUDY.format(engine="flower"))
    grid = MemoryGrid(site_services(tmp_path / "sites"))
    original = grid.push_messages
    pushed = itertools.count()

    def push(messages: list[Message]) -> list[str]:
        if next(pushed) == 9:  # round 2's first secure-aggregation stage: va goes silent
            grid.silent.add(33)
        return original(messages)

    grid.push_messages = push  # type: ignore[method-assign]
    run_dir = coordinate(grid, study, tmp_path / "run", poll=0.001)
    rounds = [r for r in run_dir.records() if r.get("kind") == "round"]
    assert rounds[1]["aggregated"]
    assert rounds[1]["secagg"]["survivors"] == ["cleveland", "hungary"]
    assert any("site 'va' dropped" in e for e in run_dir.meta["flower_events"])


def test_a_site_not_in_the_study_is_refused(tmp_path: Path) -> None:
    text = (
        f'[site]\nname = "boston"\nstate_dir = "{tmp_path}"\n\n[data]\n{DATA}\n\n'
        '[superlink]\naddress = "127.0.0.1:9092"\ninsecure = true\n'
    )
    with pytest.raises(ConfigError, match="'boston' is not a site"):
        build_site(parse_site(text), STUDY.format(engine="flower"))


def test_site_file_needs_tls_unless_insecure() -> None:
    text = f'[site]\nname = "va"\n\n[data]\n{DATA}\n\n[superlink]\naddress = "x:1"\n'
    with pytest.raises(ConfigError, match="root_certificates"):
        parse_site(text, "site.toml")
    with pytest.raises(ConfigError, match=r"superlink\.address"):
        parse_site(text.replace('"x:1"', '"no-port"') + "insecure = true\n", "site.toml")


def test_replayed_identical_release_is_recorded_once(tmp_path: Path) -> None:
    event = DpSgdEvent(sample_rate=0.1, noise_multiplier=1.0, steps=10)
    with Ledger.open(tmp_path / "va", site="va", budget=Budget(10.0, 1e-5)) as opened:
        ledger = ReplayLedger.guard(opened)
        first = ledger.record(Release.of_payload(round=1, event=event, clip=1.0, payload=b"u1"))
        again = ledger.record(Release.of_payload(round=1, event=event, clip=1.0, payload=b"u1"))
        other = ledger.record(Release.of_payload(round=1, event=event, clip=1.0, payload=b"u2"))
        assert again == first and other.seq > first.seq
        assert len(opened.releases()) == 2


def test_privacy_table_of_a_deployed_run_says_the_ledgers_are_at_the_sites(
    tmp_path: Path,
) -> None:
    plan = {
        "noise_multiplier": 1.5,
        "sample_rate": 0.1,
        "steps_per_round": 10,
        "planned_epsilon": 3.0,
    }
    privacy = {
        "mode": "local",
        "unit": "record",
        "clip": 1.0,
        "delta": 1e-5,
        "accountant": "rdp",
        "sites": {"va": plan},
        "ledgers": "held by each site (SITE.toml state_dir), never sent",
    }
    run_dir = RunDirectory.create(tmp_path / "run", "", {"privacy": privacy})
    run_dir.append_records(
        [
            {"round": 1, "kind": "train", "site": "va", "epsilon": 1.2},
            {"round": 2, "kind": "train", "site": "va", "epsilon": 1.9},
        ]
    )
    (row,) = privacy_table(run_dir).to_dict("records")
    assert row["ledger"].startswith("held at the site")
    assert (row["releases"], row["epsilon_spent"], row["planned_epsilon"]) == (2, 1.9, 3.0)
