"""Boundary checks shared by the privacy modules.

Each check either returns the value, normalised (``float``/``int``), or raises
:class:`PrivacyConfigError` with ``"<parameter> must be <rule>; got <value>."`` plus a hint.
They run before any state changes.
"""

from __future__ import annotations

import math
import operator
from typing import Any

from medsilo.privacy.errors import PrivacyConfigError


def fail(parameter: str, rule: str, value: Any, hint: str = "") -> PrivacyConfigError:
    """The error for ``parameter`` breaking ``rule`` with ``value``."""
    message = f"{parameter} must be {rule}; got {value!r}."
    return PrivacyConfigError(f"{message} {hint}".rstrip())


def real(parameter: str, value: Any) -> float:
    """A finite real number (``bool`` and strings rejected; numpy scalars accepted)."""
    if isinstance(value, bool | str | bytes):
        raise fail(parameter, "a real number", value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise fail(parameter, "a real number", value) from None
    if not math.isfinite(number):
        raise fail(parameter, "finite", value)
    return number


def positive(parameter: str, value: Any, hint: str = "") -> float:
    """A finite number > 0."""
    number = real(parameter, value)
    if number <= 0:
        raise fail(parameter, "> 0", value, hint)
    return number


def probability_open(parameter: str, value: Any, hint: str = "") -> float:
    """A number in the open interval (0, 1), e.g. delta."""
    number = real(parameter, value)
    if not 0 < number < 1:
        raise fail(parameter, "in (0, 1)", value, hint)
    return number


def sample_rate(parameter: str, value: Any) -> float:
    """A Poisson sampling rate q in (0, 1]."""
    number = real(parameter, value)
    if not 0 < number <= 1:
        raise fail(
            parameter,
            "in (0, 1] (the probability that a record takes part in a step)",
            value,
            "For a batch size B over n records, use q = B / n.",
        )
    return number


def count(parameter: str, value: Any, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (``bool`` and floats rejected)."""
    if isinstance(value, bool):
        raise fail(parameter, f"an integer >= {minimum}", value)
    try:
        number = operator.index(value)
    except TypeError:
        raise fail(parameter, f"an integer >= {minimum}", value) from None
    if number < minimum:
        raise fail(parameter, f"an integer >= {minimum}", value)
    return number
