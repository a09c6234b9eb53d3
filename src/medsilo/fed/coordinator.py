"""``Coordinator``: the round logic the server runs. It picks sites, sends plans,
aggregates updates with the study's strategy and asks sites to evaluate.

Its whole state (global weights, server optimizer state, rounds completed) is returned by
:meth:`state_dict` so that a run can be checkpointed and resumed exactly. Site selection
uses a generator derived from (seed, round), so a resumed run picks the same sites.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

from medsilo.fed import sparse
from medsilo.fed.dp import CentralDp, DistributedSum, dp_fedavg_pseudo_gradient
from medsilo.fed.lottery import LotteryServer, LotterySpec, prunable_keys
from medsilo.fed.messages import (
    EvaluateRequest,
    Refusal,
    RoundPlan,
    TrainConfig,
    Update,
    Weights,
    copy_weights,
)
from medsilo.fed.secure import (
    SecAggRound,
    SecAggSpec,
    decode_mean,
    round_quantizer,
    session_config,
    unflatten,
)
from medsilo.fed.strategies import ServerState, StrategySpec, pseudo_gradient, server_step
from medsilo.privacy.dpsgd import secret_seed
from medsilo.privacy.skellam import decode_sum
from medsilo.secagg.errors import AbortError
from medsilo.secagg.messages import MaskedInput, ToCoordinator, ToSite, content_bytes
from medsilo.secagg.server import CoordinatorState, Finished, coordinator_step, start


class Coordinator:
    def __init__(
        self,
        weights: Weights,
        strategy: StrategySpec,
        site_names: Sequence[str],
        train_config: TrainConfig,
        seed: int,
        central_dp: CentralDp | None = None,
        secagg: SecAggSpec | None = None,
        lottery: LotterySpec | None = None,
    ) -> None:
        if strategy.min_sites > len(site_names):
            raise ValueError(
                f"strategy.min_sites = {strategy.min_sites} but the study has "
                f"{len(site_names)} sites"
            )
        self.weights = copy_weights(weights)
        self.strategy = strategy
        self.site_names = tuple(site_names)
        self.train_config = train_config
        self.seed = seed
        self.server_state: ServerState = {}
        self.rounds_done = 0
        self.central_dp = central_dp
        self.secagg = secagg if secagg is not None and secagg.enabled else None
        if self.secagg is not None and central_dp is not None:
            raise ValueError(
                "central DP clips each site's update at the coordinator, which "
                "secure aggregation hides: use privacy.mode = 'local'"
            )
        self.distributed: DistributedSum | None = None
        """Distributed DP (:mod:`medsilo.fed.dp`): set with the sites' privacy."""
        self.verify_keys: dict[str, bytes] = {}
        """Each site's registered Ed25519 verify key (site authentication)."""
        self._round_secagg: SecAggRound | None = None
        self._session: CoordinatorState | None = None
        self._masked_bytes = 0
        self._secagg_bytes = {"secagg_bytes_up": 0, "secagg_bytes_down": 0}
        self.secagg_log: dict[str, object] = {}
        """What the coordinator saw of the last session (for the report)."""
        self.lottery: LotteryServer | None = None
        """FedLTN / LotteryFL (``strategy.name = "fedltn"``): :mod:`medsilo.fed.lottery`."""
        if strategy.name == "fedltn":
            self.lottery = LotteryServer(lottery or LotterySpec(), copy_weights(weights))
        self.traffic: dict[str, int] = {}
        """Bytes of the last round's clear messages: ``bytes_down`` / ``bytes_up`` (FedLTN:
        exact sparse payload lengths; otherwise the arrays' raw float bytes) and
        ``dense_bytes_down`` / ``dense_bytes_up``, what dense float32 FedAvg messages of
        the same model would have taken. Under secure aggregation ``bytes_up`` counts the
        masked vectors that reached the coordinator, packed at ceil(bits/8) bytes per
        element. ``secagg_bytes_up`` / ``secagg_bytes_down`` count every message of the
        session (keys, encrypted shares, masked vectors, signatures, unmasking shares; their
        content, :func:`medsilo.secagg.messages.content_bytes`)."""

    def select(self, round_: int) -> list[str]:
        """Sites asked to train in ``round_``: ceil(fraction * K), at least min_sites."""
        k = len(self.site_names)
        count = min(k, max(self.strategy.min_sites, int(np.ceil(self.strategy.fraction * k))))
        if count == k:
            return list(self.site_names)
        if self.central_dp is not None:  # selection must be secret for amplification
            rng = np.random.default_rng(secret_seed(self.central_dp.secret, round_, 6))
        else:
            rng = np.random.default_rng([self.seed, 2, round_])
        chosen = np.sort(rng.choice(k, size=count, replace=False))
        return [self.site_names[i] for i in chosen]

    def plan(self, round_: int) -> dict[str, RoundPlan]:
        if round_ != self.rounds_done + 1:
            raise ValueError(f"round {round_} planned after {self.rounds_done} completed rounds")
        selected = self.select(round_)
        self._round_secagg, self._session, self.secagg_log = None, None, {}
        self._secagg_bytes = {"secagg_bytes_up": 0, "secagg_bytes_down": 0}
        if self.secagg is not None:
            distributed = self.distributed
            self._round_secagg = SecAggRound(
                round_quantizer(self.secagg, len(selected)),
                tuple(sorted(self.weights)),
                tuple(sorted(prunable_keys(self.weights))) if self.lottery is not None else (),
                skellam=distributed.skellam if distributed is not None else None,
                rotation_seed=int(np.random.default_rng([self.seed, 9, round_]).integers(2**62)),
            )
        if self.lottery is not None and self.secagg is None:
            plans = {
                name: RoundPlan(
                    round=round_,
                    weights={},
                    config=self.train_config,
                    sparse=self.lottery.download(name, round_),
                )
                for name in selected
            }
        else:
            plans = {
                name: RoundPlan(
                    round=round_,
                    weights=self.weights,
                    config=self.train_config,
                    secagg=self._round_secagg,
                )
                for name in selected
            }
        dense = sparse.dense_bytes(self.weights)
        self.traffic = {
            "bytes_down": sum(
                len(p.sparse) if p.sparse is not None else dense for p in plans.values()
            ),
            "dense_bytes_down": dense * len(plans),
        }
        return plans

    def secagg_open(self, participants: Sequence[str]) -> dict[str, ToSite]:
        """Open this round's session among the sites that sent a (masked) update."""
        assert self.secagg is not None and self._round_secagg is not None
        self.secagg_log = {"participants": list(participants), "bits": self.secagg.bits}
        self._masked_bytes = 0
        needed = 2
        if self.distributed is not None:  # never unmask a sum with fewer noise shares
            needed = max(needed, self.distributed.skellam.min_survivors)
        if len(participants) < needed:
            self.secagg_log["aborted"] = (
                f"{len(participants)} sites sent a masked update; the session needs {needed}"
            )
            return {}
        rng = np.random.default_rng([self.seed, 8, self.rounds_done + 1])  # public graph
        dim = self._round_secagg.dim(self.weights)
        config = session_config(self.secagg, participants, dim, rng, min_threshold=needed)
        self.secagg_log.update(threshold=config.threshold, degree=config.graph.degree)
        self._session, setup = start(config, {s: self.verify_keys[s] for s in participants})
        self._count_secagg("secagg_bytes_down", setup.values())
        return dict(setup)

    def secagg_step(self, inbox: Sequence[ToCoordinator]) -> dict[str, ToSite]:
        """Close a stage with the replies that arrived; empty when the session ended."""
        assert self._session is not None and self.secagg is not None
        per_element = -(-self.secagg.bits // 8)
        self._masked_bytes += sum(
            m.vector.size * per_element for m in inbox if isinstance(m, MaskedInput)
        )
        self._count_secagg("secagg_bytes_up", inbox)
        try:
            self._session, outbox = coordinator_step(self._session, inbox)
        except AbortError as error:  # fewer than t survived: release nothing
            self.secagg_log["aborted"] = f"{error.stage}: {error.detail}"
            self._session = None
            return {}
        if isinstance(self._session, Finished):
            self.secagg_log["survivors"] = list(self._session.survivors)
            return {}
        self._count_secagg("secagg_bytes_down", outbox.values())
        return outbox

    def _count_secagg(self, key: str, messages: Iterable[ToCoordinator | ToSite]) -> None:
        assert self.secagg is not None
        self._secagg_bytes[key] += sum(content_bytes(m, self.secagg.bits) for m in messages)

    def aggregate(self, round_: int, replies: Sequence[Update | Refusal]) -> bool:
        """Apply the round's updates; returns False when the round was skipped because
        fewer than ``strategy.min_sites`` sites sent one (refusals, e.g. spent budgets):
        the global weights then stay as they were."""
        updates = [r for r in replies if isinstance(r, Update)]
        if any(u.round != round_ for u in updates):
            raise ValueError(f"an update for another round arrived in round {round_}")
        self.rounds_done = round_
        self.traffic["dense_bytes_up"] = sparse.dense_bytes(self.weights) * len(updates)
        if any(u.masked for u in updates):  # masked updates travel in the session
            self.traffic["bytes_up"] = self._masked_bytes
            self.traffic.update(self._secagg_bytes)
        else:
            self.traffic["bytes_up"] = sum(
                len(u.sparse) if u.sparse is not None else sparse.dense_bytes(u.delta)
                for u in updates
            )
        if len(updates) < self.strategy.min_sites:
            return False
        if self.lottery is not None:
            return self._aggregate_lottery(updates, self.lottery)
        if self.secagg is not None:
            if not isinstance(self._session, Finished) or self._round_secagg is None:
                return False  # the session aborted: nothing was revealed, nothing applied
            total, survivors = self._session.total, len(self._session.survivors)
            if self.distributed is not None:
                delta = self._distributed_step(self._round_secagg, total, self.distributed)
            else:
                delta = decode_mean(self._round_secagg, total, survivors, self.weights)
        elif self.central_dp is not None:
            delta = dp_fedavg_pseudo_gradient(self.weights, updates, self.central_dp, round_)
        else:
            delta = pseudo_gradient(self.weights, updates)
        self.weights, self.server_state = server_step(
            self.strategy, self.weights, delta, self.server_state
        )
        return True

    def _distributed_step(
        self, round_secagg: SecAggRound, total: np.ndarray, dp: DistributedSum
    ) -> dict[str, np.ndarray]:
        """Distributed DP: the unmasked sum is sum_i (sum of clipped per-record gradients
        + noise share); divided by the expected batch it is the DP-SGD gradient of the
        whole federation, and ``-lr`` times it is the pseudo-gradient the strategy applies
        (FedAvgM's server momentum gives Dopamine's SGD with momentum)."""
        assert round_secagg.skellam is not None
        noisy = decode_sum(round_secagg.skellam, total, rotation_seed=round_secagg.rotation_seed)
        gradient = unflatten(noisy / dp.expected_batch, self.weights, round_secagg.keys)
        return {k: -self.train_config.lr * g for k, g in gradient.items()}

    def _aggregate_lottery(self, updates: Sequence[Update], lottery: LotteryServer) -> bool:
        """Masked mean over the sites that kept each coordinate, then server momentum."""
        if self.central_dp is not None:
            raise ValueError("strategy 'fedltn' does not support central DP")
        if self.secagg is not None:
            if not isinstance(self._session, Finished) or self._round_secagg is None:
                return False  # the session aborted: nothing was revealed, nothing applied
            plan, survivors = self._round_secagg, len(self._session.survivors)
            total = plan.quantizer.decode(self._session.total, survivors)
            lottery.aggregate_secure(
                total, survivors, plan.keys, plan.mask_keys, plan.quantizer.clip
            )
        else:
            missing = [u.site for u in updates if u.sparse is None]
            if missing:
                raise ValueError(f"strategy 'fedltn': no sparse update from {missing}")
            lottery.aggregate(
                [(u.site, u.sparse, float(u.num_samples)) for u in updates if u.sparse is not None]
            )
        self.weights = copy_weights(lottery.weights)
        return True

    def evaluate_request(self, split: Literal["val", "test"]) -> EvaluateRequest:
        return EvaluateRequest(round=self.rounds_done, weights=self.weights, split=split)

    def state_dict(self) -> dict[str, object]:
        state: dict[str, object] = {
            "weights": copy_weights(self.weights),
            "rounds_done": self.rounds_done,
            "server_state": {k: copy_weights(v) for k, v in self.server_state.items()},
        }
        if self.lottery is not None:  # momentum and each site's last mask
            state["lottery"] = self.lottery.state_dict()
        return state

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.weights = copy_weights(state["weights"])  # type: ignore[arg-type]
        self.rounds_done = int(state["rounds_done"])  # type: ignore[call-overload]
        server: dict[str, Weights] = state["server_state"]  # type: ignore[assignment]
        self.server_state = {k: copy_weights(v) for k, v in server.items()}
        if self.lottery is not None:
            lottery: dict[str, dict[str, np.ndarray]] = dict(state.get("lottery") or {})  # type: ignore[call-overload]
            self.lottery.load_state_dict({**lottery, "weights": copy_weights(self.weights)})
