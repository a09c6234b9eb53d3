"""The SuperLink patches of ``medsilo.engines.flower_runtime`` in one process: scoped
middleware (a layer is skipped only where it does nothing), serialized SQLite sessions,
the throttled token sweep. The processes themselves run in test_flower_e2e (opt-in)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware

from medsilo.engines import flower_runtime
from medsilo.engines.flower_runtime import Scoped


def test_a_scoped_layer_runs_only_where_it_applies() -> None:
    seen: list[str] = []

    async def record(request: Any, call_next: Any) -> Any:
        seen.append(request.url.path)
        response = await call_next(request)
        response.headers["x-layer"] = "yes"
        return response

    layer = Middleware(BaseHTTPMiddleware, dispatch=record)
    only_fleet = Middleware(Scoped, layer, lambda scope: scope["path"].startswith("/v1/fleet/"))
    app = FastAPI(middleware=[only_fleet])

    @app.post("/v1/fleet/pull")
    def fleet() -> dict[str, str]:
        return {"api": "fleet"}

    @app.post("/v1/runtime/pull")
    def runtime() -> dict[str, str]:
        return {"api": "runtime"}

    with TestClient(app) as client:
        fleet_reply = client.post("/v1/fleet/pull")
        runtime_reply = client.post("/v1/runtime/pull")
    assert fleet_reply.json() == {"api": "fleet"} and fleet_reply.headers["x-layer"] == "yes"
    assert runtime_reply.json() == {"api": "runtime"} and "x-layer" not in runtime_reply.headers
    assert seen == ["/v1/fleet/pull"]


def test_superlink_layers_are_scoped_to_their_own_api(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.superlink import main
    from flwr.superlink.routers.fleet.node_auth import NodeAuthMiddleware

    monkeypatch.setattr(main, "_get_middleware", main._get_middleware)  # restored after
    flower = main._get_middleware()
    flower_runtime.scoped_middleware()
    flower_runtime.scoped_middleware()  # once only
    ours = main._get_middleware()
    assert len(ours) == len(flower) == 9
    scoped = {m.args[0].cls: m.args[1] for m in ours if m.cls is Scoped}
    assert len(scoped) == 7  # error translation and protobuf translation apply to all
    fleet = {"type": "http", "path": "/v1/fleet/push-object"}
    runtime = {"type": "http", "path": "/v1/runtime/pull-messages"}
    control = {"type": "http", "path": "/v1/control/list-runs"}
    assert scoped[NodeAuthMiddleware](fleet) and not scoped[NodeAuthMiddleware](runtime)
    assert [name.__name__ for name, ok in scoped.items() if ok(control)] == [
        "ControlSensitiveResponseMiddleware",
        "ControlAuthenticationMiddleware",
        "ControlLicenseMiddleware",
        "ControlEventLogMiddleware",
    ]
    monkeypatch.setenv("FLWR_TRACING_ENABLED", "1")
    assert [name.__name__ for name, ok in scoped.items() if ok(runtime)] == [
        "RuntimeTracingMiddleware"
    ]


def test_supernode_tracing_layer_is_scoped(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supernode import main

    monkeypatch.setattr(main, "RuntimeTracingMiddleware", main.RuntimeTracingMiddleware)
    flower_runtime.scoped_node_tracing()
    flower_runtime.scoped_node_tracing()  # once only
    layers = [m.cls for m in main.create_app().user_middleware]
    (tracing,) = [c for c in layers if getattr(c, "func", None) is Scoped]
    assert tracing.keywords["middleware"].cls.__name__ == "RuntimeTracingMiddleware"
    assert tracing.keywords["applies"] is flower_runtime.tracing_enabled


class FakeState:
    def __init__(self) -> None:
        self.inside = 0
        self.overlaps = 0
        self.sweeps = 0

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        self.inside += 1
        self.overlaps += self.inside > 1
        time.sleep(0.002)
        yield
        self.inside -= 1

    def sweep(self) -> None:
        self.sweeps += 1


def test_sessions_are_serialized_and_reentrant() -> None:
    class State(FakeState):
        pass

    flower_runtime.serialized_sessions(State)
    flower_runtime.serialized_sessions(State)  # wrapped once
    state = State()
    with state.session(), state.session():  # nested in one thread: no deadlock
        pass
    state.overlaps = 0

    def work() -> None:
        for _ in range(10):
            with state.session():
                pass

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert state.overlaps == 0 and state.inside == 0


def test_throttled_method_runs_at_most_once_per_period() -> None:
    class State(FakeState):
        pass

    flower_runtime.throttled(State, "sweep", 0.2)
    one, two = State(), State()
    for _ in range(50):
        one.sweep()
    two.sweep()
    assert (one.sweeps, two.sweeps) == (1, 1)
    time.sleep(0.25)
    one.sweep()
    assert one.sweeps == 2


class Clock:
    """``time`` for :class:`Backoff`: sleeping advances the clock, and is recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_backoff_sleeps_through_the_expected_quiet_stretch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr(flower_runtime, "time", clock)
    backoff = flower_runtime.Backoff(0.025, 0.2, anticipate=0.6)
    backoff.quiet()  # nothing learnt yet: fast polls doubling up to the cap
    for _ in range(5):
        backoff.wait()
    assert clock.slept == [0.025, 0.05, 0.1, 0.2, 0.2]
    clock.now = 1.0
    backoff.reset()  # the stretch lasted 1 s
    backoff.quiet()
    clock.slept.clear()
    backoff.wait()  # sleeps to 0.6 s into the stretch, then polls fast again
    backoff.wait()
    backoff.wait()
    assert clock.slept == [0.6, 0.025, 0.05]
    for stretch in (0.2, 1.0):  # the shortest of the last three counts
        backoff.quiet()
        clock.now += stretch
        backoff.reset()
    backoff.quiet()
    clock.slept.clear()
    backoff.wait(longest=0.05)  # capped by the caller's deadline
    backoff.wait()  # the rest of the anticipated 0.12 s
    backoff.wait()
    assert clock.slept == [0.05, 0.07, 0.025]
    backoff.reset()  # activity without a quiet stretch: nothing anticipated
    clock.slept.clear()
    backoff.wait()
    assert clock.slept == [0.025]
