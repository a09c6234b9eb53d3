"""The curator: the only object that holds the private table and spends privacy.

AIM and MST (McKenna et al.) touch the data in exactly two ways, and both go through
:class:`Curator`, which charges each to a zCDP budget and refuses to overspend it:

* :meth:`Curator.measure`: a marginal's count vector plus Gaussian noise N(0, sigma^2 I)
  (L2 sensitivity 1 under add/remove-one-record, so it costs ``1 / (2 sigma^2)``);
* :meth:`Curator.select`: the exponential mechanism over candidate marginals, scored by a
  quality function of the true marginal and public state (costs ``epsilon^2 / 8``).

Everything else (estimating a graphical model from the noisy measurements, sampling the
clone) is post-processing of what the curator returned. Noise comes from an explicit
``numpy.random.Generator``, never from global state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medsilo.clone.accounting import gaussian_rho
from medsilo.errors import ConfigError

Clique = tuple[str, ...]

# Budget arithmetic is floating point: allow this relative slack before refusing.
_SLACK = 1e-9


@dataclass(frozen=True)
class Spend:
    """One charge against the budget."""

    kind: str  # "gaussian" or "exponential"
    rho: float
    clique: Clique
    sigma: float | None = None
    epsilon: float | None = None


@dataclass
class Curator:
    """Holds the encoded table (``codes``, one int array per column, over ``sizes``)."""

    codes: dict[str, np.ndarray]
    sizes: dict[str, int]
    rho: float
    rng: np.random.Generator
    spends: list[Spend] = field(default_factory=list)

    @property
    def spent(self) -> float:
        return float(sum(s.rho for s in self.spends))

    @property
    def remaining(self) -> float:
        return max(0.0, self.rho - self.spent)

    def _check(self, kind: str, rho: float) -> None:
        if self.spent + rho > self.rho * (1 + _SLACK):
            raise ConfigError(
                f"mechanism bug: a {kind} step of rho={rho:.4g} would exceed the budget "
                f"rho={self.rho:.4g} (spent {self.spent:.4g}); nothing was measured"
            )

    def _marginal(self, clique: Clique) -> np.ndarray:
        shape = tuple(self.sizes[c] for c in clique)
        index = np.ravel_multi_index(tuple(self.codes[c] for c in clique), shape)
        return np.bincount(index, minlength=int(np.prod(shape))).astype(np.float64)

    def measure(self, clique: Clique, sigma: float) -> np.ndarray:
        """The marginal of ``clique`` (flattened, C order) + N(0, sigma^2) per cell."""
        rho = gaussian_rho(sigma)
        self._check("gaussian", rho)
        self.spends.append(Spend("gaussian", rho, tuple(clique), sigma=sigma))
        x = self._marginal(clique)
        noisy: np.ndarray = x + self.rng.normal(0.0, sigma, size=x.size)
        return noisy

    def select(
        self,
        candidates: Sequence[Clique],
        quality: Callable[[Clique, np.ndarray], float],
        epsilon: float,
        sensitivity: float,
    ) -> Clique:
        """Exponential mechanism (McSherry & Talwar 2007): pick candidate ``c`` with
        probability proportional to ``exp(epsilon / (2 sensitivity) * quality(c, x_c))``,
        where ``x_c`` is the true marginal and ``sensitivity`` bounds how much one record
        changes any quality. Costs ``epsilon^2 / 8`` (Cesar & Rogers 2021)."""
        if not candidates:
            raise ValueError("select needs at least one candidate")
        rho = epsilon**2 / 8
        self._check("exponential", rho)
        scores = np.array([quality(c, self._marginal(c)) for c in candidates])
        logits = 0.5 * epsilon / sensitivity * (scores - scores.max())
        p = np.exp(logits - np.logaddexp.reduce(logits))
        chosen = tuple(candidates[int(self.rng.choice(len(candidates), p=p / p.sum()))])
        self.spends.append(Spend("exponential", rho, chosen, epsilon=epsilon))
        return chosen

    def summary(self) -> dict[str, Any]:
        return {
            "rho": self.rho,
            "rho_spent": self.spent,
            "gaussian_measurements": sum(s.kind == "gaussian" for s in self.spends),
            "exponential_selections": sum(s.kind == "exponential" for s in self.spends),
        }
