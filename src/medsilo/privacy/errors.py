"""Errors of the privacy part: a bad parameter, a spent budget, a damaged ledger.

All are :class:`medsilo.errors.MedsiloError`: the CLI prints the message and exits with
code 2, without a traceback. Every message names the parameter (or ledger row), the rule
that was broken and the value received, and says what to do.
"""

from __future__ import annotations

from medsilo.errors import ConfigError, MedsiloError


class PrivacyConfigError(ConfigError):
    """A privacy parameter (epsilon, delta, sampling rate, noise, clip, steps) breaks a rule."""


class BudgetExceededError(MedsiloError):
    """A release would take the site past the privacy budget it set for itself.

    Nothing was written and nothing may leave the site. ``epsilon_after`` is what the
    site would have spent, ``budget_epsilon`` what it allows.
    """

    def __init__(self, message: str, *, epsilon_after: float, budget_epsilon: float) -> None:
        super().__init__(message)
        self.epsilon_after = epsilon_after
        self.budget_epsilon = budget_epsilon


class LedgerError(MedsiloError):
    """A ledger file cannot be used."""


class LedgerNotFoundError(LedgerError):
    """No ledger exists where one was expected."""


class LedgerCorruptError(LedgerError):
    """A ledger fails its checks: broken hash chain, edited or missing row, unreadable file.

    ``row`` is the sequence number of the first bad row, or ``None`` when the file as a
    whole is bad.
    """

    def __init__(self, message: str, *, row: int | None = None) -> None:
        super().__init__(message)
        self.row = row
