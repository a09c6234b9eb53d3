"""The three ways secure aggregation refuses to go on.

* :class:`ParameterError` (a ``ValueError``): a parameter breaks a rule before any
  message is sent (clip range, bits, headroom, threshold, a modulus that differs
  between parties). Its message names the parameter, the rule and the value.
* :class:`ProtocolError`: a message breaks the protocol (out of order, replayed,
  duplicated, malformed, wrongly signed, ...). It names the message, the
  :class:`Violation` and, where known, the sender. The state that received it is
  unchanged (stages are pure functions), so an engine may drop the message and go on.
* :class:`AbortError`: fewer than ``t`` parties survived where ``t`` are needed
  (Bonawitz et al. 2017, Fig. 4: "if |U_i| < t, abort"). The party raising it releases
  nothing more in this session.
"""

from __future__ import annotations

from enum import StrEnum


class SecAggError(Exception):
    """Base class of every error raised by :mod:`medsilo.secagg`."""


class ParameterError(SecAggError, ValueError):
    """A parameter breaks a rule: ``parameter``, ``rule`` and ``value`` say which."""

    def __init__(self, parameter: str, rule: str, value: object) -> None:
        self.parameter = parameter
        self.rule = rule
        self.value = value
        super().__init__(f"{parameter} {rule}; got {value!r}")


class Violation(StrEnum):
    """The protocol rule a rejected message breaks."""

    OUT_OF_ORDER = "out-of-order"
    """Not the message this stage expects, or its sender skipped an earlier stage."""
    REPLAY = "replay"
    """Bound to another session (a message replayed from another round or study)."""
    DUPLICATE = "duplicate"
    """The same sender, receiver or item appears twice."""
    MALFORMED = "malformed"
    """Wrong type, size, shape, dtype or range of a field."""
    BAD_SIGNATURE = "bad-signature"
    """An Ed25519 signature does not verify under the sender's registered key."""
    BAD_CIPHERTEXT = "bad-ciphertext"
    """An AES-GCM ciphertext does not authenticate (tampered, or for someone else)."""
    UNKNOWN_SENDER = "unknown-sender"
    """The sender is not a registered site of this session, or not a neighbour."""
    INCONSISTENT = "inconsistent"
    """Contradicts what this party saw earlier (e.g. a survivor set not within U_2)."""
    BOTH_SHARES = "both-shares"
    """Would reveal both the self-mask share and the mask-key share of one site."""


class ProtocolError(SecAggError):
    """``message`` was rejected because it breaks ``rule``; ``detail`` says how."""

    def __init__(
        self, message: str, rule: Violation, detail: str, sender: str | None = None
    ) -> None:
        self.message = message
        self.rule = rule
        self.detail = detail
        self.sender = sender
        origin = f" from {sender!r}" if sender is not None else ""
        super().__init__(f"{message}{origin} rejected ({rule}): {detail}")


class AbortError(SecAggError):
    """The session aborts at ``stage``: ``detail`` says which count fell below ``t``."""

    def __init__(self, stage: str, detail: str) -> None:
        self.stage = stage
        self.detail = detail
        super().__init__(f"secure aggregation aborted at {stage}: {detail}")
