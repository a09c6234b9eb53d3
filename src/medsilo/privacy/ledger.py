"""The site ledger: an append-only, hash-chained, write-ahead record of every release.

Each site keeps its own ledger, a SQLite file on its own disk. It holds:

- the site's privacy budget (epsilon, delta), set by the site when the ledger is created
  and changed only by the site itself (:meth:`Ledger.change_budget`, which appends a
  budget entry); nothing the coordinator sends can raise it;
- one row per release (a model update, a clone): round, mechanism, sampling rate q,
  noise multiplier sigma, clip C, steps, the accountant, the delta, the cumulative
  epsilon after this release, the size and SHA-256 of the payload that left the site,
  and a timestamp. The events themselves (mechanism, q, sigma, steps) are the
  accountant's whole state: any epsilon can be recomputed from the rows.

Write-ahead. A site calls :meth:`Ledger.record` *after* it has the payload and *before*
the payload leaves; ``record`` checks the budget, appends the row and returns only once
the transaction is committed and fsync-ed (SQLite WAL with ``synchronous=FULL``). The
site then sends and calls :meth:`Ledger.mark_sent` (``Site.mark_sent``, called by the
engine once the reply is handed to its transport). A crash between ``record`` and the
send leaves a recorded release that never left: the ledger may over-count, never
under-count (tests/test_ledger.py kills a process at each point to check this).

Distributed DP (two views, and outcomes). In ``distributed`` mode a site's release is
a Skellam share that only secure aggregation turns into a private sum, so a release
row carries two events: ``event``, what the coordinator learns (the sum's noise, planned
for the minimum number t of surviving shares: the protocol aborts below t), and
``collusion``, what the coordinator learns if every other site colludes with it (this
site's own share). Budgets are checked against the coordinator's view (DESIGN.md's
threat model: an honest-but-curious coordinator, fewer than t colluders); both epsilons
are reported. Once the round is over the site appends an ``outcome`` row naming the
release (``refers_to``) with the event that actually reached the sum (more shares than
t: more noise) or none if the protocol aborted; it may only lower the coordinator's
epsilon. A crash before the outcome leaves the planned, pessimistic event.

Tamper evidence. Every row stores ``hash = sha256(prev_hash || canonical JSON of the
row)`` (hex strings, JSON with sorted keys and no spaces; the first row's ``prev_hash``
is 64 zeros), and the meta table stores the head (last row number and hash), updated in
the same transaction as each append. :meth:`Ledger.verify` checks the chain, the head,
and that every stored epsilon recomputes from the events; an edited, inserted or removed
row, or an unreadable file, raises :class:`LedgerCorruptError` naming the row. Rows are
append-only (SQLite triggers refuse UPDATE and DELETE). A hash chain without a secret key
detects accidents and naive edits, not someone who rewrites the whole file: for that,
publish :meth:`Ledger.head` outside the site (e.g. in the coordinator's round log) and
compare.

>>> import tempfile, pathlib
>>> from medsilo.privacy.events import DpSgdEvent
>>> path = pathlib.Path(tempfile.mkdtemp()) / "ledger.sqlite"
>>> with Ledger.open(path, site="hospital-a", budget=Budget(epsilon=8.0, delta=1e-5)) as ledger:
...     step = DpSgdEvent(sample_rate=0.01, noise_multiplier=1.1, steps=100)
...     entry = ledger.record(Release.of_payload(round=0, event=step, clip=1.0, payload=b"update"))
...     ledger.mark_sent(entry.seq)
...     round(entry.epsilon_after, 3), ledger.verify().releases
(0.956, 1)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt

from medsilo.privacy import _validate as check
from medsilo.privacy.accounting import (
    AccountantName,
    Composition,
    accountant_name,
    compose,
    epsilon_after,
)
from medsilo.privacy.errors import (
    BudgetExceededError,
    LedgerCorruptError,
    LedgerNotFoundError,
    PrivacyConfigError,
)
from medsilo.privacy.events import EVENT_TYPES, PrivacyEvent, event_from_dict, event_from_fields

__all__ = [
    "FORMAT",
    "GENESIS_HASH",
    "LEDGER_FILENAME",
    "Budget",
    "BudgetCheck",
    "Ledger",
    "LedgerEntry",
    "Release",
    "VerifyReport",
    "View",
    "ledger_path",
    "row_hash",
]

FORMAT = "medsilo-ledger/2"
LEDGER_FILENAME = "ledger.sqlite"
"""The ledger's file name inside a site directory."""
GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first row."""

View: TypeAlias = Literal["coordinator", "collusion"]
"""Whose knowledge an epsilon is against (module docstring, "Distributed DP")."""

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_EPSILON_RTOL = 1e-6
"""Stored and recomputed epsilons must agree to this relative tolerance."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('budget', 'release', 'outcome')),
    site TEXT NOT NULL,
    created_at TEXT NOT NULL,
    budget_epsilon REAL,
    budget_delta REAL,
    note TEXT,
    round INTEGER,
    mechanism TEXT,
    sample_rate REAL,
    noise_multiplier REAL,
    clip REAL,
    steps INTEGER,
    params TEXT,
    collusion TEXT,
    refers_to INTEGER,
    accountant TEXT,
    delta REAL,
    epsilon_after REAL,
    payload_bytes INTEGER,
    payload_sha256 TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE
) STRICT;
CREATE TABLE IF NOT EXISTS sent (
    seq INTEGER PRIMARY KEY REFERENCES entries (seq),
    sent_at TEXT NOT NULL
) STRICT;
CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
"""

_HASHED_COLUMNS = (
    "seq",
    "kind",
    "site",
    "created_at",
    "budget_epsilon",
    "budget_delta",
    "note",
    "round",
    "mechanism",
    "sample_rate",
    "noise_multiplier",
    "clip",
    "steps",
    "params",
    "collusion",
    "refers_to",
    "accountant",
    "delta",
    "epsilon_after",
    "payload_bytes",
    "payload_sha256",
)
_COLUMNS = (*_HASHED_COLUMNS, "prev_hash", "hash")
_FLOAT_COLUMNS = frozenset(
    {
        "budget_epsilon",
        "budget_delta",
        "sample_rate",
        "noise_multiplier",
        "clip",
        "delta",
        "epsilon_after",
    }
)
_INT_COLUMNS = frozenset({"seq", "round", "steps", "refers_to", "payload_bytes"})


@dataclass(frozen=True, slots=True)
class Budget:
    """A site's privacy budget: the (epsilon, delta) it allows itself over the whole study."""

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", check.positive("budget.epsilon", self.epsilon))
        object.__setattr__(self, "delta", check.probability_open("budget.delta", self.delta))

    def __str__(self) -> str:
        return f"(epsilon={self.epsilon:g}, delta={self.delta:g})"


@dataclass(frozen=True, slots=True)
class Release:
    """One release the site is about to make: the event, the clip, and the payload's digest.

    Build it with :meth:`of_payload` from the exact bytes that will leave the site.
    """

    round: int
    event: PrivacyEvent
    clip: float | None
    payload_bytes: int
    payload_sha256: str
    collusion_event: PrivacyEvent | None = None
    """The release as the coordinator colluding with all other sites sees it, when that
    differs from ``event`` (distributed DP: the site's own noise share)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "round", check.count("round", self.round, minimum=0))
        names = ", ".join(t.__name__ for t in EVENT_TYPES)
        if not isinstance(self.event, EVENT_TYPES):
            raise check.fail("event", f"a privacy event ({names})", self.event)
        if self.collusion_event is not None:
            if not isinstance(self.collusion_event, EVENT_TYPES):
                raise check.fail(
                    "collusion_event", f"a privacy event ({names})", self.collusion_event
                )
            if self.collusion_event.unit != self.event.unit:
                raise check.fail(
                    "collusion_event",
                    f"of the event's unit {self.event.unit!r}",
                    self.collusion_event,
                )
        if self.clip is not None:
            object.__setattr__(self, "clip", check.positive("clip", self.clip))
        object.__setattr__(
            self, "payload_bytes", check.count("payload_bytes", self.payload_bytes, minimum=0)
        )
        if not isinstance(self.payload_sha256, str) or not _SHA256.match(self.payload_sha256):
            raise check.fail("payload_sha256", "64 lowercase hex digits", self.payload_sha256)

    def view(self, view: View) -> PrivacyEvent:
        """The event as ``view`` sees it."""
        if view == "collusion" and self.collusion_event is not None:
            return self.collusion_event
        return self.event

    @classmethod
    def of_payload(
        cls,
        *,
        round: int,
        event: PrivacyEvent,
        clip: float | None,
        payload: bytes,
        collusion_event: PrivacyEvent | None = None,
    ) -> Release:
        """The release of ``payload`` (its length and SHA-256 are recorded, not the bytes)."""
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise check.fail("payload", "bytes", type(payload).__name__)
        data = bytes(payload)
        digest = hashlib.sha256(data).hexdigest()
        return cls(round, event, clip, len(data), digest, collusion_event)

    @classmethod
    def of_arrays(
        cls,
        *,
        round: int,
        event: PrivacyEvent,
        clip: float | None,
        arrays: Mapping[str, npt.ArrayLike],
        collusion_event: PrivacyEvent | None = None,
    ) -> Release:
        """The release of named arrays (a model update), without serializing them first.

        ``payload_bytes`` is the arrays' total size; ``payload_sha256`` is the SHA-256 of,
        for each name in sorted order: the name, the dtype (``dtype.str``) and the shape
        as UTF-8 text ``"name|<f4|(3, 2)\n"``, then the array's C-order bytes.
        """
        digest = hashlib.sha256()
        total = 0
        for name in sorted(arrays):
            array = np.ascontiguousarray(arrays[name])
            if array.dtype.hasobject:
                raise check.fail(f"arrays[{name!r}]", "a numeric array", array.dtype.str)
            digest.update(f"{name}|{array.dtype.str}|{tuple(array.shape)}\n".encode())
            digest.update(array.data)
            total += array.nbytes
        return cls(round, event, clip, total, digest.hexdigest(), collusion_event)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One row of the ledger: a budget setting (``kind="budget"``), a release, or the
    outcome of a release (``kind="outcome"``, ``refers_to`` its row)."""

    seq: int
    kind: Literal["budget", "release", "outcome"]
    site: str
    created_at: str
    prev_hash: str
    hash: str
    budget_epsilon: float | None = None
    budget_delta: float | None = None
    note: str | None = None
    round: int | None = None
    mechanism: str | None = None
    sample_rate: float | None = None
    noise_multiplier: float | None = None
    clip: float | None = None
    steps: int | None = None
    params: str | None = None
    collusion: str | None = None
    refers_to: int | None = None
    accountant: str | None = None
    delta: float | None = None
    epsilon_after: float | None = None
    payload_bytes: int | None = None
    payload_sha256: str | None = None
    sent_at: str | None = field(default=None, compare=False)
    """When :meth:`Ledger.mark_sent` was called (not part of the hash chain)."""

    @property
    def event(self) -> PrivacyEvent:
        """The privacy event of a release row (the coordinator's view, as planned)."""
        if self.kind != "release":
            raise PrivacyConfigError(
                f"ledger row {self.seq} is a {self.kind} entry, not a release."
            )
        return self._fields_event()

    @property
    def collusion_event(self) -> PrivacyEvent:
        """A release as the coordinator colluding with every other site sees it."""
        if self.collusion is None:
            return self.event
        return event_from_dict(json.loads(self.collusion))

    @property
    def reached(self) -> PrivacyEvent | None:
        """An outcome row's event: what reached the coordinator (``None``: aborted)."""
        if self.kind != "outcome":
            raise PrivacyConfigError(
                f"ledger row {self.seq} is a {self.kind} entry, not an outcome."
            )
        return None if self.mechanism is None else self._fields_event()

    def _fields_event(self) -> PrivacyEvent:
        return event_from_fields(
            str(self.mechanism),
            _num(self.sample_rate),
            _num(self.noise_multiplier),
            int(self.steps or 0),
            None if self.params is None else json.loads(self.params),
        )

    @property
    def budget(self) -> Budget:
        """The budget a budget row sets."""
        if self.kind != "budget":
            raise PrivacyConfigError(f"ledger row {self.seq} is a {self.kind} entry, not a budget.")
        return Budget(_num(self.budget_epsilon), _num(self.budget_delta))

    def to_dict(self) -> dict[str, Any]:
        """All columns, JSON-ready."""
        return asdict(self)


class BudgetCheck(NamedTuple):
    """The answer of :meth:`Ledger.would_exceed`: ``(exceeds, epsilon_after)``."""

    exceeds: bool
    epsilon_after: float


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What :meth:`Ledger.verify` checked, when everything holds."""

    path: Path
    site: str
    rows: int
    releases: int
    head_seq: int
    head_hash: str
    budget: Budget
    accountant: AccountantName
    epsilon_spent: float


def ledger_path(site_dir_or_file: str | os.PathLike[str]) -> Path:
    """The ledger file: ``path / LEDGER_FILENAME`` for a site directory, else ``path``.

    A path is a site directory if it is an existing directory, or if it does not exist
    and has no suffix (``sites/hospital-a``); ``sites/a.sqlite`` is a file.
    """
    path = Path(site_dir_or_file)
    if path.is_dir() or (not path.exists() and not path.suffix):
        return path / LEDGER_FILENAME
    return path


def canonical_json(row: dict[str, Any]) -> str:
    """The row as hashed: sorted keys, no spaces, ASCII, no NaN/inf."""
    return json.dumps(
        row, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def row_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """``sha256(prev_hash || canonical_json(row))`` over the hashed columns, hex."""
    body = {k: row.get(k) for k in _HASHED_COLUMNS}
    return hashlib.sha256((prev_hash + canonical_json(body)).encode("ascii")).hexdigest()


class Ledger:
    """A site's ledger file. Open it with :meth:`open`; use it as a context manager."""

    def __init__(
        self, connection: sqlite3.Connection, path: Path, site: str, accountant: AccountantName
    ) -> None:
        self._db = connection
        self._path = path
        self._site = site
        self._accountant: AccountantName = accountant
        self._lock = threading.RLock()
        self._tally: _Tally | None = None

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        site: str | None = None,
        budget: Budget | None = None,
        *,
        accountant: AccountantName | str | None = None,
    ) -> Ledger:
        """Open (or create) the ledger at ``path`` (a file, or a site directory).

        Creating needs ``site`` and ``budget``. Reopening checks that the file is a
        medsilo ledger with an intact hash chain, that it belongs to ``site`` (if given)
        and that its budget equals ``budget`` (if given): a budget changes only through
        :meth:`change_budget`. ``accountant`` is the default for epsilons (``"rdp"``, or
        for an existing ledger the one its last release used).
        """
        name = accountant_name(accountant) if accountant is not None else None
        if site is not None and (not isinstance(site, str) or not site.strip()):
            raise check.fail("site", "a non-empty name", site)
        if budget is not None and not isinstance(budget, Budget):
            raise check.fail("budget", "a Budget(epsilon, delta)", budget)
        file = ledger_path(path)
        if not file.exists():
            if site is None or budget is None:
                raise LedgerNotFoundError(
                    f"no ledger at {file}. A site creates its ledger, with its name and its "
                    "budget, when it first joins a study (Ledger.open(path, site, budget))."
                )
            file.parent.mkdir(parents=True, exist_ok=True)
        elif not file.is_file():
            raise LedgerCorruptError(f"{file}: not a file, so not a ledger.")
        db = _connect(file)
        try:
            created = _create_if_empty(db, file, site, budget)
            meta = _read_meta(db, file)
            rows = _read_rows(db, file)
            _check_chain(file, rows, meta)
            stored_site = meta["site"]
            if site is not None and site != stored_site:
                raise PrivacyConfigError(
                    f"site must be the ledger's owner {stored_site!r}; got {site!r} "
                    f"({file} belongs to another site)."
                )
            current = _current_budget(rows)
            if budget is not None and budget != current:
                raise PrivacyConfigError(
                    f"budget must equal the budget the site set in its ledger {file}, "
                    f"{current}; got {budget}. Only the site changes its budget, on purpose: "
                    "Ledger.change_budget(new_budget, note=...)."
                )
            if name is None:
                releases = [r for r in rows if r.kind == "release"]
                name = accountant_name(releases[-1].accountant) if releases else "rdp"
            if created:
                _fsync_dir(file.parent)
        except BaseException:
            db.close()
            raise
        return cls(db, file, stored_site, name)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- reading

    @property
    def path(self) -> Path:
        return self._path

    @property
    def site(self) -> str:
        return self._site

    @property
    def accountant(self) -> AccountantName:
        """The default accountant of :meth:`epsilon_spent`, :meth:`record`, ..."""
        return self._accountant

    @property
    def budget(self) -> Budget:
        """The site's current budget."""
        with self._lock:
            budget = self._sync().budget
        assert budget is not None  # row 1 is a budget row (checked when opened)
        return budget

    def entries(self) -> tuple[LedgerEntry, ...]:
        """Every row, budget settings and releases, in order, with their sent status."""
        with self._lock:
            return tuple(self._sync().rows)

    def releases(self) -> tuple[LedgerEntry, ...]:
        """The release rows, in order."""
        return tuple(r for r in self.entries() if r.kind == "release")

    def events(self, view: View = "coordinator") -> tuple[PrivacyEvent, ...]:
        """The privacy events of all releases, as ``view`` sees them (module docstring):
        the accountant's whole state."""
        with self._lock:
            return _events(self._sync().rows, view)

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last row: publish it outside the site to anchor the chain."""
        last = self.entries()[-1]
        return last.seq, last.hash

    def epsilon_spent(
        self, accountant: AccountantName | str | None = None, view: View = "coordinator"
    ) -> float:
        """Epsilon spent by all recorded releases, at the budget's delta, against ``view``:
        the coordinator (what budgets bound) or the coordinator colluding with all other
        sites (``"collusion"``; differs only for distributed DP)."""
        name = self._name(accountant)
        with self._lock:
            tally = self._sync()
            return epsilon_after(tally.composed(view), tally.delta, name)

    def remaining(self, accountant: AccountantName | str | None = None) -> float:
        """Budget epsilon minus epsilon spent (negative if the site lowered its budget)."""
        return self.budget.epsilon - self.epsilon_spent(accountant)

    def would_exceed(
        self, event: PrivacyEvent, accountant: AccountantName | str | None = None
    ) -> BudgetCheck:
        """Would releasing ``event`` take the site past its budget? Nothing is written.

        Returns ``(exceeds, epsilon_after)``: the epsilon spent if ``event`` were released
        too, at the budget's delta, and whether that is over the budget's epsilon.
        """
        name = self._name(accountant)
        with self._lock:
            tally = self._sync()
            eps = epsilon_after([*tally.composed(), event], tally.delta, name)
            return BudgetCheck(eps > tally.epsilon, eps)

    # ----------------------------------------------------------------- writing

    def record(
        self, release: Release, accountant: AccountantName | str | None = None
    ) -> LedgerEntry:
        """Append ``release`` before it leaves the site; return once it is on disk.

        Checks, then writes, in one transaction: the release must fit the budget (else
        :class:`BudgetExceededError`, nothing written), the row is hash-chained and the
        commit is fsync-ed (WAL, ``synchronous=FULL``) before this returns.
        """
        if not isinstance(release, Release):
            raise check.fail("release", "a Release (Release.of_payload(...))", release)
        name = self._name(accountant)
        with self._lock, self._transaction():
            tally = self._sync()
            budget = Budget(tally.epsilon, tally.delta)
            events = tally.composed()
            compose([*events, release.event])  # same unit of privacy as before
            compose([*tally.composed("collusion"), release.view("collusion")])
            eps = epsilon_after([*events, release.event], budget.delta, name)
            if eps > budget.epsilon:
                spent = epsilon_after(events, budget.delta, name)
                raise BudgetExceededError(
                    f"site {self._site!r}: releasing round {release.round} "
                    f"({release.event.mechanism}, q={release.event.sample_rate:g}, "
                    f"sigma={release.event.noise_multiplier:g}, "
                    f"steps={release.event.steps}) would bring epsilon to {eps:.4g}, over "
                    f"the site's budget of {budget.epsilon:g} (delta={budget.delta:g}, "
                    f"accountant {name}; spent so far {spent:.4g}). Refused: nothing was "
                    "recorded and nothing may leave the site.",
                    epsilon_after=eps,
                    budget_epsilon=budget.epsilon,
                )
            event = release.event
            entry = self._append(
                tally.rows,
                kind="release",
                round=release.round,
                mechanism=event.mechanism,
                sample_rate=event.sample_rate,
                noise_multiplier=event.noise_multiplier,
                clip=release.clip,
                steps=event.steps,
                params=_params_json(event),
                collusion=(
                    None
                    if release.collusion_event is None
                    else canonical_json(release.collusion_event.to_dict())
                ),
                accountant=name,
                delta=budget.delta,
                epsilon_after=eps,
                payload_bytes=release.payload_bytes,
                payload_sha256=release.payload_sha256,
            )
        return entry

    def record_outcome(
        self,
        seq: int,
        reached: PrivacyEvent | None,
        *,
        note: str,
        accountant: AccountantName | str | None = None,
    ) -> LedgerEntry:
        """Append what release ``seq`` actually gave the coordinator, once it is known:
        ``reached`` is the event of the sum it saw (e.g. more Skellam shares than
        planned), ``None`` if the protocol aborted and nothing was released to it.

        The outcome replaces the planned event in the coordinator's view; it must be the
        same mechanism, unit, sampling rate and steps, and may only lower the epsilon
        (:class:`PrivacyConfigError` otherwise, nothing written). One outcome per release.
        """
        seq = check.count("seq", seq)
        if reached is not None and not isinstance(reached, EVENT_TYPES):
            raise check.fail("reached", "a privacy event, or None (aborted)", reached)
        if not isinstance(note, str) or not note.strip():
            raise check.fail("note", "a non-empty description of the outcome", note)
        name = self._name(accountant)
        with self._lock, self._transaction():
            tally = self._sync()
            release = tally.awaiting_outcome(seq)
            if reached is not None:
                _check_same_release(release.event, reached)
            budget = Budget(tally.epsilon, tally.delta)
            before = epsilon_after(tally.composed(), budget.delta, name)
            after = tally.coordinator.copy()
            after.remove(release.event)
            if reached is not None:
                after.add(reached)
            eps = epsilon_after(after.events(), budget.delta, name)
            if eps > before * (1 + _EPSILON_RTOL) + 1e-12:
                raise PrivacyConfigError(
                    f"reached must not raise the coordinator's epsilon of release {seq} "
                    f"(it would go from {before:.6g} to {eps:.6g}); an outcome records "
                    "more noise than planned, or an abort, never less."
                )
            outcome: dict[str, Any] = {
                "kind": "outcome",
                "refers_to": seq,
                "round": release.round,
                "note": note,
                "accountant": name,
                "delta": budget.delta,
            }
            if reached is not None:
                outcome.update(
                    mechanism=reached.mechanism,
                    sample_rate=reached.sample_rate,
                    noise_multiplier=reached.noise_multiplier,
                    steps=reached.steps,
                    params=_params_json(reached),
                )
            return self._append(tally.rows, epsilon_after=eps, **outcome)

    def mark_sent(self, seq: int) -> None:
        """Note that release ``seq`` has left the site (optional; idempotent)."""
        seq = check.count("seq", seq)
        with self._lock, self._transaction():
            row = self._db.execute("SELECT kind FROM entries WHERE seq = ?", (seq,)).fetchone()
            if row is None or row[0] != "release":
                raise check.fail("seq", f"the number of a release in {self._path}", seq)
            self._db.execute(
                "INSERT OR IGNORE INTO sent (seq, sent_at) VALUES (?, ?)", (seq, _now())
            )

    def change_budget(self, budget: Budget, *, note: str) -> LedgerEntry:
        """The site changes its own budget, on purpose; appended to the chain with ``note``.

        Only the site's operator calls this (nothing the coordinator sends reaches it).
        Lowering below what is spent is allowed: every later release is refused.
        """
        if not isinstance(budget, Budget):
            raise check.fail("budget", "a Budget(epsilon, delta)", budget)
        if not isinstance(note, str) or not note.strip():
            raise check.fail("note", "a non-empty reason for the change", note)
        with self._lock, self._transaction():
            return self._append(
                self._sync().rows,
                kind="budget",
                budget_epsilon=budget.epsilon,
                budget_delta=budget.delta,
                note=note,
            )

    # ----------------------------------------------------------------- checking

    def verify(self) -> VerifyReport:
        """Check the file, the hash chain, the head, and every stored epsilon.

        Raises :class:`LedgerCorruptError` naming the first bad row.
        """
        with self._lock:
            return _verify(self._db, self._path)

    # ----------------------------------------------------------------- internals

    def _name(self, accountant: AccountantName | str | None) -> AccountantName:
        return self._accountant if accountant is None else accountant_name(accountant)

    def _sync(self) -> _Tally:
        """The rows on disk and their composed events, read incrementally.

        Rows are only ever appended (triggers refuse edits; :meth:`verify` detects
        tampering), so only the rows after the last one read are fetched and composed:
        a release costs O(1), not a re-read of the whole history (which made a long
        distributed-DP run quadratic). Another writer's rows are picked up the same way;
        a last row that changed under us means a full re-read. Sent marks only add.
        """
        tally = self._tally
        head = _query(self._db, self._path, _HEAD)
        last = tally.rows[-1] if tally is not None and tally.rows else None
        if tally is None or last is None or head is None or head[0] < last.seq:
            tally = None
        elif head != (last.seq, last.hash):
            same = _query(self._db, self._path, "SELECT hash FROM entries WHERE seq = ?", last.seq)
            if same is None or same[0] != last.hash:
                tally = None
        if tally is None:
            tally = _Tally(self._path)
        for row in _read_rows(self._db, self._path, after=tally.rows[-1].seq if tally.rows else 0):
            tally.add(row)
        tally.mark_sent(_sent_marks(self._db, self._path, known=tally.sent))
        self._tally = tally
        return tally

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise LedgerCorruptError(f"{self._path}: cannot write the ledger ({exc}).") from exc
        try:
            yield
            self._db.execute("COMMIT")  # WAL + synchronous=FULL: fsync-ed when this returns
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _append(self, rows: list[LedgerEntry], **values: Any) -> LedgerEntry:
        prev = rows[-1].hash if rows else GENESIS_HASH
        seq = rows[-1].seq + 1 if rows else 1
        return _insert(self._db, seq, self._site, prev, values)


# --------------------------------------------------------------------- pure helpers


def _events(rows: list[LedgerEntry], view: View = "coordinator") -> tuple[PrivacyEvent, ...]:
    """The releases' events, one per release, as ``view`` sees them: for the coordinator,
    each release's outcome (if any) replaces its planned event, and an aborted release
    drops out. (The accountant uses the composed form, :class:`_Tally`.)"""
    if view == "collusion":
        return tuple(r.collusion_event for r in rows if r.kind == "release")
    if view != "coordinator":
        raise check.fail("view", "'coordinator' or 'collusion'", view)
    reached = {r.refers_to: r.reached for r in rows if r.kind == "outcome"}
    events = (reached.get(r.seq, r.event) for r in rows if r.kind == "release")
    return tuple(e for e in events if e is not None)


def _check_same_release(planned: PrivacyEvent, reached: PrivacyEvent) -> None:
    same = (
        type(planned) is type(reached)
        and planned.unit == reached.unit
        and planned.sample_rate == reached.sample_rate
        and planned.steps == reached.steps
    )
    if not same:
        raise check.fail(
            "reached",
            f"the planned release's mechanism, unit, sampling rate and steps ({planned})",
            reached,
        )


def _params_json(event: PrivacyEvent) -> str | None:
    params = event.params()
    return canonical_json(params) if params else None


def _num(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _normalise(values: dict[str, Any]) -> dict[str, Any]:
    """Each column in the Python type SQLite gives back (so the hash is stable)."""
    row: dict[str, Any] = {}
    for column in _HASHED_COLUMNS:
        value = values.get(column)
        if value is not None and column in _FLOAT_COLUMNS:
            value = float(value)
        elif value is not None and column in _INT_COLUMNS:
            value = int(value)
        row[column] = value
    return row


def _connect(file: Path) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(file, isolation_level=None, check_same_thread=False, timeout=30)
    except sqlite3.Error as exc:
        raise LedgerCorruptError(f"{file}: cannot open the ledger ({exc}).") from exc
    try:
        db.execute("PRAGMA busy_timeout = 30000")
        db.execute("PRAGMA journal_mode = WAL").fetchone()
        db.execute("PRAGMA synchronous = FULL")  # fsync the WAL at every commit
        db.execute("PRAGMA fullfsync = ON")  # macOS: F_FULLFSYNC; no-op elsewhere
        db.execute("PRAGMA checkpoint_fullfsync = ON")
        db.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError as exc:
        db.close()
        raise LedgerCorruptError(
            f"{file}: not a readable SQLite ledger ({exc}). Keep the file for "
            "investigation; release nothing more from this site until it is resolved."
        ) from exc
    return db


def _create_if_empty(
    db: sqlite3.Connection, file: Path, site: str | None, budget: Budget | None
) -> bool:
    """Create schema, meta and the genesis budget row in one transaction, if empty."""
    try:
        empty = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        if not empty:
            return False
        if site is None or budget is None:
            raise LedgerCorruptError(f"{file}: an empty database, not a medsilo ledger.")
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] != 0:
                db.execute("ROLLBACK")
                return False  # another process created it first
            for statement in _SCHEMA.split(";\n"):
                if statement.strip():
                    db.execute(statement)
            created_at = _now()
            db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("format", FORMAT), ("site", site), ("created_at", created_at)],
            )
            _insert(
                db,
                1,
                site,
                GENESIS_HASH,
                {
                    "kind": "budget",
                    "budget_epsilon": budget.epsilon,
                    "budget_delta": budget.delta,
                    "note": "budget set at creation",
                },
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return True
    except sqlite3.DatabaseError as exc:
        raise LedgerCorruptError(f"{file}: not a readable SQLite ledger ({exc}).") from exc


def _insert(
    db: sqlite3.Connection, seq: int, site: str, prev_hash: str, values: dict[str, Any]
) -> LedgerEntry:
    row = _normalise({**values, "seq": seq, "site": site, "created_at": _now()})
    digest = row_hash(prev_hash, row)
    full = {**row, "prev_hash": prev_hash, "hash": digest}
    db.execute(
        f"INSERT INTO entries ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})",
        [full[c] for c in _COLUMNS],
    )
    db.executemany(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        [("head_seq", str(seq)), ("head_hash", digest)],
    )
    return LedgerEntry(**full)


def _read_rows(db: sqlite3.Connection, file: Path, after: int = 0) -> list[LedgerEntry]:
    """The rows numbered above ``after``, in order, with their sent marks."""
    columns = ", ".join(f"e.{c}" for c in _COLUMNS)
    try:
        cursor = db.execute(
            f"SELECT {columns}, s.sent_at FROM entries e "
            "LEFT JOIN sent s ON s.seq = e.seq WHERE e.seq > ? ORDER BY e.seq",
            (after,),
        )
        raw = cursor.fetchall()
    except sqlite3.DatabaseError as exc:
        raise LedgerCorruptError(
            f"{file}: the ledger's rows cannot be read ({exc}). Keep the file for "
            "investigation; release nothing more from this site until it is resolved."
        ) from exc
    rows = []
    for values in raw:
        data = dict(zip((*_COLUMNS, "sent_at"), values, strict=True))
        if data["kind"] not in ("budget", "release", "outcome"):
            raise LedgerCorruptError(
                f"{file}: row {data['seq']}: unknown kind {data['kind']!r}.", row=data["seq"]
            )
        rows.append(LedgerEntry(**data))
    return rows


_HEAD = "SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1"


def _query(db: sqlite3.Connection, file: Path, sql: str, *args: Any) -> tuple[Any, ...] | None:
    """The first row of ``sql``, or ``None``; an unreadable file is a corrupt ledger."""
    try:
        row: tuple[Any, ...] | None = db.execute(sql, args).fetchone()
    except sqlite3.DatabaseError as exc:
        raise LedgerCorruptError(f"{file}: the ledger cannot be read ({exc}).") from exc
    return row


def _sent_marks(db: sqlite3.Connection, file: Path, known: int) -> dict[int, str]:
    """Every sent mark, if there are more than the ``known`` ones; else nothing."""
    count = _query(db, file, "SELECT count(*) FROM sent")
    if count is None or count[0] == known:
        return {}
    try:
        return dict(db.execute("SELECT seq, sent_at FROM sent").fetchall())
    except sqlite3.DatabaseError as exc:
        raise LedgerCorruptError(f"{file}: the ledger cannot be read ({exc}).") from exc


class _Tally:
    """A ledger's rows, read in order, and what its accountant needs from them: the
    budget, and the releases' events composed for each view (:class:`Composition`), the
    coordinator's with each outcome in place of its release's plan."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.rows: list[LedgerEntry] = []
        self.budget: Budget | None = None
        self.coordinator = Composition()
        self.collusion = Composition()
        self.sent = 0
        self._awaiting: dict[int, LedgerEntry] = {}
        """Releases without an outcome yet, by row number."""

    @property
    def epsilon(self) -> float:
        assert self.budget is not None
        return self.budget.epsilon

    @property
    def delta(self) -> float:
        assert self.budget is not None
        return self.budget.delta

    def composed(self, view: View = "coordinator") -> tuple[PrivacyEvent, ...]:
        """The releases' events as ``view`` sees them, composed."""
        if view == "collusion":
            return self.collusion.events()
        if view != "coordinator":
            raise check.fail("view", "'coordinator' or 'collusion'", view)
        return self.coordinator.events()

    def awaiting_outcome(self, seq: int) -> LedgerEntry:
        """The release ``seq``, which an outcome row may name: one without an outcome."""
        if seq in self._awaiting:
            return self._awaiting[seq]
        if 0 < seq <= len(self.rows) and self.rows[seq - 1].kind == "release":
            raise check.fail("seq", "a release without an outcome (one outcome per release)", seq)
        raise check.fail("seq", "the number of a release row", seq)

    def add(self, row: LedgerEntry) -> None:
        """Read the next row (its values must make sense: else the row is named)."""
        try:
            if row.kind == "budget":
                self.budget = row.budget
            elif row.kind == "release":
                event = row.event
                self.coordinator.add(event)
                self.collusion.add(row.collusion_event)
                self._awaiting[row.seq] = row
            else:
                release = self.awaiting_outcome(int(row.refers_to or 0))
                reached = row.reached
                if reached is not None:
                    _check_same_release(release.event, reached)
                self.coordinator.remove(release.event)
                if reached is not None:
                    self.coordinator.add(reached)
                del self._awaiting[release.seq]
        except PrivacyConfigError as exc:
            raise _corrupt(self.file, row.seq, f"invalid values ({exc})") from exc
        self.rows.append(row)

    def mark_sent(self, marks: Mapping[int, str]) -> None:
        """Show the sent marks on the rows (rows are numbered 1, 2, ... in order)."""
        for seq, sent_at in marks.items():
            if 0 < seq <= len(self.rows) and self.rows[seq - 1].sent_at != sent_at:
                self.rows[seq - 1] = replace(self.rows[seq - 1], sent_at=sent_at)
        self.sent = max(self.sent, len(marks))


def _read_meta(db: sqlite3.Connection, file: Path) -> dict[str, str]:
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as exc:
        raise LedgerCorruptError(f"{file}: not a medsilo ledger (no meta table: {exc}).") from exc
    if meta.get("format") != FORMAT:
        raise LedgerCorruptError(
            f"{file}: not a medsilo ledger (format {meta.get('format')!r}, expected {FORMAT!r})."
        )
    for key in ("site", "head_seq", "head_hash"):
        if key not in meta:
            raise LedgerCorruptError(f"{file}: the meta table lacks {key!r}.")
    return meta


def _current_budget(rows: list[LedgerEntry]) -> Budget:
    budgets = [r for r in rows if r.kind == "budget"]
    if not budgets:
        raise LedgerCorruptError("the ledger has no budget row.")
    return budgets[-1].budget


def _corrupt(file: Path, seq: int | None, what: str) -> LedgerCorruptError:
    where = f"row {seq}: " if seq is not None else ""
    return LedgerCorruptError(
        f"{file}: {where}{what}. The ledger cannot be trusted: keep the file for "
        "investigation, and release nothing more from this site until it is resolved.",
        row=seq,
    )


def _check_chain(file: Path, rows: list[LedgerEntry], meta: dict[str, str]) -> None:
    """Row numbers 1..n, each hash over its content and its predecessor, the head."""
    if not rows:
        raise _corrupt(file, None, "the ledger has no rows (its budget row is missing)")
    prev = GENESIS_HASH
    for expected_seq, row in enumerate(rows, start=1):
        if row.seq != expected_seq:
            raise _corrupt(
                file,
                expected_seq,
                f"missing (rows jump from {expected_seq - 1} to {row.seq}: a row was removed)",
            )
        if row.site != meta["site"]:
            raise _corrupt(file, row.seq, f"site {row.site!r} is not the ledger's {meta['site']!r}")
        if row.prev_hash != prev:
            raise _corrupt(
                file,
                row.seq,
                f"prev_hash does not match row {row.seq - 1}'s hash (a row before it was "
                "edited, removed or inserted)",
            )
        try:
            recomputed = row_hash(prev, _normalise(asdict(row)))
        except (TypeError, ValueError) as exc:
            raise _corrupt(file, row.seq, f"its content cannot be hashed ({exc})") from exc
        if recomputed != row.hash:
            raise _corrupt(
                file, row.seq, "its hash does not match its content (it was edited after writing)"
            )
        prev = row.hash
    if rows[0].kind != "budget":
        raise _corrupt(file, 1, "the first row must set the budget")
    last = rows[-1]
    if meta["head_seq"] != str(last.seq) or meta["head_hash"] != last.hash:
        raise _corrupt(
            file,
            last.seq + 1 if meta["head_seq"] != str(last.seq) else last.seq,
            f"the ledger ends at row {last.seq} but its head records row {meta['head_seq']} "
            f"({meta['head_hash'][:12]}): rows at the end were removed, or the head was edited",
        )


def _verify(db: sqlite3.Connection, file: Path) -> VerifyReport:
    try:
        problems = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        raise _corrupt(file, None, f"SQLite cannot check the file ({exc})") from exc
    if problems != ["ok"]:
        raise _corrupt(file, None, f"SQLite integrity check failed: {'; '.join(problems[:3])}")
    meta = _read_meta(db, file)
    rows = _read_rows(db, file)
    _check_chain(file, rows, meta)
    tally = _Tally(file)
    name: AccountantName = "rdp"
    for row in rows:
        if row.kind == "release":
            try:
                compose([row.event, row.collusion_event])
            except PrivacyConfigError as exc:
                raise _corrupt(file, row.seq, f"invalid values ({exc})") from exc
        tally.add(row)
        if row.kind == "budget":
            continue
        try:
            name = accountant_name(row.accountant)
        except PrivacyConfigError as exc:
            raise _corrupt(file, row.seq, f"invalid values ({exc})") from exc
        budget = tally.budget
        assert budget is not None  # row 1 is a budget row (checked above)
        if row.delta != budget.delta:
            raise _corrupt(file, row.seq, f"delta {row.delta} is not the budget's {budget.delta}")
        stored = _num(row.epsilon_after)
        recomputed = epsilon_after(tally.composed(), budget.delta, name)
        if not math.isclose(stored, recomputed, rel_tol=_EPSILON_RTOL, abs_tol=1e-12):
            raise _corrupt(
                file,
                row.seq,
                f"stored epsilon_after {stored!r} but the events up to this row give "
                f"{recomputed!r} ({name}, delta={budget.delta:g})",
            )
        if stored > budget.epsilon:
            raise _corrupt(
                file, row.seq, f"epsilon_after {stored:g} is over the budget {budget.epsilon:g}"
            )
    budget = tally.budget
    assert budget is not None
    releases = [r for r in rows if r.kind == "release"]
    return VerifyReport(
        path=file,
        site=meta["site"],
        rows=len(rows),
        releases=len(releases),
        head_seq=rows[-1].seq,
        head_hash=rows[-1].hash,
        budget=budget,
        accountant=name,
        epsilon_spent=epsilon_after(tally.composed(), budget.delta, name),
    )


def _fsync_dir(directory: Path) -> None:
    """Make a new file's directory entry durable (POSIX; a no-op where unsupported)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
