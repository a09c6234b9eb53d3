"""Every illegal transition, replay, duplicate, malformed or wrongly signed message is
rejected with a ProtocolError naming the message and the rule, and leaves the state
that received it usable."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from medsilo.secagg import crypto
from medsilo.secagg.client import SiteDone, SiteState, site_step
from medsilo.secagg.errors import ParameterError, ProtocolError, Violation
from medsilo.secagg.field import SHAMIR_PRIME
from medsilo.secagg.graph import Graph, harary_graph
from medsilo.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShare,
    KeyDirectory,
    MaskedInput,
    Message,
    RevealedShare,
    Setup,
    ShareDelivery,
    ShareKeys,
    ToCoordinator,
    ToSite,
    UnmaskRequest,
    UnmaskShares,
    advertisement_transcript,
    from_dict,
    to_dict,
)
from medsilo.secagg.server import CoordinatorState, Finished, coordinator_step
from medsilo.secagg.simulate import Simulation

SITES = ("a", "b", "c", "d", "e")
TO_SITE = (Setup, KeyDirectory, ShareDelivery, ConsistencyRequest, UnmaskRequest)
TO_COORDINATOR = (AdvertiseKeys, ShareKeys, MaskedInput, ConsistencySignature, UnmaskShares)
WRONG_PAIRS = [(stage, kind) for stage in range(5) for kind in range(5) if kind != stage]


def _simulation(session_id: bytes = b"session-1", graph: Graph | None = None) -> Simulation:
    vectors = {s: np.arange(4, dtype=np.uint64) for s in SITES}
    return Simulation(vectors, 3, bits=16, graph=graph, session_id=session_id)


class Recorded:
    """A complete session, keeping every state and message of site "a" and of the
    coordinator, stage by stage."""

    def __init__(self, session_id: bytes = b"session-1") -> None:
        simulation = _simulation(session_id)
        self.simulation = simulation
        self.site_states: list[SiteState] = []
        self.to_site: list[ToSite] = []
        self.coordinator_states: list[CoordinatorState] = []
        self.inboxes: list[list[ToCoordinator]] = []
        for _ in range(5):
            self.site_states.append(simulation.sites["a"])
            self.to_site.append(simulation.outbox["a"])
            self.coordinator_states.append(simulation.coordinator)
            inbox = list(simulation.deliver().values())
            self.inboxes.append(inbox)
            simulation.close(inbox)
        self.site_states.append(simulation.sites["a"])
        self.coordinator_states.append(simulation.coordinator)


@pytest.fixture(scope="module")
def recorded() -> Recorded:
    return Recorded()


@pytest.fixture(scope="module")
def other_session() -> Recorded:
    return Recorded(b"session-2")


def _rejects(rule: Violation, message: str, call: Any, *args: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as raised:
        call(*args)
    assert raised.value.rule is rule, raised.value
    assert raised.value.message == message, raised.value
    assert message in str(raised.value) and str(rule) in str(raised.value)
    return raised.value


# --- site: order, replay, session ---------------------------------------------------


@pytest.mark.parametrize(("stage", "kind"), WRONG_PAIRS)
def test_site_rejects_every_message_but_the_expected_one(
    recorded: Recorded, stage: int, kind: int
) -> None:
    message = recorded.to_site[kind]
    error = _rejects(
        Violation.OUT_OF_ORDER,
        type(message).__name__,
        site_step,
        recorded.site_states[stage],
        message,
    )
    assert type(recorded.to_site[stage]).__name__ in error.detail


@pytest.mark.parametrize("kind", range(5))
def test_finished_site_rejects_everything(recorded: Recorded, kind: int) -> None:
    assert isinstance(recorded.site_states[5], SiteDone)
    message = recorded.to_site[kind]
    _rejects(
        Violation.OUT_OF_ORDER, type(message).__name__, site_step, recorded.site_states[5], message
    )


@pytest.mark.parametrize("stage", range(4))
def test_site_rejects_a_replayed_message(recorded: Recorded, stage: int) -> None:
    """The message of stage s, delivered again once the site is past it."""
    message = recorded.to_site[stage]
    _rejects(
        Violation.OUT_OF_ORDER,
        type(message).__name__,
        site_step,
        recorded.site_states[stage + 1],
        message,
    )


@pytest.mark.parametrize("stage", range(1, 5))
def test_site_rejects_a_message_from_another_session(
    recorded: Recorded, other_session: Recorded, stage: int
) -> None:
    message = other_session.to_site[stage]
    _rejects(
        Violation.REPLAY, type(message).__name__, site_step, recorded.site_states[stage], message
    )


@pytest.mark.parametrize("stage", range(5))
def test_a_rejection_leaves_the_site_state_usable(recorded: Recorded, stage: int) -> None:
    state = recorded.site_states[stage]
    with pytest.raises(ProtocolError):
        site_step(state, recorded.to_site[(stage + 1) % 5])
    _, reply = site_step(state, recorded.to_site[stage])
    assert type(reply) is TO_COORDINATOR[stage]


# --- site: content of each stage ---------------------------------------------------


def test_setup_rules(recorded: Recorded) -> None:
    setup = recorded.to_site[0]
    assert isinstance(setup, Setup)
    init = recorded.site_states[0]
    stranger = dataclasses.replace(init, site="z")  # type: ignore[type-var]
    _rejects(Violation.INCONSISTENT, "Setup", site_step, stranger, setup)
    unregistered = dataclasses.replace(init, verify_keys={"a": b"k"})  # type: ignore[type-var]
    _rejects(Violation.UNKNOWN_SENDER, "Setup", site_step, unregistered, setup)
    longer = dataclasses.replace(init, vector=np.zeros(5, dtype=np.uint64))  # type: ignore[type-var]
    with pytest.raises(ParameterError, match="dim"):
        site_step(longer, setup)


def test_key_directory_rules(recorded: Recorded) -> None:
    state, directory = recorded.site_states[1], recorded.to_site[1]
    assert isinstance(directory, KeyDirectory)
    keys = directory.keys
    forged = dataclasses.replace(keys[0], mask_key=keys[1].mask_key)
    bad = dataclasses.replace(directory, keys=(forged, *keys[1:]))
    error = _rejects(Violation.BAD_SIGNATURE, "KeyDirectory", site_step, state, bad)
    assert error.sender == keys[0].site
    twice = dataclasses.replace(directory, keys=(*keys, keys[0]))
    _rejects(Violation.DUPLICATE, "KeyDirectory", site_step, state, twice)
    itself = dataclasses.replace(keys[0], site="a")
    _rejects(
        Violation.UNKNOWN_SENDER,
        "KeyDirectory",
        site_step,
        state,
        dataclasses.replace(directory, keys=(itself,)),
    )


def test_key_directory_rejects_a_low_order_key_even_when_signed(recorded: Recorded) -> None:
    state, directory = recorded.site_states[1], recorded.to_site[1]
    assert isinstance(directory, KeyDirectory)
    keys = directory.keys[0]
    signing_key = recorded.simulation.signing_keys[keys.site][0]
    transcript = advertisement_transcript(keys.session, keys.site, keys.cipher_key, bytes(32))
    evil = dataclasses.replace(
        keys, mask_key=bytes(32), signature=crypto.sign(signing_key, transcript)
    )
    bad = dataclasses.replace(directory, keys=(evil, *directory.keys[1:]))
    error = _rejects(Violation.MALFORMED, "KeyDirectory", site_step, state, bad)
    assert error.sender == keys.site and "low-order" in error.detail


def test_key_directory_from_a_non_neighbour_in_a_sparse_graph() -> None:
    ring = Graph(("a", "b", "c", "d", "e", "f"), 2)  # a's neighbours: f and b
    vectors = {s: np.zeros(2, dtype=np.uint64) for s in ring.ring}
    simulation = Simulation(vectors, 2, bits=16, graph=ring)
    replies = simulation.deliver()
    simulation.close(list(replies.values()))
    directory = simulation.outbox["a"]
    assert isinstance(directory, KeyDirectory)
    assert {k.site for k in directory.keys} == {"b", "f"}
    far = replies["d"]
    assert isinstance(far, AdvertiseKeys)
    bad = dataclasses.replace(directory, keys=(*directory.keys, far))
    error = _rejects(
        Violation.UNKNOWN_SENDER, "KeyDirectory", site_step, simulation.sites["a"], bad
    )
    assert error.sender == "d"


def test_share_delivery_rules(recorded: Recorded) -> None:
    state, delivery = recorded.site_states[2], recorded.to_site[2]
    assert isinstance(delivery, ShareDelivery)
    share = delivery.shares[0]
    flipped = share.ciphertext[:-1] + bytes([share.ciphertext[-1] ^ 1])
    tampered = dataclasses.replace(share, ciphertext=flipped)
    cases = [
        (Violation.BAD_CIPHERTEXT, (tampered, *delivery.shares[1:])),
        (Violation.DUPLICATE, (*delivery.shares, share)),
        (Violation.INCONSISTENT, (dataclasses.replace(share, receiver="b"),)),
        (Violation.UNKNOWN_SENDER, (dataclasses.replace(share, sender="z"),)),
        # a ciphertext moved to another sender does not authenticate (associated data)
        (Violation.BAD_CIPHERTEXT, (dataclasses.replace(share, sender=delivery.shares[1].sender),)),
    ]
    for rule, shares in cases:
        _rejects(
            rule, "ShareDelivery", site_step, state, dataclasses.replace(delivery, shares=shares)
        )


def test_consistency_request_rules(recorded: Recorded) -> None:
    state, request = recorded.site_states[3], recorded.to_site[3]
    assert isinstance(request, ConsistencyRequest)
    cases = [
        (Violation.DUPLICATE, ("a", "a", "b", "c")),
        (Violation.MALFORMED, ("b", "a", "c")),
        (Violation.UNKNOWN_SENDER, ("a", "b", "c", "z")),
        (Violation.INCONSISTENT, ("b", "c", "d")),
    ]
    for rule, survivors in cases:
        forged = dataclasses.replace(request, survivors=survivors)
        _rejects(rule, "ConsistencyRequest", site_step, state, forged)


def test_consistency_request_must_not_list_a_neighbour_that_sent_no_shares() -> None:
    simulation = _simulation()
    simulation.close(list(simulation.deliver().values()))
    simulation.close(list(simulation.deliver(silent={"e"}).values()))  # e: not in U_2
    simulation.close(list(simulation.deliver().values()))
    request = simulation.outbox["a"]
    assert isinstance(request, ConsistencyRequest) and "e" not in request.survivors
    forged = dataclasses.replace(request, survivors=(*request.survivors, "e"))
    error = _rejects(
        Violation.INCONSISTENT, "ConsistencyRequest", site_step, simulation.sites["a"], forged
    )
    assert "'e'" in error.detail


def test_unmask_request_rules(recorded: Recorded) -> None:
    state, request = recorded.site_states[4], recorded.to_site[4]
    assert isinstance(request, UnmaskRequest)
    signature = request.signatures[1]
    wrong = dataclasses.replace(signature, signature=request.signatures[2].signature)
    cases = [
        (Violation.DUPLICATE, {"signatures": (*request.signatures, signature)}),
        (Violation.BAD_SIGNATURE, {"signatures": (wrong, *request.signatures[2:])}),
        (Violation.INCONSISTENT, {"signatures": (dataclasses.replace(signature, site="z"),)}),
        (Violation.DUPLICATE, {"self_mask_of": ("a", "a")}),
        (Violation.BOTH_SHARES, {"mask_key_of": ("b",)}),
    ]
    for rule, change in cases:
        _rejects(rule, "UnmaskRequest", site_step, state, dataclasses.replace(request, **change))


# --- coordinator ------------------------------------------------------------------


@pytest.mark.parametrize(("stage", "kind"), WRONG_PAIRS)
def test_coordinator_rejects_every_message_but_the_expected_one(
    recorded: Recorded, stage: int, kind: int
) -> None:
    message = recorded.inboxes[kind][0]
    error = _rejects(
        Violation.OUT_OF_ORDER,
        type(message).__name__,
        coordinator_step,
        recorded.coordinator_states[stage],
        [message],
    )
    assert error.sender == message.site


def test_finished_coordinator_rejects_everything(recorded: Recorded) -> None:
    finished = recorded.coordinator_states[5]
    assert isinstance(finished, Finished)
    _rejects(
        Violation.OUT_OF_ORDER, "UnmaskShares", coordinator_step, finished, recorded.inboxes[4]
    )


@pytest.mark.parametrize("stage", range(5))
def test_coordinator_rejects_duplicates_replays_and_strangers(
    recorded: Recorded, other_session: Recorded, stage: int
) -> None:
    state, inbox = recorded.coordinator_states[stage], recorded.inboxes[stage]
    name = type(inbox[0]).__name__
    _rejects(Violation.DUPLICATE, name, coordinator_step, state, [*inbox, inbox[0]])
    _rejects(Violation.REPLAY, name, coordinator_step, state, other_session.inboxes[stage][:1])
    stranger = dataclasses.replace(inbox[0], site="z")
    _rejects(Violation.UNKNOWN_SENDER, name, coordinator_step, state, [stranger])
    # the stage's inbox still closes it: the state was not changed
    assert coordinator_step(state, inbox)


def test_coordinator_rejects_a_sender_that_skipped_a_stage() -> None:
    simulation = _simulation()
    simulation.close(list(simulation.deliver(silent={"e"}).values()))  # e never advertised
    replies = simulation.deliver()
    late = dataclasses.replace(replies["d"], site="e")
    error = _rejects(
        Violation.OUT_OF_ORDER, "ShareKeys", coordinator_step, simulation.coordinator, [late]
    )
    assert "previous stage" in error.detail


def test_coordinator_content_rules(recorded: Recorded) -> None:
    keys = recorded.inboxes[0][0]
    assert isinstance(keys, AdvertiseKeys)
    forged = dataclasses.replace(keys, cipher_key=recorded.inboxes[0][1].cipher_key)  # type: ignore[union-attr]
    _rejects(
        Violation.BAD_SIGNATURE,
        "AdvertiseKeys",
        coordinator_step,
        recorded.coordinator_states[0],
        [forged],
    )

    shares = recorded.inboxes[1][0]
    assert isinstance(shares, ShareKeys)
    state = recorded.coordinator_states[1]
    first = shares.shares[0]
    for rule, listed in [
        (Violation.DUPLICATE, (*shares.shares, first)),
        (Violation.INCONSISTENT, shares.shares[1:]),
        (Violation.INCONSISTENT, (dataclasses.replace(first, sender="b"), *shares.shares[1:])),
    ]:
        bad = dataclasses.replace(shares, shares=listed)
        _rejects(rule, "ShareKeys", coordinator_step, state, [bad])

    masked = recorded.inboxes[2][0]
    assert isinstance(masked, MaskedInput)
    state = recorded.coordinator_states[2]
    for vector in (np.zeros(3, dtype=np.uint64), np.full(4, 2**16, dtype=np.uint64)):
        bad = dataclasses.replace(masked, vector=vector)
        _rejects(Violation.MALFORMED, "MaskedInput", coordinator_step, state, [bad])

    signature = recorded.inboxes[3][0]
    assert isinstance(signature, ConsistencySignature)
    bad = dataclasses.replace(signature, signature=bytes(64))
    _rejects(
        Violation.BAD_SIGNATURE,
        "ConsistencySignature",
        coordinator_step,
        recorded.coordinator_states[3],
        [bad],
    )


def test_coordinator_unmasking_rules(recorded: Recorded) -> None:
    state, inbox = recorded.coordinator_states[4], recorded.inboxes[4]
    answer = inbox[0]
    assert isinstance(answer, UnmaskShares)
    partial = dataclasses.replace(answer, self_mask_shares=answer.self_mask_shares[1:])
    _rejects(Violation.INCONSISTENT, "UnmaskShares", coordinator_step, state, [partial, *inbox[1:]])
    # a share off by 2^300 moves the reconstruction by a small multiple of 2^300: no seed
    first = answer.self_mask_shares[0]
    corrupted = dataclasses.replace(first, value=(first.value + 2**300) % SHAMIR_PRIME)
    bad = dataclasses.replace(answer, self_mask_shares=(corrupted, *answer.self_mask_shares[1:]))
    error = _rejects(
        Violation.INCONSISTENT, "UnmaskShares", coordinator_step, state, [bad, *inbox[1:]]
    )
    assert "256-bit" in error.detail


def test_coordinator_detects_wrong_mask_key_shares() -> None:
    simulation = _simulation()
    for silent in ({}, {}, {"e"}, {}):
        simulation.close(list(simulation.deliver(silent=silent).values()))
    replies = simulation.deliver()
    answer = replies["a"]
    assert isinstance(answer, UnmaskShares) and answer.mask_key_shares[0].owner == "e"
    # a share of another secret that happens to be < 2^256 reconstructs a wrong key
    wrong = RevealedShare("e", answer.mask_key_shares[0].value ^ 1)
    inbox = [dataclasses.replace(answer, mask_key_shares=(wrong,)), *list(replies.values())[1:]]
    error = _rejects(
        Violation.INCONSISTENT, "UnmaskShares", coordinator_step, simulation.coordinator, inbox
    )
    assert "'e'" in error.detail


# --- dict form ----------------------------------------------------------------------


def _all_messages(recorded: Recorded) -> list[Message]:
    return [*recorded.to_site, *(inbox[0] for inbox in recorded.inboxes)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


def test_every_message_round_trips_through_its_dict_form(recorded: Recorded) -> None:
    messages = _all_messages(recorded)
    assert {type(m) for m in messages} == {*TO_SITE, *TO_COORDINATOR}
    for message in messages:
        plain = to_dict(message)
        assert _same(to_dict(from_dict(plain)), plain)


def _plain(recorded: Recorded, kind: type) -> dict[str, Any]:
    return to_dict(next(m for m in _all_messages(recorded) if isinstance(m, kind)))


@pytest.mark.parametrize(
    ("kind", "mutate"),
    [
        (AdvertiseKeys, lambda d: d.pop("signature")),
        (AdvertiseKeys, lambda d: d.update(extra=1)),
        (AdvertiseKeys, lambda d: d.update(mask_key=b"short")),
        (AdvertiseKeys, lambda d: d.update(site="")),
        (AdvertiseKeys, lambda d: d.update(session="not bytes")),
        (ShareKeys, lambda d: d.update(shares="not a list")),
        (ShareKeys, lambda d: d["shares"][0].update(ciphertext=b"x" * 10)),
        (MaskedInput, lambda d: d.update(vector=np.zeros(4))),
        (MaskedInput, lambda d: d.update(vector=np.zeros((2, 2), dtype=np.uint64))),
        (MaskedInput, lambda d: d.update(vector=[1, 2, 3, 4])),
        (UnmaskShares, lambda d: d["self_mask_shares"][0].update(value=-1)),
        (UnmaskShares, lambda d: d["self_mask_shares"][0].update(value=True)),
        (ConsistencyRequest, lambda d: d.update(survivors=["a", 3])),
        (Setup, lambda d: d["config"].update(threshold=1)),
        (Setup, lambda d: d["config"]["graph"].update(degree=3)),
        (Setup, lambda d: d["config"].update(bits=64)),
    ],
)
def test_malformed_dicts_are_rejected(recorded: Recorded, kind: type, mutate: Any) -> None:
    plain = _plain(recorded, kind)
    mutate(plain)
    with pytest.raises(ProtocolError) as raised:
        from_dict(plain)
    assert raised.value.rule is Violation.MALFORMED


@pytest.mark.parametrize("data", [{}, {"kind": "Nope"}, {"kind": 3}, []])
def test_unknown_kinds_are_rejected(data: Any) -> None:
    with pytest.raises(ProtocolError) as raised:
        from_dict(data)
    assert raised.value.rule is Violation.MALFORMED and "kind" in raised.value.detail


def test_masked_input_vector_is_a_read_only_copy() -> None:
    vector = np.zeros(3, dtype=np.uint64)
    message = MaskedInput(bytes(32), "a", vector)
    vector[0] = 7
    assert message.vector[0] == 0 and not message.vector.flags.writeable


def test_encrypted_share_constructor_checks_sizes() -> None:
    with pytest.raises(ProtocolError, match="ciphertext"):
        EncryptedShare("a", "b", b"short")


def test_secagg_plus_site_checks_only_its_neighbourhoods_signatures() -> None:
    """Bell et al. 2020: in a sparse graph each site receives and verifies the signatures
    of its own neighbourhood only, and refuses one from outside it."""
    sites = [f"s{i:02d}" for i in range(12)]
    graph = harary_graph(sites, 4, np.random.default_rng(0))
    vectors = {s: np.arange(4, dtype=np.uint64) for s in sites}
    simulation = Simulation(vectors, 3, bits=16, graph=graph, session_id=b"sparse")
    for _ in range(4):
        simulation.close(list(simulation.deliver().values()))
    requests = dict(simulation.outbox)
    assert requests and all(isinstance(m, UnmaskRequest) for m in requests.values())
    for site, message in requests.items():
        assert isinstance(message, UnmaskRequest)
        assert {sig.site for sig in message.signatures} == graph.neighbourhood(site)
    site = sites[0]
    outsider = next(s for s in sites if s not in graph.neighbourhood(site))
    request = requests[site]
    extra = requests[outsider]
    assert isinstance(request, UnmaskRequest) and isinstance(extra, UnmaskRequest)
    foreign = next(sig for sig in extra.signatures if sig.site == outsider)
    forged = dataclasses.replace(request, signatures=(*request.signatures, foreign))
    _rejects(
        Violation.INCONSISTENT,
        "UnmaskRequest",
        site_step,
        simulation.sites[site],
        forged,
    )
    simulation.close(list(simulation.deliver().values()))
    assert isinstance(simulation.coordinator, Finished)
