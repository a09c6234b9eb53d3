"""The ``flower`` engine: medsilo's Coordinator and Sites across processes on Flower 1.41.

The coordinator side runs inside a Flower ``ServerApp`` and drives the *same*
:class:`~medsilo.fed.coordinator.Coordinator` as :class:`~medsilo.engines.local.LocalEngine`,
round by round; each hospital's SuperNode hosts a :class:`~medsilo.fed.site.Site` behind a
:class:`SiteService`. Every medsilo message (hello, round plans, updates, refusals, the five
secure-aggregation stages, evaluations) is one Flower ``Message`` whose ``RecordDict`` is
made by :mod:`medsilo.engines.wire` (arrays chunked by Flower, flower#3006).

Latency: Flower 1.41 polls at several places (the ServerApp's ``send_and_receive`` every
3 s, the SuperNode's idle loop every 3 s, its SuperExec every 1 s), by default starts a
fresh ``flwr-clientapp`` process for every message (about 2.3 s of imports), and moves
every object of a message with its own HTTPS request through a SuperLink whose CPU is
the bottleneck of a round. medsilo (i) pushes and pulls through
``Grid.push_messages``/``pull_messages`` with a short poll, (ii) runs the SuperNode with
``--isolation process`` and serves its Runtime API with one long-lived, warm
:func:`serve_site` loop that keeps the Site (data, model, ledger, secure-aggregation
state) in memory, (iii) sends a message as three Flower objects (:mod:`wire`), and (iv)
starts the SuperLink and the SuperNode through :mod:`~medsilo.engines.flower_runtime`,
which shortens their waits and their per-request work (docs/deployment.md has the
measured breakdown).

Faults: a site that does not answer a stage within its timeout is dropped from that
stage (secure aggregation recovers without it while at least ``t`` survive; a missing
training reply is recorded as a refusal); a site whose node reconnects says hello again and
rejoins at the next round; an exception at a site comes back as a Flower error reply.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from flwr.app import Message, RecordDict

from medsilo.engines import wire
from medsilo.engines.flower_runtime import Backoff, fast_object_pulls
from medsilo.engines.local import RoundResult
from medsilo.fed.coordinator import Coordinator
from medsilo.fed.messages import EvaluateRequest, Evaluation, Refusal, RoundPlan, Update
from medsilo.fed.site import Site
from medsilo.privacy.ledger import Ledger, LedgerEntry, Release

log = logging.getLogger("medsilo.flower")

QUERY = "query"
TRAIN = "train"
EVALUATE = "evaluate"


@dataclass(frozen=True)
class Timeouts:
    """Per-stage timeouts in seconds (stragglers past them are dropped from the stage)."""

    join: float = 120.0
    """Waiting for every expected site to connect and say hello before round 1."""
    train: float = 600.0
    secagg: float = 60.0
    evaluate: float = 300.0


@dataclass(frozen=True)
class Hello:
    """What a site tells the coordinator when it joins (nothing about its data beyond
    the model's input shape and class count, which the study's model needs)."""

    site: str
    index: int
    verify_key: bytes
    input_shape: tuple[int, ...]
    num_classes: int
    privacy: Mapping[str, Any] | None = None
    """The site's DP plan (mechanism, noise, planned epsilon; not its budget)."""


def study_id(study_text: str) -> str:
    return hashlib.sha256(study_text.encode()).hexdigest()


def wire_bytes(content: RecordDict) -> int:
    """Bytes of a record's payload: its arrays' serialized data, its ``bytes`` values and
    its JSON skeleton."""
    total = sum(len(a.data) for record in content.array_records.values() for a in record.values())
    return total + sum(
        len(v) if isinstance(v, bytes) else len(str(v))
        for c in content.config_records.values()
        for v in c.values()
    )


# --- coordinator side -----------------------------------------------------------------


class Exchange:
    """One stage: a message to each site, replies collected until all arrived or the
    timeout (Flower's ``Grid``; polls from ``poll`` seconds backing off to 0.1 s instead
    of every 3 s, after sleeping through the first ``anticipate`` share of the time the
    first reply took in the last stages of this message type: each poll is a request the
    SuperLink answers with database work)."""

    def __init__(self, grid: Any, poll: float = 0.025, anticipate: float = 0.6) -> None:
        self.grid = grid
        self.poll = poll
        self.anticipate = anticipate
        self.backoffs: dict[str, Backoff] = {}
        self.bytes_down = 0
        self.bytes_up = 0

    def __call__(
        self, message_type: str, outbox: Mapping[int, RecordDict], timeout: float
    ) -> tuple[dict[int, RecordDict], dict[int, str]]:
        """Returns (node -> reply content, node -> why it is missing)."""
        messages = [
            Message(content, dst_node_id=node, message_type=message_type)
            for node, content in outbox.items()
        ]
        self.bytes_down += sum(wire_bytes(c) for c in outbox.values())
        ids = list(self.grid.push_messages(messages))
        pending = {mid: node for mid, node in zip(ids, outbox, strict=True)}
        replies: dict[int, RecordDict] = {}
        failed: dict[int, str] = {}
        deadline = time.monotonic() + timeout
        backoff = self.backoffs.setdefault(message_type, Backoff(self.poll, 0.1, self.anticipate))
        backoff.quiet()  # until the first reply
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                backoff.reset()
                node = pending.pop(reply.metadata.reply_to_message_id, None)
                if node is None:
                    continue
                if reply.has_error():
                    failed[node] = f"error at the site: {reply.error.reason}"
                else:
                    replies[node] = reply.content
                    self.bytes_up += wire_bytes(reply.content)
            if pending:
                backoff.wait(max(0.0, deadline - time.monotonic()))
        for node in pending.values():
            failed[node] = f"no reply within {timeout:g} s"
        return replies, failed


@dataclass
class FlowerEngine:
    """Drives a :class:`Coordinator` over a Flower ``Grid`` exactly as
    :class:`~medsilo.engines.local.LocalEngine` does over Site objects."""

    grid: Any
    study_text: str
    timeouts: Timeouts = field(default_factory=Timeouts)
    poll: float = 0.025
    name: str = "flower"
    nodes: dict[str, int] = field(default_factory=dict)
    hellos: dict[str, Hello] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    """What happened to the connections (joins, rejoins, drops, refused nodes)."""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """The last round's wall time per stage (train, secagg + aggregation, evaluate)."""

    retry_hello: float = 5.0
    hello_timeout: float = 15.0
    """How long one hello waits for its reply (a node listed by the SuperLink may be
    gone: its heartbeat has not expired yet); a site that missed it is asked again."""

    def __post_init__(self) -> None:
        from flwr.superlink.grid import http_grid

        fast_object_pulls(http_grid, initial=0.02)  # a reply is listed before its objects arrive
        self.exchange = Exchange(self.grid, self.poll)
        self._tried: dict[int, float] = {}

    def _say_hello(self, nodes: Sequence[int], expected: Sequence[str], timeout: float) -> None:
        hello = wire.pack({"kind": "Hello", "study": self.study_text})
        replies, failed = self.exchange(QUERY, dict.fromkeys(nodes, hello), timeout)
        for node, content in replies.items():
            tree = wire.unpack(content)
            info = Hello(
                site=str(tree["site"]),
                index=int(tree["index"]),
                verify_key=bytes(tree["verify_key"]),
                input_shape=tuple(int(d) for d in tree["input_shape"]),
                num_classes=int(tree["num_classes"]),
                privacy=tree.get("privacy"),
            )
            if info.site not in expected:
                self.events.append(f"node {node} says it is {info.site!r}, not in the study")
                continue
            known = self.nodes.get(info.site)
            self.events.append(
                f"site {info.site!r} joined as node {node}"
                if known is None
                else f"site {info.site!r} rejoined as node {node} (was {known})"
            )
            self.nodes[info.site] = node
            self.hellos[info.site] = info
        for node, why in failed.items():
            self.events.append(f"node {node} did not say hello: {why}")

    def connect(
        self,
        expected: Sequence[str],
        wanted: Sequence[str] | None = None,
        quorum: int | None = None,
    ) -> dict[str, Hello]:
        """Wait until the ``wanted`` sites (default: every expected site) have said
        hello; past ``timeouts.join``, go on if at least ``quorum`` have (a resumed study:
        a site that was down when the coordinator stopped rejoins when it comes back),
        else TimeoutError."""
        wanted = list(expected if wanted is None else wanted)
        quorum = len(expected) if quorum is None else quorum
        deadline = time.monotonic() + self.timeouts.join
        while True:
            self.refresh(expected, min(self.timeouts.join, self.hello_timeout))
            missing = [s for s in wanted if s not in self.nodes]
            if not missing:
                return dict(self.hellos)
            if time.monotonic() > deadline:
                if len(self.nodes) >= quorum:
                    self.events.append(
                        f"going on without {missing} after {self.timeouts.join:g} s "
                        f"({len(self.nodes)} sites joined, at least {quorum} needed)"
                    )
                    return dict(self.hellos)
                raise TimeoutError(
                    f"sites {missing} did not connect within {self.timeouts.join:g} s "
                    f"(connected: {sorted(self.nodes)})"
                )
            time.sleep(0.2)

    def refresh(self, expected: Sequence[str], timeout: float) -> None:
        """Say hello to nodes not seen before or dropped (a site that joined or rejoined);
        a node whose hello failed is asked again after ``retry_hello`` seconds."""
        known = set(self.nodes.values())
        now = time.monotonic()
        new = [
            n
            for n in self.grid.get_node_ids()
            if n not in known and now - self._tried.get(n, -1e9) > self.retry_hello
        ]
        if new:
            self._tried.update(dict.fromkeys(new, now))
            self._say_hello(new, expected, timeout)

    def _send(
        self, message_type: str, outbox: Mapping[str, dict[str, Any]], timeout: float
    ) -> tuple[dict[str, Any], dict[str, str]]:
        by_node = {self.nodes[s]: wire.pack(tree) for s, tree in outbox.items() if s in self.nodes}
        names = {n: s for s, n in self.nodes.items()}
        replies, failed = self.exchange(message_type, by_node, timeout)
        out = {names[n]: wire.unpack(c) for n, c in replies.items()}
        lost = {names[n]: why for n, why in failed.items()}
        for site, why in lost.items():  # out of this round; hello again next round
            self.events.append(f"{message_type}: site {site!r} dropped: {why}")
            self._tried[self.nodes.pop(site)] = time.monotonic()
        return out, lost

    def run(
        self,
        coordinator: Coordinator,
        rounds: int,
        on_round: Callable[[RoundResult], None] | None = None,
        evaluate_every: int = 1,
        splits: Sequence[Literal["val", "test"]] = ("val", "test"),
    ) -> None:
        """Run rounds ``coordinator.rounds_done + 1 .. rounds`` (see LocalEngine.run)."""
        sites = list(coordinator.site_names)
        for round_ in range(coordinator.rounds_done + 1, rounds + 1):
            start = time.perf_counter()
            self.refresh(sites, min(self.timeouts.secagg, self.hello_timeout))
            coordinator.verify_keys.update({s: h.verify_key for s, h in self.hellos.items()})
            registry = dict(coordinator.verify_keys)
            plans = coordinator.plan(round_)
            outbox = {
                s: {"kind": "Train", "plan": wire.encode(p), "verify_keys": registry}
                for s, p in plans.items()
                if s in self.nodes
            }
            clock = time.perf_counter()
            replies_by_site, lost = self._send(TRAIN, outbox, self.timeouts.train)
            stages = {"train": time.perf_counter() - clock}
            replies: list[Update | Refusal] = []
            for name in plans:
                if name in replies_by_site:
                    replies.append(wire.decode(replies_by_site[name]))
                else:
                    why = lost.get(name, "not connected")
                    replies.append(Refusal(name, round_, f"no update: {why}"))
            clock = time.perf_counter()
            if coordinator.secagg is not None:
                participants = [r.site for r in replies if isinstance(r, Update)]
                stage = coordinator.secagg_open(participants)
                while stage:
                    answers, _ = self._send(
                        QUERY,
                        {
                            s: {"kind": "SecAggStage", "message": wire.encode(m)}
                            for s, m in stage.items()
                        },
                        self.timeouts.secagg,
                    )
                    stage = coordinator.secagg_step([wire.decode(a) for a in answers.values()])
            aggregated = coordinator.aggregate(round_, replies)
            stages["secagg"] = time.perf_counter() - clock
            evaluations: list[Evaluation] = []
            clock = time.perf_counter()
            if round_ == rounds or (evaluate_every > 0 and round_ % evaluate_every == 0):
                evaluations = self._evaluate(coordinator, sites, splits)
            stages["evaluate"] = time.perf_counter() - clock
            self.stage_seconds = stages
            if on_round is not None:
                on_round(
                    RoundResult(
                        round_,
                        replies,
                        evaluations,
                        time.perf_counter() - start,
                        aggregated,
                        dict(coordinator.secagg_log),
                    )
                )

    def _evaluate(
        self, coordinator: Coordinator, sites: Sequence[str], splits: Sequence[str]
    ) -> list[Evaluation]:
        requests = [wire.encode(coordinator.evaluate_request(s)) for s in splits]  # type: ignore[arg-type]
        outbox = {s: {"kind": "Evaluate", "requests": requests} for s in sites if s in self.nodes}
        answers, _ = self._send(EVALUATE, outbox, self.timeouts.evaluate)
        # the local engine's order: split by split, site by site
        got = {
            s: [wire.decode(e) for e in answers[s]["evaluations"]] for s in sites if s in answers
        }
        return [got[s][i] for i in range(len(splits)) for s in sites if s in got]


# --- site side ------------------------------------------------------------------------


@dataclass(frozen=True)
class HostedSite:
    """A Site built at the hospital from the study and its own SITE.toml."""

    site: Site
    input_shape: tuple[int, ...]
    num_classes: int
    privacy: Mapping[str, Any] | None = None
    """What the site tells of its DP plan (see :class:`Hello`)."""


class ReplayLedger(Ledger):
    """A site's ledger that records a release only once: when a restarted coordinator
    asks again for a round whose release is already in the ledger, and the site's
    (deterministic) training produces the *same* output (same round, same SHA-256), the
    repeated release discloses nothing new and costs no privacy; any other release is
    recorded (and checked against the budget) as usual."""

    @classmethod
    def guard(cls, ledger: Ledger) -> ReplayLedger:
        guarded = cls.__new__(cls)
        guarded.__dict__.update(ledger.__dict__)
        return guarded

    def record(self, release: Release, accountant: Any = None) -> LedgerEntry:
        for entry in self.releases():
            if entry.round == release.round and entry.payload_sha256 == release.payload_sha256:
                log.info("round %d: identical release already in the ledger", release.round)
                return entry
        recorded: LedgerEntry = super().record(release, accountant)
        return recorded


class SiteService:
    """Answers the coordinator's messages with a hosted Site (one per study)."""

    def __init__(self, build: Callable[[str], HostedSite]) -> None:
        self.build = build
        self.hosted: dict[str, HostedSite] = {}
        self.current: HostedSite | None = None

    def _host(self, study_text: str) -> HostedSite:
        key = study_id(study_text)
        if key not in self.hosted:
            hosted = self.build(study_text)
            dp = hosted.site.dp
            if dp is not None:
                dp.ledger = ReplayLedger.guard(dp.ledger)
            self.hosted[key] = hosted
        return self.hosted[key]

    def handle(self, content: RecordDict) -> RecordDict:
        tree = wire.unpack(content)
        kind = tree.get("kind")
        if kind == "Hello":
            hosted = self.current = self._host(str(tree["study"]))
            site = hosted.site
            return wire.pack(
                {
                    "site": site.name,
                    "index": site.index,
                    "verify_key": site.verify_key,
                    "input_shape": list(hosted.input_shape),
                    "num_classes": hosted.num_classes,
                    "privacy": hosted.privacy,
                }
            )
        if self.current is None:
            raise RuntimeError(f"{kind} before hello: the coordinator must say hello first")
        site = self.current.site
        if kind == "Train":
            keys = {str(k): bytes(v) for k, v in tree["verify_keys"].items()}
            if keys.get(site.name) != site.verify_key:
                raise RuntimeError(f"site {site.name!r}: the coordinator holds a stale key")
            site.verify_keys = keys
            plan = wire.decode(tree["plan"])
            if not isinstance(plan, RoundPlan):
                raise wire.WireError("a Train message must carry a RoundPlan")
            return wire.pack(wire.encode(site.on_plan(plan)))
        if kind == "SecAggStage":
            return wire.pack(wire.encode(site.on_secagg(wire.decode(tree["message"]))))
        if kind == "Evaluate":
            requests = [wire.decode(r) for r in tree["requests"]]
            if not all(isinstance(r, EvaluateRequest) for r in requests):
                raise wire.WireError("an Evaluate message must carry EvaluateRequests")
            return wire.pack({"evaluations": [wire.encode(site.on_evaluate(r)) for r in requests]})
        raise wire.WireError(f"unknown message kind {kind!r}")

    def mark_sent(self) -> None:
        """The last reply was handed to Flower: its releases are marked sent."""
        if self.current is not None:
            self.current.site.mark_sent()


def client_app(service: Callable[[Any], SiteService]) -> Any:
    """A Flower ``ClientApp`` whose handlers pass every message to ``service(context)``."""
    from flwr.clientapp import ClientApp

    app = ClientApp()

    def handler(msg: Message, context: Any) -> Message:
        served = service(context)
        reply = Message(served.handle(msg.content), reply_to=msg)
        served.mark_sent()  # handed to Flower's runtime, which pushes it to the SuperNode
        return reply

    for register in (app.train(), app.evaluate(), app.query()):
        register(handler)
    return app


def serve_site(
    runtime_address: str,
    app: Any,
    *,
    poll: float = 0.025,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """The warm ClientApp: a long-lived process that takes the SuperNode's tasks
    (``flower-supernode --isolation process``) and runs ``app`` on each in this process,
    as ``flower-superexec`` + ``flwr-clientapp`` do, minus a fresh process per message.
    Mirrors Flower 1.41's ``flwr.supernode.runtime.run_clientapp``."""
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime import run_clientapp
    from flwr.supernode.runtime.run_clientapp import (
        pull_task_input,
        push_message,
        push_task_output,
    )

    # the SuperNode hands out a task before it has pulled the task's objects
    fast_object_pulls(run_clientapp, "pull_and_inflate_object_from_tree", initial=0.02)

    def connect(*interceptors: Any, tries: int | None = None) -> Any:
        invoker = make_simple_http_retry_invoker()
        if tries is not None:
            invoker.max_tries = tries
        flower_giveup = invoker.should_giveup

        def giveup(exc: Exception) -> bool:
            # Flower's invoker SIGINTs its own process on 401 (a flwr-clientapp process
            # ends with its task); this process outlives tasks: drop the task instead
            status = getattr(getattr(exc, "response", None), "status_code", None)
            return status in (401, 403) or (flower_giveup is not None and flower_giveup(exc))

        invoker.should_giveup = giveup
        return RuntimeHttpClient.from_server_address(
            server_address=runtime_address,
            insecure=True,
            root_certificates=None,
            interceptors=list(interceptors),
            retry_invoker=invoker,
        )

    def serve_task(client: Any) -> None:
        context = None
        status, details = SubStatus.FAILED, "ClientApp task failed"
        try:
            message, context, _run, _fab = pull_task_input(client)
            try:
                reply = app(message=message, context=context)
                status, details = SubStatus.COMPLETED, ""
            except Exception as exc:  # the coordinator gets an error reply, we go on
                log.exception("the site failed on a %s message", message.metadata.message_type)
                reason = f"{type(exc).__name__}: {exc}"
                reply = Message(
                    Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                    reply_to=message,
                )
                details = reason
            push_message(client, reply, context)
        finally:
            push_task_output(client=client, context=context, sub_status=status, details=details)

    # one try per poll: when the SuperNode is gone (refused, stopped) ``stop`` says so
    tasks = connect(RuntimeVersionHttpInterceptor(component_name="SuperExec"), tries=1)
    backoff = Backoff(poll, 0.2, anticipate=0.6)  # see Backoff: quiet after each task
    while not stop():
        try:
            acquired = tasks.AcquireTask(
                AcquireTaskRequest(supported_task_types=["flwr-clientapp"])
            )
        except Exception:  # the SuperNode's Runtime API is not (or no longer) up
            backoff.wait()
            continue
        if not (acquired.HasField("task") and acquired.token):
            backoff.wait()
            continue
        backoff.reset()
        client = connect(
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(acquired.token),
        )
        try:
            serve_task(client)
        except Exception as exc:  # a run stopped (a restarted coordinator), the node gone
            log.warning("task dropped: %s: %s", type(exc).__name__, exc)
        finally:
            client.close()
            backoff.quiet()  # the next task comes with the coordinator's next stage


def array_digest(weights: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of a weight mapping (names, dtypes, shapes and bytes), for comparisons."""
    digest = hashlib.sha256()
    for name, value in weights.items():
        array = np.ascontiguousarray(value)
        digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
