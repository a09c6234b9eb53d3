"""The Flower 1.41 processes medsilo starts (SuperLink, SuperNode) with shorter waits.

Kept apart from :mod:`medsilo.engines.flower` so that these processes do not import
torch and medsilo's federated code (about 0.3 GB and seconds of imports each): a
SuperNode only relays messages to the site's warm process. Every function here patches
Flower 1.41 internals where no option exists; flwr is pinned to 1.41.0.
"""

from __future__ import annotations

import collections
import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


class Backoff:
    """Polling delays: ``fast`` right after activity, doubling while idle up to ``slow``
    (fast during a round's stages, cheap for the SuperLink between rounds).

    With ``anticipate`` > 0 it also learns how long the quiet stretches between messages
    last: a stretch starts at :meth:`quiet` (a reply was sent, a stage pushed) and ends
    at :meth:`reset` (the next message came). The first wait of a stretch then sleeps
    until ``anticipate`` times the shortest of the last three stretches has passed, and
    only then polls, fast: the polls gather around the moment the next message is due
    instead of being spent while none can come (a round's rhythm repeats; the shortest
    of three keeps one slow round from delaying the next)."""

    def __init__(self, fast: float = 0.005, slow: float = 0.2, anticipate: float = 0.0) -> None:
        self.fast, self.slow, self.idle = fast, slow, 0
        self.anticipate = anticipate
        self.stretches: collections.deque[float] = collections.deque(maxlen=3)
        self.quiet_since: float | None = None

    def quiet(self) -> None:
        """A quiet stretch begins: nothing is expected right away."""
        self.quiet_since = time.monotonic()
        self.idle = 0

    def reset(self) -> None:
        """Activity: poll fast again (and learn the stretch that just ended)."""
        if self.quiet_since is not None:
            self.stretches.append(time.monotonic() - self.quiet_since)
            self.quiet_since = None
        self.idle = 0

    def wait(self, longest: float = float("inf")) -> None:
        """Sleep before the next poll (never more than ``longest`` seconds)."""
        if self.idle == 0 and self.anticipate > 0 and self.quiet_since is not None:
            due = self.anticipate * min(self.stretches, default=0.0)
            ahead = due - (time.monotonic() - self.quiet_since)
            if ahead > self.fast:
                time.sleep(min(ahead, longest))
                return  # the next wait polls fast (``ahead`` has passed)
        time.sleep(min(self.slow, self.fast * 2.0 ** min(self.idle, 16), longest))
        self.idle += 1


def fast_object_pulls(module: Any, name: str = "pull_objects", initial: float = 0.005) -> None:
    """Flower 1.41 pulls a message's objects with retries that start at 1 s and double
    (``PULL_INITIAL_BACKOFF``): a message whose objects are still being uploaded costs a
    second or more. Start at ``initial`` seconds, cap at 0.2 s, in ``module`` (Flower's
    Grid, SuperNode or ClientApp runtime)."""
    pull = getattr(module, name)
    if not isinstance(pull, functools.partial):
        setattr(module, name, functools.partial(pull, initial_backoff=initial, backoff_cap=0.2))


def run_supernode(
    argv: Sequence[str],
    fast: float = 0.025,
    slow: float = 0.2,
    reconnect: float = 2.0,
    anticipate: float = 0.6,
) -> None:
    """``flower-supernode ARGV`` with shorter waits in Flower 1.41's
    ``start_client_internal``: its idle poll of the SuperLink (3 s) backs off from
    ``fast`` to ``slow`` (each poll is an HTTPS request the SuperLink answers with a
    database write; the next message never comes within 25 ms of a reply), after
    sleeping through the first ``anticipate`` share of the expected quiet stretch
    (:class:`Backoff`), and its
    waits for the ClientApp's reply and its objects (0.5 s, a look at its own memory)
    back off from 5 ms to 50 ms (a 5 ms spin would take CPU from the training).
    While the SuperLink is down (a coordinator restart) the SuperNode retries with
    exponential backoff capped at ``reconnect`` seconds instead of 20 s
    (``MAX_RETRY_DELAY``; ``--max-retries`` / ``--max-wait-time`` bound the tries, not
    the delay), so it is back within seconds of the SuperLink; refused activation (its
    key not registered *yet*: the coordinator registers keys once its SuperLink is up)
    is retried like a connection error."""
    import types

    from flwr.supercore.error import ApiErrorCode, FlowerError
    from flwr.supercore.retry import http_retry
    from flwr.supernode import fleet_http_connection, start_client_internal
    from flwr.supernode.cli.flower_supernode import flower_supernode

    setattr(http_retry, "MAX_RETRY_DELAY", reconnect)  # noqa: B010
    make_invoker = getattr(fleet_http_connection, "make_simple_http_retry_invoker")  # noqa: B009

    def invoker_waiting_for_registration() -> Any:
        # a SuperNode that reaches the SuperLink before the coordinator registered its
        # key is refused activation (HTTP 412): try again (``--max-retries`` bounds it)
        invoker = make_invoker()
        flower_giveup = invoker.should_giveup

        def giveup(exc: Exception) -> bool:
            error = FlowerError.from_json(getattr(getattr(exc, "response", None), "text", None))
            if error is not None and error.code == ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED:
                return False
            return flower_giveup is not None and flower_giveup(exc)

        invoker.should_giveup = giveup
        return invoker

    setattr(  # noqa: B010
        fleet_http_connection, "make_simple_http_retry_invoker", invoker_waiting_for_registration
    )

    backoff = Backoff(fast, slow, anticipate)
    busy = Backoff(0.005, 0.05)
    processing = [False]

    def sleep(seconds: float) -> None:
        if seconds >= 1:  # nothing to pull: back off
            if processing[0]:  # the reply has just been sent: a quiet stretch begins
                processing[0] = False
                backoff.quiet()
            busy.reset()
            backoff.wait()
        else:  # a message is being processed: look again soon, without spinning
            if not processing[0]:
                processing[0] = True
                backoff.reset()
            busy.wait()

    fast_object_pulls(start_client_internal)
    scoped_node_tracing()
    shim = types.SimpleNamespace(**vars(time))
    shim.sleep = sleep
    setattr(start_client_internal, "time", shim)  # noqa: B010
    sys.argv = ["flower-supernode", *argv]
    flower_supernode()


def serialized_sessions(mixin: Any) -> None:
    """One SQLite transaction at a time in this process (Flower 1.41
    ``flwr/supercore/sql_mixin.py``, ``SqlMixin.session``, wrapped).

    The SuperLink answers each HTTP request in a thread of its pool, and each opens its
    own SQLite connection; concurrent writers collide on the database lock, and
    SQLite's busy handler (``busy_timeout``) then *sleeps* 1, 2, 5, 10, ... 100 ms
    before trying again. A process-wide lock queues them instead: a waiting request
    wakes the moment the transaction before it commits. (Python runs one thread at a
    time anyway; only the SQLite waits are lost.) Re-entrant, as Flower nests sessions
    of one database in one thread."""
    import contextlib
    import threading

    session = mixin.session
    if getattr(session, "medsilo_serialized", False):
        return
    lock = threading.RLock()

    @contextlib.contextmanager
    def serialized(self: Any) -> Any:
        with lock, session(self) as opened:
            yield opened

    serialized.medsilo_serialized = True  # type: ignore[attr-defined]
    mixin.session = serialized


def throttled(cls: Any, name: str, every: float) -> None:
    """Run method ``name`` of ``cls`` (no arguments) at most once per ``every`` seconds
    per instance; calls in between return at once."""
    method = getattr(cls, name)
    if getattr(method, "medsilo_throttled", False):
        return
    last: dict[int, float] = {}

    @functools.wraps(method)
    def wrapper(self: Any) -> None:
        now = time.monotonic()
        if now - last.get(id(self), -float("inf")) < every:
            return
        last[id(self)] = now
        method(self)

    wrapper.medsilo_throttled = True  # type: ignore[attr-defined]
    setattr(cls, name, wrapper)


class Scoped:
    """An ASGI middleware that applies ``middleware`` only to requests for which
    ``applies(scope)`` holds and hands every other request straight to ``app``."""

    def __init__(self, app: Any, middleware: Any, applies: Callable[[Any], bool]) -> None:
        self.app = app
        self.wrapped = middleware.cls(app, *middleware.args, **middleware.kwargs)
        self.applies = applies

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self.applies(scope):
            await self.app(scope, receive, send)
        else:
            await self.wrapped(scope, receive, send)


def tracing_enabled(_scope: Any) -> bool:
    """Flower's ``RuntimeTracingMiddleware`` does something only with
    ``FLWR_TRACING_ENABLED=1`` (its own first test, made per request)."""
    return os.getenv("FLWR_TRACING_ENABLED") == "1"


def scoped_node_tracing() -> None:
    """The SuperNode's Runtime API (``flwr/supernode/main.py``: ``create_app``) wraps
    every request of its site in three ``BaseHTTPMiddleware`` layers; the tracing one
    is skipped unless tracing is enabled (:class:`Scoped`)."""
    from flwr.supernode import main
    from starlette.middleware import Middleware

    tracing = getattr(main, "RuntimeTracingMiddleware")  # noqa: B009
    if isinstance(tracing, functools.partial):
        return
    scoped = functools.partial(Scoped, middleware=Middleware(tracing), applies=tracing_enabled)
    setattr(main, "RuntimeTracingMiddleware", scoped)  # noqa: B010


def scoped_middleware() -> None:
    """Flower 1.41's SuperLink passes every request through nine Starlette
    ``BaseHTTPMiddleware`` layers (``flwr/superlink/main.py``: ``_get_middleware``), each
    an extra task and a stream copy of the body per request, also where it does
    nothing: the four Control API layers act on ``/v1/control/`` paths only, node
    authentication and the Fleet event log on ``/v1/fleet/`` only, runtime tracing only
    with ``FLWR_TRACING_ENABLED=1`` (each layer's own first test). :class:`Scoped`
    skips a layer for the other requests, so a Fleet request crosses four layers and a
    ServerApp request two; what each layer does where it applies is unchanged."""

    from flwr.supercore.routers.runtime.tracing import RuntimeTracingMiddleware
    from flwr.superlink import main
    from flwr.superlink.routers.control import middlewares as control
    from flwr.superlink.routers.fleet.middlewares import FleetEventLogMiddleware
    from flwr.superlink.routers.fleet.node_auth import NodeAuthMiddleware
    from starlette.middleware import Middleware

    flower_middleware = main._get_middleware
    if getattr(flower_middleware, "medsilo_scoped", False):
        return

    def under(prefix: str) -> Callable[[Any], bool]:
        return lambda scope: str(scope["path"]).startswith(prefix)

    applies: dict[Any, Callable[[Any], bool]] = {
        control.ControlSensitiveResponseMiddleware: under("/v1/control/"),
        control.ControlAuthenticationMiddleware: under("/v1/control/"),
        control.ControlLicenseMiddleware: under("/v1/control/"),
        control.ControlEventLogMiddleware: under("/v1/control/"),
        NodeAuthMiddleware: under("/v1/fleet/"),
        FleetEventLogMiddleware: under("/v1/fleet/"),
        RuntimeTracingMiddleware: tracing_enabled,
    }

    def scoped() -> list[Middleware]:
        return [
            Middleware(Scoped, m, applies[m.cls]) if m.cls in applies else m
            for m in flower_middleware()
        ]

    scoped.medsilo_scoped = True  # type: ignore[attr-defined]
    setattr(main, "_get_middleware", scoped)  # noqa: B010


def run_superlink(argv: Sequence[str], cleanup_every: float = 1.0) -> None:
    """``flower-superlink ARGV`` with three changes to Flower 1.41 (no option exists for
    any of them); the link state (registered nodes, runs) stays in the ``--database``
    file, so a restarted coordinator finds its sites again.

    * Its object store (the messages' arrays in transit) is in memory: Flower 1.41 puts
      it in that SQLite file too, so every object of every message is written to disk
      and read back on its way; objects of a run that a crash interrupted are worthless
      after a restart (its ServerApp is gone), the nodes and runs are not
      (``flwr/superlink/config_loader.py``: ``ObjectStoreFactory``).
    * SQLite transactions are serialized in the process (:func:`serialized_sessions`).
    * The sweep of expired task tokens runs at most every ``cleanup_every`` seconds
      instead of before every read of a run's status
      (``flwr/supercore/corestate/sql_corestate.py``:
      ``SqlCoreState._cleanup_expired_task_tokens``, called from ``get_run_status``,
      which ``check_abort`` calls for every object pushed or pulled). It is two
      ``UPDATE`` statements, so every object request took the database's write lock;
      a task token lives 30 s without heartbeat, so noticing its expiry one second later
      changes nothing."""
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
    from flwr.supercore.corestate.sql_corestate import SqlCoreState
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.sql_mixin import SqlMixin
    from flwr.superlink import config_loader
    from flwr.superlink.cli.flower_superlink import flower_superlink

    def in_memory(_database: str) -> ObjectStoreFactory:
        return ObjectStoreFactory(FLWR_IN_MEMORY_DB_NAME)

    setattr(config_loader, "ObjectStoreFactory", in_memory)  # noqa: B010
    serialized_sessions(SqlMixin)
    throttled(SqlCoreState, "_cleanup_expired_task_tokens", cleanup_every)
    scoped_middleware()
    sys.argv = ["flower-superlink", *argv]
    flower_superlink()
