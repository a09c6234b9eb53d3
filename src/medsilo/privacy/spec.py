"""``[privacy]`` in the study file: how updates are protected (:class:`DpSgdSpec`).

::

    [privacy]
    mode = "local"          # "none" | "local" | "central" | "distributed" (with secure agg.)
    clip = 2.0              # per-record L2 clipping norm C (Opacus' max_grad_norm)
    target_epsilon = 8.0    # or: noise_multiplier = 1.1
    delta = 1e-5
    accountant = "rdp"      # "rdp" | "rdp_classic" | "pld"
    batch_size = 50         # expected Poisson batch; or: sample_rate = 0.017

Modes (docs/privacy.md): ``local``: each site runs DP-SGD and adds the full noise itself,
so its update is private even against the coordinator (Dopamine's "parallel DP").
``central``: a trusted coordinator adds the noise (record level: the sites send clipped
sums; site level, ``unit = "site"``: DP-FedAvg over clipped site updates).
``distributed``: each site adds a Skellam share of the noise, which only reaches full
strength in the securely aggregated sum (Dopamine; the study rejects it without
``[secure_aggregation] enabled = true``); record level, one DP-SGD step per round.

The site's own budget (epsilon, delta) is not here: each site sets it for itself in its
ledger (:class:`medsilo.privacy.ledger.Budget`), and the study cannot raise it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medsilo.privacy import _validate as check
from medsilo.privacy.accounting import AccountantName
from medsilo.privacy.calibration import calibrate_noise_multiplier, validate_delta
from medsilo.privacy.errors import PrivacyConfigError
from medsilo.privacy.events import DpFedAvgEvent, DpSgdEvent, Unit

__all__ = ["DpMode", "DpSgdSpec"]

DpMode = Literal["none", "local", "central", "distributed"]


class DpSgdSpec(BaseModel):
    """The ``[privacy]`` section, validated once at load; errors name field, rule, value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: DpMode = "none"
    """Where the noise is added; ``"none"`` trains without differential privacy."""
    unit: Unit = "record"
    """What one neighbouring dataset differs by: one ``record`` (default) or one ``site``."""
    clip: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """L2 clipping norm C of each per-record gradient (per-site update for unit "site")."""
    noise_multiplier: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """sigma: noise std / C. Give this or ``target_epsilon``."""
    target_epsilon: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Epsilon the whole planned study may spend; sigma is calibrated to it."""
    delta: float | None = Field(default=None, gt=0, lt=1, allow_inf_nan=False)
    """delta of the guarantee; must be well below 1 / (records at the smallest site)."""
    accountant: AccountantName = "rdp"
    sample_rate: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    """Poisson sampling rate q. Give this or ``batch_size`` (or neither: [train] batch_size)."""
    batch_size: int | None = Field(default=None, ge=1)
    """Expected Poisson batch size B; q = B / n at a site of n records."""

    @model_validator(mode="after")
    def _consistent(self) -> DpSgdSpec:
        noise_fields = ("clip", "noise_multiplier", "target_epsilon", "delta")
        if self.mode == "none":
            given = [f for f in noise_fields if getattr(self, f) is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} set but mode = 'none' (no differential privacy); "
                    "set mode = 'local', 'central' or 'distributed', or remove them"
                )
            return self
        if self.clip is None:
            raise ValueError(f"clip is required with mode = {self.mode!r} (e.g. clip = 1.0)")
        if self.delta is None:
            raise ValueError(
                f"delta is required with mode = {self.mode!r}; it must be well below 1/n "
                "for the smallest site of n records (e.g. delta = 1e-5)"
            )
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError(
                "give exactly one of noise_multiplier (sigma) or target_epsilon (sigma is "
                f"calibrated to it); got {'both' if self.noise_multiplier else 'neither'}"
            )
        if self.sample_rate is not None and self.batch_size is not None:
            raise ValueError("give sample_rate or batch_size, not both (q = batch_size / n)")
        if self.unit == "site" and self.mode != "central":
            raise ValueError(
                "unit = 'site' (DP-FedAvg) needs mode = 'central': the coordinator clips "
                "each site's update and adds the noise to their sum"
            )
        return self

    @classmethod
    def parse(cls, data: Mapping[str, Any], source: str = "[privacy]") -> DpSgdSpec:
        """Validate a mapping (e.g. the TOML table); errors become :class:`PrivacyConfigError`."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            lines = []
            for item in exc.errors():
                where = ".".join(str(p) for p in item["loc"]) or "(section)"
                message = item["msg"].removeprefix("Value error, ")
                value = item.get("input")
                shown = "" if isinstance(value, dict) else f" (got {value!r})"
                lines.append(f"{source}: {where}: {message}{shown}")
            raise PrivacyConfigError("\n".join(lines)) from None

    @property
    def enabled(self) -> bool:
        """Whether updates are protected by differential privacy."""
        return self.mode != "none"

    def sampling_rate(self, dataset_size: int, default_batch_size: int | None = None) -> float:
        """q at a site of ``dataset_size`` records: ``sample_rate``, or batch size / n."""
        n = check.count("dataset_size", dataset_size)
        if self.sample_rate is not None:
            return self.sample_rate
        batch = self.batch_size if self.batch_size is not None else default_batch_size
        if batch is None:
            raise check.fail("batch_size", "set (or sample_rate)", None)
        batch = check.count("batch_size", batch)
        if batch > n:
            raise check.fail(
                "batch_size",
                f"at most the site's dataset size n = {n}",
                batch,
                "Lower the batch size or give sample_rate.",
            )
        return batch / n

    def resolve_noise_multiplier(
        self,
        *,
        sample_rate: float,
        steps: int,
        dataset_size: int | None = None,
        site: str | None = None,
    ) -> float:
        """sigma for a study of ``steps`` steps at rate q: given, or calibrated.

        Checks delta against ``dataset_size`` first (delta must be well below 1/n).
        ``steps`` is the whole planned study: rounds x local steps per round (rounds for
        site-level DP-FedAvg).
        """
        if not self.enabled or self.delta is None:
            raise PrivacyConfigError(
                "mode must be 'local' or 'central' to resolve a noise multiplier; "
                f"got {self.mode!r}."
            )
        validate_delta(self.delta, dataset_size=dataset_size, site=site, unit=self.unit)
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        assert self.target_epsilon is not None  # the validator guarantees one of the two
        return calibrate_noise_multiplier(
            target_epsilon=self.target_epsilon,
            delta=self.delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=self.accountant,
            unit=self.unit,
        ).noise_multiplier

    def event(
        self, *, sample_rate: float, noise_multiplier: float, steps: int
    ) -> DpSgdEvent | DpFedAvgEvent:
        """The privacy event of one release under this spec (one round's local steps)."""
        if self.unit == "site":
            return DpFedAvgEvent(sample_rate, noise_multiplier, steps)
        return DpSgdEvent(sample_rate, noise_multiplier, steps)
