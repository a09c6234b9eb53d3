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
``steps`` (how many times the mechanism ran). Two events need more numbers than these
five, kept in :meth:`params` (the ledger's ``params`` column): the Skellam mechanism (its
variance and both sensitivities) and a zCDP release (its rho).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeAlias

from medsilo.privacy import _validate as check
from medsilo.privacy.errors import PrivacyConfigError

if TYPE_CHECKING:  # dp-accounting takes seconds to import: only where events are converted
    from dp_accounting import dp_event

Mechanism = Literal["dp_sgd", "dp_fedavg", "gaussian", "skellam", "zcdp", "non_private"]
Unit = Literal["record", "site"]

MECHANISMS: tuple[Mechanism, ...] = (
    "dp_sgd",
    "dp_fedavg",
    "gaussian",
    "skellam",
    "zcdp",
    "non_private",
)


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

    def params(self) -> dict[str, Any]:
        """Parameters beyond the five attributes: none."""
        return {}

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

    def params(self) -> dict[str, Any]:
        """Parameters beyond the five attributes: none."""
        return {}

    def to_dp_event(self) -> dp_event.DpEvent:
        """The same release as a dp-accounting event."""
        from dp_accounting import dp_event

        return dp_event.SelfComposedDpEvent(
            dp_event.GaussianDpEvent(self.noise_multiplier), self.steps
        )

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)


@dataclass(frozen=True, slots=True)
class SkellamEvent:
    """``steps`` releases of a sum carrying ``Sk(mu)`` noise (integer units), each
    contribution bounded by ``l2_sensitivity`` / ``l1_sensitivity`` after rounding, each
    unit taking part with probability ``sample_rate`` (Poisson sampling; 1 = always).

    The distributed-DP mechanism of Agarwal, Kairouz, Liu (NeurIPS 2021): sites add
    Skellam shares that secure aggregation sums (:mod:`medsilo.privacy.skellam`, which
    also gives its RDP bound; the accountants call it). ``noise_multiplier`` is
    sqrt(mu) / Delta_2, the Gaussian noise multiplier of the same variance, for display.

    ``sample_rate < 1`` claims amplification by subsampling, which holds only if the
    adversary does not learn who was sampled: right for records a site samples itself
    (DP-SGD), wrong for sites that the coordinator picks (site-level DP against the
    coordinator: use ``sample_rate=1``).

    >>> event = SkellamEvent(mu=400.0, l2_sensitivity=2.0, l1_sensitivity=4.0)
    >>> event.mechanism, event.noise_multiplier
    ('skellam', 10.0)
    """

    mu: float
    l2_sensitivity: float
    l1_sensitivity: float
    sample_rate: float = 1.0
    steps: int = 1
    unit: Unit = "record"

    mechanism: ClassVar[Mechanism] = "skellam"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "mu", check.positive("mu", self.mu, "A release without noise is non-private."))
        set_(self, "l2_sensitivity", check.positive("l2_sensitivity", self.l2_sensitivity))
        l1 = check.positive("l1_sensitivity", self.l1_sensitivity)
        if l1 < self.l2_sensitivity:
            raise check.fail(
                "l1_sensitivity",
                f">= l2_sensitivity = {self.l2_sensitivity} (||v||_1 >= ||v||_2)",
                l1,
            )
        set_(self, "l1_sensitivity", l1)
        set_(self, "sample_rate", check.sample_rate("sample_rate", self.sample_rate))
        set_(self, "steps", check.count("steps", self.steps))
        if self.unit not in ("record", "site"):
            raise check.fail("unit", "'record' or 'site'", self.unit)

    @property
    def noise_multiplier(self) -> float:
        """sqrt(mu) / Delta_2: the Gaussian noise multiplier with the same variance."""
        return math.sqrt(self.mu) / self.l2_sensitivity

    def params(self) -> dict[str, Any]:
        return {
            "mu": self.mu,
            "l2_sensitivity": self.l2_sensitivity,
            "l1_sensitivity": self.l1_sensitivity,
            "unit": self.unit,
        }

    def to_dp_event(self) -> dp_event.DpEvent:
        """dp-accounting has no Skellam event: only the RDP accountants take this one."""
        from dp_accounting import dp_event

        return dp_event.UnsupportedDpEvent()

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)


@dataclass(frozen=True, slots=True)
class ZcdpEvent:
    """``steps`` releases, each ``rho``-zero-concentrated DP (Bun & Steinke, TCC 2016).

    rho-zCDP means RDP of ``rho * alpha`` at every order alpha > 1 (their Def. 1.1), so it
    composes in the RDP accountants exactly. What produces it: the Gaussian mechanism
    with sensitivity Delta and noise sigma is (Delta^2 / (2 sigma^2))-zCDP (their Prop.
    1.6), and the exponential mechanism with epsilon is (epsilon^2 / 8)-zCDP (Cesar &
    Rogers, "Bounding, concentrating, and truncating", ALT 2021), which is how AIM and MST
    (McKenna et al.) spend their budgets. ``noise_multiplier`` is 1 / sqrt(2 rho), the
    Gaussian noise multiplier with the same RDP curve, for display. Unit: one record.

    >>> ZcdpEvent(rho=0.5).noise_multiplier
    1.0
    """

    rho: float
    steps: int = 1

    mechanism: ClassVar[Mechanism] = "zcdp"
    unit: ClassVar[Unit] = "record"
    sample_rate: ClassVar[float] = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "rho", check.positive("rho", self.rho, "rho = 0 is a release without noise.")
        )
        object.__setattr__(self, "steps", check.count("steps", self.steps))

    @property
    def noise_multiplier(self) -> float:
        """1 / sqrt(2 rho): the Gaussian noise multiplier of the same zCDP."""
        return 1.0 / math.sqrt(2.0 * self.rho)

    def params(self) -> dict[str, Any]:
        return {"rho": self.rho}

    def to_dp_event(self) -> dp_event.DpEvent:
        """The same release as a dp-accounting event (RDP accountant only)."""
        from dp_accounting import dp_event

        return dp_event.SelfComposedDpEvent(dp_event.ZCDpEvent(self.rho), self.steps)

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

    def params(self) -> dict[str, Any]:
        """Parameters beyond the five attributes: none."""
        return {}

    def to_dp_event(self) -> dp_event.DpEvent:
        """The same release as a dp-accounting event."""
        from dp_accounting import dp_event

        return dp_event.NonPrivateDpEvent()

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)


PrivacyEvent: TypeAlias = (
    DpSgdEvent | DpFedAvgEvent | GaussianEvent | SkellamEvent | ZcdpEvent | NonPrivateEvent
)
"""Any event an accountant or a ledger accepts."""

EVENT_TYPES: tuple[type[PrivacyEvent], ...] = (
    DpSgdEvent,
    DpFedAvgEvent,
    GaussianEvent,
    SkellamEvent,
    ZcdpEvent,
    NonPrivateEvent,
)


def event_from_fields(
    mechanism: str,
    sample_rate: float,
    noise_multiplier: float,
    steps: int,
    params: Mapping[str, Any] | None = None,
) -> PrivacyEvent:
    """Rebuild an event from its five-attribute form plus ``params`` (a ledger row, a
    JSON object). ``params`` carries what the five attributes cannot: Skellam's ``mu``
    and sensitivities, zCDP's ``rho``; the stored ``noise_multiplier`` of those two is
    derived, so it must agree with them.

    >>> event_from_fields("dp_sgd", 0.5, 1.2, 3)
    DpSgdEvent(sample_rate=0.5, noise_multiplier=1.2, steps=3)
    >>> event_from_fields("gaussian", 1.0, 2.0, 1)
    GaussianEvent(noise_multiplier=2.0, steps=1)
    >>> event_from_fields("zcdp", 1.0, 1.0, 2, {"rho": 0.5})
    ZcdpEvent(rho=0.5, steps=2)
    """
    extra = dict(params or {})
    event: PrivacyEvent
    if mechanism == "dp_sgd":
        event = DpSgdEvent(sample_rate, noise_multiplier, steps)
    elif mechanism == "dp_fedavg":
        event = DpFedAvgEvent(sample_rate, noise_multiplier, steps)
    elif mechanism == "skellam":
        keys = ("mu", "l2_sensitivity", "l1_sensitivity", "unit")
        _require(mechanism, extra, keys)
        event = SkellamEvent(
            extra["mu"],
            extra["l2_sensitivity"],
            extra["l1_sensitivity"],
            sample_rate,
            steps,
            extra["unit"],
        )
    elif mechanism in ("gaussian", "zcdp", "non_private"):
        if check.real("sample_rate", sample_rate) != 1.0:
            raise check.fail("sample_rate", f"1 for mechanism {mechanism!r}", sample_rate)
        if mechanism == "gaussian":
            event = GaussianEvent(noise_multiplier, steps)
        elif mechanism == "zcdp":
            _require(mechanism, extra, ("rho",))
            event = ZcdpEvent(extra["rho"], steps)
        else:
            if check.real("noise_multiplier", noise_multiplier) != 0.0:
                raise check.fail(
                    "noise_multiplier", "0 for mechanism 'non_private'", noise_multiplier
                )
            event = NonPrivateEvent(steps)
    else:
        raise check.fail("mechanism", f"one of {', '.join(map(repr, MECHANISMS))}", mechanism)
    if set(extra) != set(event.params()):
        raise check.fail(
            "params", f"exactly the keys {sorted(event.params())} for {mechanism!r}", extra
        )
    if not math.isclose(event.noise_multiplier, noise_multiplier, rel_tol=1e-9):
        raise check.fail(
            "noise_multiplier",
            f"{event.noise_multiplier!r}, as derived from the params of {mechanism!r}",
            noise_multiplier,
        )
    return event


def event_from_dict(data: Mapping[str, Any]) -> PrivacyEvent:
    """Inverse of ``event.to_dict()``."""
    required = {"mechanism", "sample_rate", "noise_multiplier", "steps"}
    missing = required - set(data)
    if missing:
        raise PrivacyConfigError(
            f"event must have the keys mechanism, sample_rate, noise_multiplier, steps; "
            f"missing {sorted(missing)} in {data!r}."
        )
    params = {k: v for k, v in data.items() if k not in required}
    return event_from_fields(
        data["mechanism"], data["sample_rate"], data["noise_multiplier"], data["steps"], params
    )


def _require(mechanism: str, params: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in params]
    if missing:
        raise PrivacyConfigError(
            f"a {mechanism!r} event needs params {list(keys)}; missing {missing} in {params!r}."
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
        **event.params(),
    }
