"""``Site``: the round logic a hospital runs. It holds the data, which never leaves it;
it answers a :class:`RoundPlan` with an :class:`Update` and an :class:`EvaluateRequest`
with an :class:`Evaluation`. It keeps its local layers (FedBN) between rounds.

Every engine drives the same object; an engine only carries the messages.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from medsilo.data.types import SiteData
from medsilo.fed.dp import DistributedDp, LocalDp, SiteDp
from medsilo.fed.lottery import LotteryClient, secure_input
from medsilo.fed.messages import (
    EvaluateRequest,
    Evaluation,
    Refusal,
    RoundPlan,
    TrainConfig,
    Update,
    Weights,
    copy_weights,
)
from medsilo.fed.personalization import FineTuneResult, PersonalizationSpec, fine_tune
from medsilo.fed.secure import SecAggRound, flatten
from medsilo.fed.training import (
    evaluate,
    get_weights,
    per_sample_gradients,
    predict_proba,
    set_weights,
    train_local,
)
from medsilo.privacy.dpsgd import secret_seed, train_dpsgd
from medsilo.privacy.ledger import Release
from medsilo.privacy.skellam import encode_contributions
from medsilo.secagg import crypto
from medsilo.secagg.client import SiteInit, SiteSigned, SiteState, site_step
from medsilo.secagg.messages import MaskedInput, Setup, ToCoordinator, ToSite


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (study seed, site index, round), via SeedSequence."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> np.uint64(1))


class Site:
    """One hospital's participant in a study."""

    def __init__(
        self,
        index: int,
        data: SiteData,
        model_factory: Callable[[], nn.Module],
        local_keys: frozenset[str],
        seed: int,
        dp: SiteDp | None = None,
        lottery: LotteryClient | None = None,
    ) -> None:
        self.index = index
        self.name = data.name
        self.data = data
        self.model = model_factory()
        self.local_keys = local_keys
        self.seed = seed
        self.dp = dp
        # Long-term Ed25519 identity for secure aggregation: the private key never leaves
        # the site; the verify key is registered with every party up front.
        self.signing_key, self.verify_key = crypto.ed25519_keypair()
        self.verify_keys: dict[str, bytes] = {}
        self._secagg: SiteState | None = None
        self._pending_release: int | None = None
        """Distributed DP: the ledger row of this round's release, awaiting its outcome."""
        self._outgoing: list[int] = []
        """Ledger rows of releases in a reply handed to the engine, not yet marked sent."""
        self._masked: list[int] = []
        """Under secure aggregation: ledger rows that leave with this round's masked input."""
        self._tensors = {
            split: (
                torch.from_numpy(getattr(data, f"x_{split}")),
                torch.from_numpy(getattr(data, f"y_{split}")),
            )
            for split in ("train", "val", "test")
        }
        self.local_weights = {k: v for k, v in get_weights(self.model).items() if k in local_keys}
        self.lottery = lottery
        """FedLTN / LotteryFL state (masks, local layers): :mod:`medsilo.fed.lottery`."""

    def _load_global(self, weights: dict[str, np.ndarray] | object) -> None:
        set_weights(self.model, weights)  # type: ignore[arg-type]
        set_weights(self.model, self.local_weights)

    def on_plan(self, plan: RoundPlan) -> Update | Refusal:
        """Train from the global weights; return the delta on the shared keys.

        With differential privacy the site first asks its ledger whether this round's
        release fits its own budget (a :class:`Refusal` if not), and records the release
        in the ledger, fsync-ed, before the update is returned (write-ahead).
        """
        self._masked = []  # a masked input that never went out (an aborted session) is not sent
        if self.dp is not None:
            check = self.dp.ledger.would_exceed(self.dp.event())
            if check.exceeds:
                budget = self.dp.ledger.budget
                return Refusal(
                    site=self.name,
                    round=plan.round,
                    reason=(
                        f"privacy budget: this round would bring epsilon to "
                        f"{check.epsilon_after:.4g}, over the site's budget {budget}"
                    ),
                )
        if isinstance(self.dp, DistributedDp):
            return self._distributed_round(plan, self.dp)
        if self.lottery is not None:
            return self._lottery_round(plan, self.lottery)
        self._load_global(plan.weights)
        anchor = self._proximal_anchor(plan)
        x, y = self._tensors["train"]
        metrics: dict[str, float] = {}
        if isinstance(self.dp, LocalDp):
            run = train_dpsgd(
                self.model,
                x,
                y,
                sample_rate=self.dp.sample_rate,
                steps=self.dp.steps_per_round,
                noise_multiplier=self.dp.noise_multiplier,
                clip=self.dp.clip,
                lr=plan.config.lr,
                momentum=plan.config.momentum,
                weight_decay=plan.config.weight_decay,
                sampling_seed=secret_seed(self.dp.secret, plan.round, 1),
                noise=torch.Generator().manual_seed(secret_seed(self.dp.secret, plan.round, 2)),
                anchor=anchor,
                proximal_mu=plan.config.proximal_mu,
            )
            metrics["train_loss"] = run.mean_loss
        else:
            metrics["train_loss"] = train_local(
                self.model,
                x,
                y,
                plan.config,
                seed=derive_seed(self.seed, self.index, plan.round),
                anchor=anchor,
            )
        trained = get_weights(self.model)
        self.local_weights = {k: trained[k] for k in self.local_keys}
        delta = {k: trained[k] - np.asarray(v) for k, v in plan.weights.items()}
        if isinstance(plan.secagg, SecAggRound):
            encoded = plan.secagg.quantizer.encode(flatten(delta, plan.secagg.keys))
            self._secagg = SiteInit(
                self.name, self.signing_key, self.verify_keys, plan.secagg.quantizer.bits, encoded
            )
        if self.dp is not None:
            entry = self.dp.ledger.record(
                Release.of_arrays(
                    round=plan.round, event=self.dp.event(), clip=self.dp.clip, arrays=delta
                )
            )
            self._leaves(entry.seq, masked=plan.secagg is not None)
            metrics["epsilon"] = float(entry.epsilon_after or 0.0)
        if self.dp is not None:
            # The training loss is a statistic of the private data outside the accounted
            # release: it stays at the site.
            metrics.pop("train_loss")
        masked = plan.secagg is not None
        return Update(
            site=self.name,
            round=plan.round,
            delta={} if masked else delta,
            num_samples=self.data.num_train,
            metrics=metrics,
            masked=masked,
        )

    @staticmethod
    def _proximal_anchor(plan: RoundPlan) -> dict[str, torch.Tensor] | None:
        """FedProx's anchor, the global weights: needed only when mu > 0."""
        if plan.config.proximal_mu <= 0:
            return None
        return {k: torch.from_numpy(np.asarray(v)).clone() for k, v in plan.weights.items()}

    def _distributed_round(self, plan: RoundPlan, dp: DistributedDp) -> Update | Refusal:
        """Distributed DP (:mod:`medsilo.fed.dp`): one DP-SGD step of the federation. The
        site Poisson-samples its records with its secret, computes each sampled record's
        gradient at the global weights, and encodes their clipped sum plus its Skellam
        share (also with no record sampled: the share is never skipped). The release is
        recorded, planned for t shares, before the masked vector can leave."""
        secure = plan.secagg
        if not isinstance(secure, SecAggRound) or secure.skellam != dp.skellam:
            return Refusal(
                self.name,
                plan.round,
                "distributed DP: the round plan does not carry this site's agreed noise "
                "plan (secure aggregation with the study's Skellam plan); nothing was sent",
            )
        self._load_global(plan.weights)
        x, y = self._tensors["train"]
        sampler = np.random.default_rng(secret_seed(dp.secret, plan.round, 1))
        chosen = np.flatnonzero(sampler.random(len(y)) < dp.sample_rate)
        index = torch.from_numpy(chosen)
        rows = per_sample_gradients(self.model, x[index], y[index], secure.keys)
        encoded = encode_contributions(
            dp.skellam,
            rows,
            rng=np.random.default_rng(secret_seed(dp.secret, plan.round, 2)),
            rotation_seed=secure.rotation_seed,
        )
        self._secagg = SiteInit(
            self.name, self.signing_key, self.verify_keys, secure.quantizer.bits, encoded
        )
        entry = dp.ledger.record(
            Release.of_arrays(
                round=plan.round,
                event=dp.event(),
                clip=dp.clip,
                arrays={"encoded": encoded},
                collusion_event=dp.collusion_event(),
            )
        )
        self._pending_release = entry.seq
        self._leaves(entry.seq, masked=True)
        metrics = {
            "epsilon": float(entry.epsilon_after or 0.0),
            "epsilon_collusion": dp.ledger.epsilon_spent(view="collusion"),
        }
        return Update(self.name, plan.round, {}, self.data.num_train, metrics, masked=True)

    def _train_lottery(
        self, round_: int, config: TrainConfig, model: nn.Module
    ) -> dict[str, float]:
        """One round of local training (DP-SGD in ``local`` mode) for the lottery path."""
        x, y = self._tensors["train"]
        if isinstance(self.dp, LocalDp):
            run = train_dpsgd(
                model,
                x,
                y,
                sample_rate=self.dp.sample_rate,
                steps=self.dp.steps_per_round,
                noise_multiplier=self.dp.noise_multiplier,
                clip=self.dp.clip,
                lr=config.lr,
                momentum=config.momentum,
                weight_decay=config.weight_decay,
                sampling_seed=secret_seed(self.dp.secret, round_, 1),
                noise=torch.Generator().manual_seed(secret_seed(self.dp.secret, round_, 2)),
            )
            return {"train_loss": run.mean_loss}
        seed = derive_seed(self.seed, self.index, round_)
        return {"train_loss": train_local(model, x, y, config, seed=seed)}

    def _val_accuracy(self, model: nn.Module) -> float:
        """Accuracy on the validation split (the training split when there is none)."""
        x, y = self._tensors["val"] if len(self._tensors["val"][1]) else self._tensors["train"]
        return float(np.mean(predict_proba(model, x).argmax(axis=1) == y.numpy()))

    def _lottery_round(self, plan: RoundPlan, client: LotteryClient) -> Update:
        """FedLTN / LotteryFL round (:mod:`medsilo.fed.lottery`): start from ``mask x
        global`` (or the Jump-Start weights), train with the mask held, prune, and send
        only the kept values and the masks (sparse wire format); normalization layers
        (FedLTN) stay here. Under secure aggregation the site sends its masked delta and
        its masks over the whole model instead (:func:`~medsilo.fed.lottery.secure_input`).
        With DP the pruning decision must not read the validation split (the study file
        requires ``accuracy_threshold = 0``), and accuracies stay at the site.
        """
        config = plan.config
        if client.spec.jump_start_epochs and not client.jump_start_done:
            if self.dp is not None:
                raise ValueError("Jump-Start with differential privacy is not available")
            one_epoch = TrainConfig(
                local_epochs=1,
                batch_size=config.batch_size,
                lr=config.lr,
                momentum=config.momentum,
                weight_decay=config.weight_decay,
            )
            x, y = self._tensors["train"]
            epochs = iter(range(client.spec.jump_start_epochs))

            def epoch(model: nn.Module) -> dict[str, float]:
                seed = derive_seed(self.seed, self.index, 0, next(epochs))
                return {"train_loss": train_local(model, x, y, one_epoch, seed=seed)}

            client.jump_start(self.model, epoch, self._val_accuracy)
        secure = isinstance(plan.secagg, SecAggRound)
        if plan.sparse is not None:
            start = client.download(plan.sparse)
        elif secure and client.jump_started is not None and plan.round == 1:
            start = None  # round 1 after Jump-Start: the site's own weights
        else:
            start = dict(plan.weights)
        private = self.dp is not None
        values, masks, metrics = client.train_round(
            self.model,
            start,
            lambda model: self._train_lottery(plan.round, config, model),
            (lambda model: 1.0) if private else self._val_accuracy,
        )
        self.local_weights = copy_weights(client.local_weights)
        payload: bytes | None = None
        if isinstance(plan.secagg, SecAggRound):
            vector = secure_input(
                values,
                masks,
                plan.weights,
                plan.secagg.keys,
                plan.secagg.mask_keys,
                plan.secagg.quantizer.clip,
            )
            encoded = plan.secagg.quantizer.encode(vector)
            self._secagg = SiteInit(
                self.name, self.signing_key, self.verify_keys, plan.secagg.quantizer.bits, encoded
            )
            release = {"secure_input": vector}
        else:
            payload = client.upload(values, masks)
        if self.dp is not None:
            if payload is not None:
                record = Release.of_payload(
                    round=plan.round, event=self.dp.event(), clip=self.dp.clip, payload=payload
                )
            else:
                record = Release.of_arrays(
                    round=plan.round, event=self.dp.event(), clip=self.dp.clip, arrays=release
                )
            entry = self.dp.ledger.record(record)
            self._leaves(entry.seq, masked=secure)
            metrics["epsilon"] = float(entry.epsilon_after or 0.0)
            # Statistics of the private data outside the accounted release stay here.
            metrics.pop("train_loss", None)
            metrics.pop("val_accuracy", None)
        return Update(
            site=self.name,
            round=plan.round,
            delta={},
            num_samples=self.data.num_train,
            metrics=metrics,
            masked=secure,
            sparse=payload,
        )

    def personalize(
        self,
        spec: PersonalizationSpec,
        weights: Weights,
        config: TrainConfig,
        round_: int,
        splits: tuple[str, ...] = ("test",),
    ) -> tuple[FineTuneResult, list[Evaluation]]:
        """The final local step (:mod:`medsilo.fed.personalization`): fine-tune the
        global model (with this site's local layers or FedLTN mask) on the training
        split, then evaluate it. With ``local`` DP the steps are DP-SGD and recorded in
        this site's ledger; ``round_`` is the ledger round they are recorded under."""
        if isinstance(self.dp, DistributedDp):
            raise ValueError(
                "fine-tuning with distributed DP is not available: a site's own DP-SGD "
                "steps would need the full noise (mode 'local'), not a share"
            )
        if self.dp is not None and not isinstance(self.dp, LocalDp):
            raise ValueError(
                "fine-tuning with site-level (central) DP is not available: DP-SGD steps "
                "are record-level and cannot join a site-level ledger"
            )
        if self.lottery is not None:
            set_weights(self.model, self.lottery.personalized(weights))
        else:
            self._load_global(weights)
        x, y = self._tensors["train"]
        result = fine_tune(
            self.model,
            x,
            y,
            spec,
            config,
            seed=derive_seed(self.seed, self.index, round_, 9),
            round=round_,
            dp=self.dp,
            masks=self.lottery.masks if self.lottery is not None else None,
        )
        evaluations = []
        for split in splits:
            xs, ys = self._tensors[split]
            evaluations.append(
                Evaluation(
                    site=self.name,
                    round=round_,
                    split=split,  # type: ignore[arg-type]
                    num_samples=len(ys),
                    metrics=evaluate(self.model, xs, ys),
                )
            )
        return result, evaluations

    def on_secagg(self, message: ToSite) -> ToCoordinator:
        """One stage of this round's secure-aggregation session."""
        if self._secagg is None:
            raise RuntimeError(f"site {self.name!r}: no secure-aggregation input this round")
        dp = self.dp if isinstance(self.dp, DistributedDp) else None
        if dp is not None and isinstance(message, Setup):
            needed = dp.skellam.min_survivors
            if message.config.threshold < needed:
                raise ValueError(
                    f"site {self.name!r}: the session's threshold "
                    f"{message.config.threshold} is below the {needed} noise shares this "
                    "site's distributed-DP plan counts on; it will not take part"
                )
        before = self._secagg
        self._secagg, reply = site_step(self._secagg, message)
        if dp is not None and isinstance(before, SiteSigned) and self._pending_release is not None:
            # Unmasking now releases the sum of the signed survivors' inputs: exactly
            # that many noise shares reached it (at least t, or the session aborts).
            reached = dp.event(len(before.survivors))
            dp.ledger.record_outcome(
                self._pending_release,
                reached,
                note=f"{len(before.survivors)} noise shares reached the sum",
            )
            self._pending_release = None
        if isinstance(reply, MaskedInput):
            self._outgoing += self._masked
            self._masked = []
        return reply

    def _leaves(self, seq: int, *, masked: bool) -> None:
        """Ledger row ``seq`` leaves with this round's reply, or with its masked input."""
        (self._masked if masked else self._outgoing).append(seq)

    def mark_sent(self) -> None:
        """The engine has handed this site's last reply to its transport: mark the releases
        it carried as sent in the ledger (:meth:`Ledger.mark_sent`; a release recorded
        but never handed over stays unmarked, the ledger's write-ahead rule)."""
        if self.dp is not None:
            for seq in self._outgoing:
                self.dp.ledger.mark_sent(seq)
        self._outgoing = []

    def on_evaluate(self, request: EvaluateRequest) -> Evaluation:
        if self.lottery is not None:  # the personalized model: mask x global + local layers
            set_weights(self.model, self.lottery.personalized(request.weights))
        else:
            self._load_global(request.weights)
        x, y = self._tensors[request.split]
        return Evaluation(
            site=self.name,
            round=request.round,
            split=request.split,
            num_samples=len(y),
            metrics=evaluate(self.model, x, y),
        )

    def state_dict(self) -> dict[str, np.ndarray]:
        """What a checkpoint must keep of this site (its local layers; FedLTN: its masks
        and lottery state under ``lottery/``)."""
        state = copy_weights(self.local_weights)
        if self.lottery is not None:
            state.update({f"lottery/{k}": v for k, v in self.lottery.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        prefix = "lottery/"
        lottery = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        self.local_weights = copy_weights(
            {k: v for k, v in state.items() if not k.startswith(prefix)}
        )
        if self.lottery is not None and lottery:
            self.lottery.load_state_dict(lottery)
