"""The in-process engine (the default): every site lives in this process and messages are
passed by reference. Deterministic: the same objects and seed give bit-identical results.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from medsilo.fed.coordinator import Coordinator
from medsilo.fed.messages import Evaluation, Refusal, Update
from medsilo.fed.site import Site


@dataclass(frozen=True)
class RoundResult:
    round: int
    replies: Sequence[Update | Refusal]
    evaluations: Sequence[Evaluation] = field(default_factory=tuple)
    seconds: float = 0.0
    aggregated: bool = True
    """False when too few sites sent an update and the global weights were kept."""
    secagg: Mapping[str, object] = field(default_factory=dict)
    """What the coordinator saw of the round's secure-aggregation session."""


class LocalEngine:
    """Drives a :class:`Coordinator` and its :class:`Site` objects round by round."""

    name = "local"

    def run(
        self,
        coordinator: Coordinator,
        sites: Mapping[str, Site],
        rounds: int,
        on_round: Callable[[RoundResult], None] | None = None,
        on_site: Callable[[int, str], None] | None = None,
        evaluate_every: int = 1,
        splits: Sequence[Literal["val", "test"]] = ("val", "test"),
    ) -> None:
        """Run rounds ``coordinator.rounds_done + 1 .. rounds``; call ``on_round`` after each
        (the run directory checkpoints there) and ``on_site`` after each site's reply
        (for progress displays). ``evaluate_every = 0`` evaluates only the
        last round."""
        for round_ in range(coordinator.rounds_done + 1, rounds + 1):
            start = time.perf_counter()
            plans = coordinator.plan(round_)
            replies: list[Update | Refusal] = []
            for name, plan in plans.items():
                replies.append(sites[name].on_plan(plan))
                sites[name].mark_sent()  # the coordinator holds the reply
                if on_site is not None:
                    on_site(round_, name)
            if coordinator.secagg is not None:
                participants = [r.site for r in replies if isinstance(r, Update)]
                outbox = coordinator.secagg_open(participants)
                while outbox:  # the five stages of the session, carried by reference
                    inbox = [sites[site].on_secagg(message) for site, message in outbox.items()]
                    for site in outbox:
                        sites[site].mark_sent()
                    outbox = coordinator.secagg_step(inbox)
            aggregated = coordinator.aggregate(round_, replies)
            evaluations: list[Evaluation] = []
            last = round_ == rounds
            if last or (evaluate_every > 0 and round_ % evaluate_every == 0):
                for split in splits:
                    request = coordinator.evaluate_request(split)
                    evaluations += [site.on_evaluate(request) for site in sites.values()]
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
