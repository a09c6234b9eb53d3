"""The run directory: everything a run leaves behind, always in a valid state.

Layout::

    RUN/
      study.toml         the study file, byte for byte
      run.json           versions, git hash, seed, sites, data fingerprint, status
      metrics.jsonl      one JSON object per line: per round, per site, per split
      checkpoint.npz     coordinator + site state after the last completed round
      baselines.json     local-only and pooled test metrics per site
      results.csv        final per-site table: federated vs local-only vs pooled
      final_model.npz    final global weights (+ each site's local layers)
      report.html        plots and tables (``medsilo report RUN`` rebuilds it)

Validity: the directory is assembled under a temporary name and renamed into place, so
it is either absent or complete; every later file is written to a temporary file and
``os.replace``-d (atomic on POSIX); metrics lines are appended and fsync-ed *before* the
checkpoint of their round, and a resume drops lines of rounds after the checkpoint.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from medsilo.errors import RunDirError

RUN_FILE = "run.json"
STUDY_FILE = "study.toml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.npz"
BASELINES_FILE = "baselines.json"
RESULTS_FILE = "results.csv"
MODEL_FILE = "final_model.npz"
REPORT_FILE = "report.html"


def _git_hash() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("medsilo", "torch", "numpy", "pandas", "scikit-learn"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    out["git"] = _git_hash()
    return out


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_bytes(
        path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode()
    )


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}


class RunDirectory:
    """A run directory, created complete or opened for resuming/reporting."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # -- creation -------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, study_text: str, meta: Mapping[str, Any]) -> RunDirectory:
        path = Path(path)
        if path.exists():
            raise RunDirError(
                f"run directory {path} already exists; choose another --out, delete it, "
                f"or continue it with: medsilo run --resume {path}"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
        except OSError as exc:  # a parent is a file, no permission, read-only disk
            blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
            reason = f"{blocker} is a file, not a directory" if blocker else exc.strerror or exc
            raise RunDirError(
                f"cannot create run directory {path}: {reason}; choose another --out"
            ) from None
        try:
            (staging / STUDY_FILE).write_text(study_text, encoding="utf-8")
            (staging / METRICS_FILE).touch()
            record = {
                **meta,
                "created": datetime.now(UTC).isoformat(),
                "status": "running",
                "versions": versions(),
                "rounds_completed": 0,
            }
            atomic_write_json(staging / RUN_FILE, record)
            os.rename(staging, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return cls(path)

    # -- reading --------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path) -> RunDirectory:
        path = Path(path)
        for name in (RUN_FILE, STUDY_FILE):
            if not (path / name).is_file():
                raise RunDirError(f"{path} is not a medsilo run directory (no {name})")
        return cls(path)

    @property
    def meta(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / RUN_FILE).read_text())  # type: ignore[no-any-return]
        except (OSError, json.JSONDecodeError) as exc:
            raise RunDirError(f"{self.path / RUN_FILE}: unreadable: {exc}") from exc

    @property
    def study_text(self) -> str:
        return (self.path / STUDY_FILE).read_text(encoding="utf-8")

    def update_meta(self, **changes: Any) -> None:
        atomic_write_json(self.path / RUN_FILE, {**self.meta, **changes})

    def records(self) -> list[dict[str, Any]]:
        """Complete lines of metrics.jsonl (a torn last line is ignored)."""
        out = []
        for line in (self.path / METRICS_FILE).read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    # -- writing during a run -------------------------------------------------------
    def append_records(self, records: Iterable[Mapping[str, Any]]) -> None:
        lines = "".join(
            json.dumps(r, sort_keys=True, default=_json_default) + "\n" for r in records
        )
        with open(self.path / METRICS_FILE, "a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())

    def truncate_records(self, last_round: int) -> None:
        """Keep only records of rounds <= ``last_round`` (used when resuming)."""
        kept = [r for r in self.records() if int(r.get("round", 0)) <= last_round]
        atomic_write_bytes(
            self.path / METRICS_FILE,
            "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept).encode(),
        )

    def save_checkpoint(self, arrays: Mapping[str, np.ndarray], rounds_completed: int) -> None:
        save_arrays(self.path / CHECKPOINT_FILE, arrays)
        self.update_meta(rounds_completed=rounds_completed)

    def load_checkpoint(self) -> dict[str, np.ndarray] | None:
        path = self.path / CHECKPOINT_FILE
        return load_arrays(path) if path.exists() else None
