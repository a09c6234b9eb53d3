"""Privacy events: what a site released, as immutable data.

A privacy event describes one release of information about a site's data (a model update,
a clone's measurements) by the mechanism that protected it and its parameters, nothing
else. Accountants (:mod:`medsilo.privacy.accounting`) read a sequence of events and return
epsilon; the site's ledger (:mod:`medsilo.privacy.ledger`) stores them. This follows
dp-accounting's ``dp_event.py``: events are data, accountants interpret them.

Every event is a frozen dataclass whose parameters are checked when it is built, so a bad
event never reaches an accountant or a ledger:

>>> DpSgdEvent(sample_rate=50 / 2931, noise_multiplier=1.0, steps=5800).mechanism
'dp_sgd'
>>> DpSgdEvent(sample_rate=1.5, noise_multiplier=1.0, steps=1)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
medsilo.privacy.errors.PrivacyConfigError: sample_rate must be in (0, 1] ...; got 1.5. ...

All events share five attributes, which are also the ledger's columns: ``mechanism``,
``unit`` (what one "neighbouring dataset" differs by: one ``record`` or one whole ``site``),
``sample_rate`` (q), ``noise_multiplier`` (sigma, noise std / L2 sensitivity) and
``steps`` (how many times the mechanism ran).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeAlias

from medsilo.privacy import _validate as check
from medsilo.privacy.errors import PrivacyConfigError

if TYPE_CHECKING:  # dp-accounting takes seconds to import: only where events are converted
    from dp_accounting import dp_event

Mechanism = Literal["dp_sgd", "dp_fedavg", "gaussian", "non_private"]
Unit = Literal["record", "site"]

MECHANISMS: tuple[Mechanism, ...] = ("dp_sgd", "dp_fedavg", "gaussian", "non_private")


@dataclass(frozen=True, slots=True)
class _SubsampledGaussian:
    """Fields and conversions shared by the Poisson-subsampled Gaussian events."""

    sample_rate: float
    noise_multiplier: float
    steps: int

    mechanism: ClassVar[Mechanism]
    unit: ClassVar[Unit]

    def __post_init__(self) -> None:
        check_q = check.sample_rate("sample_rate", self.sample_rate)
        object.__setattr__(self, "sample_rate", check_q)
        sigma = check.positive(
            "noise_multiplier",
            self.noise_multiplier,
            "A release without noise is a NonPrivateEvent.",
        )
        object.__setattr__(self, "noise_multiplier", sigma)
        object.__setattr__(self, "steps", check.count("steps", self.steps))

    def to_dp_event(self) -> dp_event.DpEvent:
        """The same release as a dp-accounting event."""
        return _subsampled_gaussian(self.sample_rate, self.noise_multiplier, self.steps)

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)


@dataclass(frozen=True, slots=True)
class DpSgdEvent(_SubsampledGaussian):
    """``steps`` steps of DP-SGD at one site (Abadi et al., CCS 2016).

    Each step draws a Poisson sample (each record independently with probability
    ``sample_rate`` = q), clips every per-record gradient to L2 norm C, sums them and adds
    N(0, sigma^2 C^2 I) with sigma = ``noise_multiplier``. Privacy-wise this is the
    Poisson-subsampled Gaussian mechanism with sensitivity 1 and noise sigma, composed
    ``steps`` times (Mironov, Talwar, Zhang 2019, "Renyi differential privacy of the
    sampled Gaussian mechanism"). Unit of privacy: one record of the site.

    The clip C does not enter the accounting (noise scales with it); the ledger records it.
    """

    mechanism: ClassVar[Mechanism] = "dp_sgd"
    unit: ClassVar[Unit] = "record"


@dataclass(frozen=True, slots=True)
class DpFedAvgEvent(_SubsampledGaussian):
    """``steps`` rounds of DP-FedAvg, site-level central DP (McMahan et al., ICLR 2018).

    Each round the coordinator samples each site with probability ``sample_rate`` (q, the
    fraction of sites), each sampled site's whole update is clipped to L2 norm S, and the
    coordinator adds N(0, z^2 S^2 I) to their sum with z = ``noise_multiplier``. The math
    is the Poisson-subsampled Gaussian of :class:`DpSgdEvent`, with ``steps`` = rounds;
    what differs is the unit of privacy: one whole site (all its records), not one record.
    """

    mechanism: ClassVar[Mechanism] = "dp_fedavg"
    unit: ClassVar[Unit] = "site"


@dataclass(frozen=True, slots=True)
class GaussianEvent:
    """The Gaussian mechanism without subsampling, ``steps`` times (Dwork & Roth 2014, A.1).

    A statistic of L2 sensitivity 1 released with N(0, sigma^2) noise, sigma =
    ``noise_multiplier``; e.g. a clone's noisy marginals. Unit of privacy: one record.
    ``sample_rate`` is 1 by definition.
    """

    noise_multiplier: float
    steps: int = 1

    mechanism: ClassVar[Mechanism] = "gaussian"
    unit: ClassVar[Unit] = "record"
    sample_rate: ClassVar[float] = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "noise_multiplier",
            check.positive(
                "noise_multiplier",
                self.noise_multiplier,
                "A release without noise is a NonPrivateEvent.",
            ),
        )
        object.__setattr__(self, "steps", check.count("steps", self.steps))

    def to_dp_event(self) -> dp_event.DpEvent:
        """The same release as a dp-accounting event."""
        from dp_accounting import dp_event

        return dp_event.SelfComposedDpEvent(
            dp_event.GaussianDpEvent(self.noise_multiplier), self.steps
        )

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)


@dataclass(frozen=True, slots=True)
class NonPrivateEvent:
    """A release without differential privacy (e.g. a plain FedAvg update): epsilon = inf.

    A ledger with any finite budget refuses it; it exists so that a site can ask its
    ledger about a non-private plan and get a clear refusal.
    """

    steps: int = 1

    mechanism: ClassVar[Mechanism] = "non_private"
    unit: ClassVar[Unit] = "record"
    sample_rate: ClassVar[float] = 1.0
    noise_multiplier: ClassVar[float] = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", check.count("steps", self.steps))

    def to_dp_event(self) -> dp_event.DpEvent:
        """The same release as a dp-accounting event."""
        from dp_accounting import dp_event

        return dp_event.NonPrivateDpEvent()

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)


PrivacyEvent: TypeAlias = DpSgdEvent | DpFedAvgEvent | GaussianEvent | NonPrivateEvent
"""Any event an accountant or a ledger accepts."""

EVENT_TYPES: tuple[type[PrivacyEvent], ...] = (
    DpSgdEvent,
    DpFedAvgEvent,
    GaussianEvent,
    NonPrivateEvent,
)


def event_from_fields(
    mechanism: str, sample_rate: float, noise_multiplier: float, steps: int
) -> PrivacyEvent:
    """Rebuild an event from its five-attribute form (a ledger row, a JSON object).

    >>> event_from_fields("dp_sgd", 0.5, 1.2, 3)
    DpSgdEvent(sample_rate=0.5, noise_multiplier=1.2, steps=3)
    >>> event_from_fields("gaussian", 1.0, 2.0, 1)
    GaussianEvent(noise_multiplier=2.0, steps=1)
    """
    if mechanism == "dp_sgd":
        return DpSgdEvent(sample_rate, noise_multiplier, steps)
    if mechanism == "dp_fedavg":
        return DpFedAvgEvent(sample_rate, noise_multiplier, steps)
    if mechanism in ("gaussian", "non_private"):
        if check.real("sample_rate", sample_rate) != 1.0:
            raise check.fail("sample_rate", f"1 for mechanism {mechanism!r}", sample_rate)
        if mechanism == "gaussian":
            return GaussianEvent(noise_multiplier, steps)
        if check.real("noise_multiplier", noise_multiplier) != 0.0:
            raise check.fail("noise_multiplier", "0 for mechanism 'non_private'", noise_multiplier)
        return NonPrivateEvent(steps)
    raise check.fail("mechanism", f"one of {', '.join(map(repr, MECHANISMS))}", mechanism)


def event_from_dict(data: dict[str, Any]) -> PrivacyEvent:
    """Inverse of ``event.to_dict()``."""
    missing = {"mechanism", "sample_rate", "noise_multiplier", "steps"} - set(data)
    if missing:
        raise PrivacyConfigError(
            f"event must have the keys mechanism, sample_rate, noise_multiplier, steps; "
            f"missing {sorted(missing)} in {data!r}."
        )
    return event_from_fields(
        data["mechanism"], data["sample_rate"], data["noise_multiplier"], data["steps"]
    )


def _subsampled_gaussian(q: float, sigma: float, steps: int) -> dp_event.DpEvent:
    from dp_accounting import dp_event

    return dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps
    )


def _as_dict(event: PrivacyEvent | _SubsampledGaussian) -> dict[str, Any]:
    return {
        "mechanism": event.mechanism,
        "sample_rate": event.sample_rate,
        "noise_multiplier": event.noise_multiplier,
        "steps": event.steps,
    }
