"""Helpers shared by the benchmark scripts: machine description, statistics and the
results writer (``benchmarks/results/NAME.md`` + ``NAME.json``).

Not part of the package and not run by CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPO = HERE.parent


def quiet_flower_env() -> None:
    """Flower must neither install dependencies at run time nor phone home."""
    os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return None


def _git_hash() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    packages: dict[str, str | None] = {}
    for name in ("medsilo", "torch", "numpy", "scikit-learn", "flwr", "ray", "psutil"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    try:
        import torch

        threads: int | None = torch.get_num_threads()
    except ImportError:
        threads = None
    return {
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch_threads": threads,
        "packages": packages,
        "git": _git_hash(),
    }


def command_line() -> str:
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(REPO)
    return " ".join(["python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [float(v) for v in values]
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return statistics.fmean(vals), sd


def fmt_mean_sd(values: Sequence[float], digits: int = 3) -> str:
    m, s = mean_sd(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    name: str, title: str, body_md: str, data: dict[str, Any], started: datetime
) -> Path:
    """Write ``results/NAME.md`` (body + command + date + machine) and ``NAME.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    finished = datetime.now(UTC)
    meta = {
        "command": command_line(),
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "wall_seconds": round((finished - started).total_seconds(), 1),
        "machine": info,
    }
    pk = info["packages"]
    machine_line = (
        f"{info['cores']} cores ({info['cpu']}), {info['memory_gib']} GiB RAM, "
        f"torch threads {info['torch_threads']}, load average at the end "
        f"{info['load_average_1_5_15']} (other work on the machine shows here); "
        f"Python {info['python']}, "
        f"torch {pk['torch']}, flwr {pk['flwr']}, ray {pk['ray']}, numpy {pk['numpy']}, "
        f"scikit-learn {pk['scikit-learn']}, medsilo {pk['medsilo']} (git {info['git']})"
    )
    text = (
        f"# {title}\n\n{body_md.strip()}\n\n"
        f"- Command: `{meta['command']}`\n"
        f"- Date: {meta['started']} (took {meta['wall_seconds']} s)\n"
        f"- Machine: {machine_line}\n"
    )
    md_path = RESULTS / f"{name}.md"
    md_path.write_text(text, encoding="utf-8")
    (RESULTS / f"{name}.json").write_text(
        json.dumps({**meta, **data}, indent=2, default=_default) + "\n", encoding="utf-8"
    )
    return md_path


def _default(value: object) -> object:
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:
        pass
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
