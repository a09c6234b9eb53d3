"""medsilo's in-process engine vs Flower 1.41's simulation (Ray) on the same federation.

Workload: logistic regression on a synthetic binary table (10 numeric features, 40 rows
per site, 32 of them in the training split), 10 and 100 sites, 5 rounds of FedAvg, every
site trains every round: one local epoch of batch 32, i.e. one SGD step. The data are
made by medsilo's own pipeline (CSV -> ``build_federation``) and the very same training
arrays and initial weights are handed to Flower's clients, whose local work is medsilo's
``train_local`` step for step (``_flower_app.py``). No evaluation on either side. Both
runs end with the same global model (checked: largest weight difference reported).

Each framework runs in its own subprocess (``--worker``), one at a time, repetitions
interleaved and the order alternating. Measured per run:

* steady-state time per round: median of rounds 2..R (time between the ends of
  consecutive rounds; medsilo: ``LocalEngine`` ``on_round``; Flower: the strategy's
  ``evaluate_fn``, which Flower calls before round 1 and after every round);
* whole run: wall time of the subprocess, from ``python`` starting to its exit (imports,
  data, Ray start-up and shut-down included);
* memory: peak over time of the RSS summed over the subprocess and all its descendants,
  plus any process started during the run that carries the run's tag in its environment
  (Ray's daemons and workers inherit it), sampled every 50 ms with psutil (for
  medsilo a single process; its own ``ru_maxrss`` is reported too). Summed RSS counts
  pages shared between processes (torch's libraries) once per process.

    python benchmarks/vs_flower.py [--quick] [--reps N] [--sites 10 100]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from _common import md_table, median, quiet_flower_env, write_results  # noqa: E402

quiet_flower_env()

ROUNDS = 5
ROWS_PER_SITE = 40
FEATURES = 10
SEED = 0
TRAIN = {"epochs": 1, "batch-size": 32, "lr": 0.1}
CLIENT_CPUS = 1.0  # Flower/Ray: 2 actors on this 2-core machine
# Ray gives each 1-CPU actor OMP_NUM_THREADS=1, so Flower's clients train on one torch
# thread; medsilo's process does the same (two OpenMP threads on these tiny models only
# add stalls, badly so when the machine is shared).
MEDSILO_THREADS = 1


def study_text(csv: Path) -> str:
    features = "\n".join(f'f{i} = "numeric"' for i in range(FEATURES))
    return f"""
[study]
name = "vs-flower"
seed = {SEED}
rounds = {ROUNDS}
evaluate_every = 0

[data]
path = "{csv}"
partition = "natural"
val_fraction = 0.0
test_fraction = 0.2

[data.schema]
label = "y"
site = "site"
classes = ["0", "1"]

[data.schema.features]
{features}

[model]
name = "logreg"

[train]
local_epochs = {TRAIN["epochs"]}
batch_size = {TRAIN["batch-size"]}
lr = {TRAIN["lr"]}

[strategy]
name = "fedavg"

[baselines]
local_only = false
pooled = false
"""


def make_csv(path: Path, sites: int) -> None:
    """Site-shifted logistic data: x ~ N(mu_site, 1), y ~ Bernoulli(sigmoid(x.w))."""
    rng = np.random.default_rng([SEED, sites])
    w = rng.normal(size=FEATURES)
    lines = [",".join([*(f"f{i}" for i in range(FEATURES)), "y", "site"])]
    for s in range(sites):
        mu = rng.normal(scale=0.5, size=FEATURES)
        x = rng.normal(size=(ROWS_PER_SITE, FEATURES)) + mu
        y = (rng.random(ROWS_PER_SITE) < 1 / (1 + np.exp(-(x - mu) @ w))).astype(int)
        y[:2] = (0, 1)  # both classes at every site
        for row, label in zip(x, y, strict=True):
            lines.append(",".join([*(f"{v:.5f}" for v in row), str(label), f"site-{s:03d}"]))
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- workers


def worker_medsilo(workdir: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(MEDSILO_THREADS)
    from medsilo.engines.local import LocalEngine
    from medsilo.study.config import parse_study
    from medsilo.study.run import build_federation

    t_import = time.perf_counter()
    config = parse_study((workdir / "study.toml").read_text())
    fed = build_federation(config)
    t_built = time.perf_counter()
    stamps = [time.perf_counter()]
    LocalEngine().run(
        fed.coordinator,
        fed.sites,
        ROUNDS,
        on_round=lambda result: stamps.append(time.perf_counter()),
        evaluate_every=0,
        splits=(),
    )
    np.savez(workdir / "final-medsilo.npz", **fed.coordinator.weights)
    import resource

    return {
        "import_s": t_import - t0,
        "setup_s": t_built - t_import,
        "stamps": [s - t0 for s in stamps],
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
    }


def worker_flower(workdir: Path, sites: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    import _flower_app
    from flwr.simulation import run_simulation

    t_import = time.perf_counter()
    with np.load(workdir / "init.npz") as f:
        init = {k: f[k] for k in f.files}
    width = int(init["1.weight"].shape[1])
    stamps: list[float] = []
    final: dict[str, np.ndarray] = {}
    info: dict[str, float] = {}
    server_app = _flower_app.make_server_app(
        sites,
        ROUNDS,
        {
            **TRAIN,
            "data-dir": str(workdir / "flower-data"),
            "seed": SEED,
            "width": width,
            "classes": 2,
        },
        init,
        stamps,
        final,
        info,
    )
    run_simulation(
        server_app=server_app,
        client_app=_flower_app.client_app,
        num_supernodes=sites,
        backend_config={
            "client_resources": {"num_cpus": CLIENT_CPUS, "num_gpus": 0.0},
            "init_args": {"num_cpus": os.cpu_count() or 2, "num_gpus": 0},
        },
    )
    if len(stamps) != ROUNDS + 1 or not final:
        raise RuntimeError(f"Flower simulation did not complete: {len(stamps)} stamps")
    np.savez(workdir / "final-flower.npz", **final)
    return {
        "import_s": t_import - t0,
        "stamps": [s - t0 for s in stamps],
        "client_cpus": CLIENT_CPUS,
        **info,
    }


def worker_plain(workdir: Path, sites: int) -> dict[str, Any]:
    """The reference: the same rounds as a bare torch loop (no framework, no medsilo)."""
    t0 = time.perf_counter()
    import resource

    import torch
    from _local_train import derive_seed, logreg, plain_fedavg_round

    torch.set_num_threads(MEDSILO_THREADS)
    t_import = time.perf_counter()
    data = []
    for i in range(sites):
        with np.load(workdir / "flower-data" / f"site-{i}.npz") as f:
            data.append((torch.from_numpy(f["x"]), torch.from_numpy(f["y"])))
    with np.load(workdir / "init.npz") as f:
        state = {k: torch.from_numpy(f[k]) for k in f.files}
    model = logreg(int(state["1.weight"].shape[1]), 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=TRAIN["lr"])
    t_built = time.perf_counter()
    stamps = [time.perf_counter()]
    for r in range(1, ROUNDS + 1):
        seeds = [derive_seed(SEED, i, r) for i in range(sites)]
        state = plain_fedavg_round(
            model, optimizer, state, data, seeds, int(TRAIN["epochs"]), int(TRAIN["batch-size"])
        )
        stamps.append(time.perf_counter())
    np.savez(workdir / "final-plain.npz", **{k: v.numpy() for k, v in state.items()})
    return {
        "import_s": t_import - t0,
        "setup_s": t_built - t_import,
        "stamps": [s - t0 for s in stamps],
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------- measuring


class TreeSampler(threading.Thread):
    """Peak of the RSS summed over a process, its descendants and any process that carries
    this run's tag in its environment (Ray daemons inherit the driver's environment; the
    tag keeps other people's Ray processes on a shared machine out of the sum)."""

    TAG = "MEDSILO_BENCH_RUN"

    def __init__(self, root_pid: int, since: float, tag: str, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.root_pid = root_pid
        self.since = since
        self.tag = tag
        self.interval = interval
        self.stop = threading.Event()
        self.tracked: dict[int, Any] = {}
        self.checked: set[int] = set()
        self.peak_bytes = 0
        self.peak_processes = 0
        self.samples = 0

    def _scan_tagged(self) -> None:
        ps = self.psutil
        for p in ps.process_iter(["pid", "create_time"]):
            pid = p.info["pid"]
            if pid in self.tracked or pid in self.checked:
                continue
            if (p.info["create_time"] or 0) < self.since - 1:
                continue
            self.checked.add(pid)
            try:
                if p.environ().get(self.TAG) == self.tag:
                    self.tracked[pid] = p
            except ps.Error:
                pass

    def run(self) -> None:
        ps = self.psutil
        tick = 0
        while not self.stop.is_set():
            try:
                root = ps.Process(self.root_pid)
                for p in [root, *root.children(recursive=True)]:
                    self.tracked.setdefault(p.pid, p)
            except ps.Error:
                pass
            if tick % 5 == 0:
                self._scan_tagged()
            total, alive = 0, 0
            for p in list(self.tracked.values()):
                try:
                    total += p.memory_info().rss
                    alive += 1
                except ps.Error:
                    pass
            self.peak_bytes = max(self.peak_bytes, total)
            self.peak_processes = max(self.peak_processes, alive)
            self.samples += 1
            tick += 1
            self.stop.wait(self.interval)

    def leftovers(self) -> list[int]:
        out = []
        for pid, p in self.tracked.items():
            try:
                if p.is_running() and p.status() != self.psutil.STATUS_ZOMBIE:
                    out.append(pid)
            except self.psutil.Error:
                pass
        return out


def run_worker(framework: str, sites: int, workdir: Path, log: Path) -> dict[str, Any]:
    result_path = workdir / f"result-{framework}.json"
    result_path.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        framework,
        "--sites",
        str(sites),
        "--workdir",
        str(workdir),
    ]
    tag = f"{os.getpid()}-{time.time_ns()}"
    env = {**os.environ, TreeSampler.TAG: tag}
    since = time.time()
    start = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
        sampler = TreeSampler(proc.pid, since, tag)
        sampler.start()
        code = proc.wait()
        wall = time.perf_counter() - start
        sampler.stop.set()
        sampler.join()
    leftovers = sampler.leftovers()
    for pid in leftovers:  # Ray processes this run started and left behind
        with contextlib.suppress(sampler.psutil.Error):
            sampler.tracked[pid].terminate()
    if code != 0 or not result_path.exists():
        tail = log.read_text(errors="replace")[-4000:]
        return {"ok": False, "exit_code": code, "wall_s": wall, "log_tail": tail}
    out = json.loads(result_path.read_text())
    stamps = out["stamps"]
    rounds = [b - a for a, b in itertools.pairwise(stamps)]
    out.update(
        ok=True,
        wall_s=wall,
        round_s=rounds,
        first_round_s=rounds[0],
        steady_round_s=median(rounds[1:]),
        start_to_round1_s=stamps[0],
        peak_rss_sum_mb=sampler.peak_bytes / 2**20,
        peak_processes=sampler.peak_processes,
        samples=sampler.samples,
        leftover_processes=len(leftovers),
    )
    return out


def prepare(workdir: Path, sites: int) -> None:
    """CSV + study for medsilo; the same training arrays and initial weights for Flower."""
    from medsilo.study.config import parse_study
    from medsilo.study.run import build_federation

    workdir.mkdir(parents=True, exist_ok=True)
    csv = workdir / "data.csv"
    make_csv(csv, sites)
    text = study_text(csv)
    (workdir / "study.toml").write_text(text)
    fed = build_federation(parse_study(text))
    flower = workdir / "flower-data"
    flower.mkdir(exist_ok=True)
    for i, site in enumerate(fed.data.sites):
        np.savez(flower / f"site-{i}.npz", x=site.x_train, y=site.y_train)
    np.savez(workdir / "init.npz", **fed.coordinator.weights)
    sizes = [s.num_train for s in fed.data.sites]
    (workdir / "sizes.json").write_text(json.dumps(sizes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition instead of 5")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--worker", choices=["medsilo", "flower", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        if args.worker == "medsilo":
            out = worker_medsilo(args.workdir)
        elif args.worker == "flower":
            out = worker_flower(args.workdir, args.sites[0])
        else:
            out = worker_plain(args.workdir, args.sites[0])
        (args.workdir / f"result-{args.worker}.json").write_text(json.dumps(out))
        return

    reps = args.reps or (1 if args.quick else 5)
    started = datetime.now(UTC)
    tmp = Path(tempfile.mkdtemp(prefix="medsilo-vs-flower-"))
    for k in args.sites:
        prepare(tmp / f"k{k}", k)

    runs: dict[str, dict[int, list[dict[str, Any]]]] = {
        fw: {k: [] for k in args.sites} for fw in ("medsilo", "flower", "plain")
    }
    failures: list[str] = []
    for rep in range(reps):
        for k in args.sites:
            order = (
                ("flower", "medsilo", "plain") if rep % 2 == 0 else ("plain", "medsilo", "flower")
            )
            for fw in order:
                res = run_worker(fw, k, tmp / f"k{k}", tmp / f"k{k}" / f"log-{fw}-{rep}.txt")
                runs[fw][k].append(res)
                if not res["ok"]:
                    failures.append(f"{fw} at {k} sites (rep {rep + 1}): exit {res['exit_code']}")
                    print(res["log_tail"], file=sys.stderr)
                else:
                    print(
                        f"rep {rep + 1} {fw:8s} {k:4d} sites: steady "
                        f"{res['steady_round_s']:.4f} s/round, "
                        f"first {res['first_round_s']:.3f} s, whole {res['wall_s']:.2f} s, "
                        f"{res['peak_rss_sum_mb']:.0f} MB in {res['peak_processes']} processes",
                        flush=True,
                    )

    # Same model at the end?
    agreement = {}
    for k in args.sites:
        d = tmp / f"k{k}"
        for other in ("flower", "plain"):
            if (d / "final-medsilo.npz").exists() and (d / f"final-{other}.npz").exists():
                with np.load(d / "final-medsilo.npz") as a, np.load(d / f"final-{other}.npz") as b:
                    agreement[f"{k} sites, medsilo vs {other}"] = max(
                        float(np.max(np.abs(a[key] - b[key]))) for key in a.files
                    )

    targets = {"steady": 15.0, "whole": 3.0, "memory": 3.0}
    rows, summary = [], {}
    for k in args.sites:
        ok_m = [r for r in runs["medsilo"][k] if r["ok"]]
        ok_f = [r for r in runs["flower"][k] if r["ok"]]
        ok_p = [r for r in runs["plain"][k] if r["ok"]]
        if not ok_m or not ok_f or not ok_p:
            continue
        p_steady = median([r["steady_round_s"] for r in ok_p])
        p_first = median([r["first_round_s"] for r in ok_p])
        p_whole = median([r["wall_s"] for r in ok_p])
        p_mem = median([r["peak_rss_sum_mb"] for r in ok_p])
        m_steady = median([r["steady_round_s"] for r in ok_m])
        f_steady = median([r["steady_round_s"] for r in ok_f])
        m_whole = median([r["wall_s"] for r in ok_m])
        f_whole = median([r["wall_s"] for r in ok_f])
        m_mem = median([r["peak_rss_sum_mb"] for r in ok_m])
        f_mem = median([r["peak_rss_sum_mb"] for r in ok_f])
        m_first = median([r["first_round_s"] for r in ok_m])
        f_first = median([r["first_round_s"] for r in ok_f])
        # Ratios per repetition (the two runs of a repetition are adjacent in time), then
        # the median: robust to the load of a shared machine changing between repetitions.
        pairs = [
            (m, f)
            for m, f in zip(runs["medsilo"][k], runs["flower"][k], strict=True)
            if m["ok"] and f["ok"]
        ]
        keys = {"steady": "steady_round_s", "whole": "wall_s", "memory": "peak_rss_sum_mb"}
        per_rep = {name: [f[key] / m[key] for m, f in pairs] for name, key in keys.items()}
        per_rep["first"] = [f["first_round_s"] / m["first_round_s"] for m, f in pairs]
        ratios = {name: median(v) for name, v in per_rep.items()}

        def verdict(
            key: str,
            ratios: dict[str, float] = ratios,
            per_rep: dict[str, list[float]] = per_rep,
        ) -> str:
            r = ratios[key]
            t = targets[key]
            spread = f"{min(per_rep[key]):.1f}-{max(per_rep[key]):.1f}"
            return f"{r:.1f}x [{spread}] ({'met' if r >= t else 'MISSED'}, target >= {t:g}x)"

        rows += [
            [
                k,
                "steady round (s)",
                f"{m_steady:.4f}",
                f"{f_steady:.4f}",
                verdict("steady"),
                f"{p_steady:.4f}",
            ],
            [
                k,
                "first round (s)",
                f"{m_first:.3f}",
                f"{f_first:.3f}",
                f"{ratios['first']:.1f}x",
                f"{p_first:.3f}",
            ],
            [
                k,
                "whole run (s)",
                f"{m_whole:.2f}",
                f"{f_whole:.2f}",
                verdict("whole"),
                f"{p_whole:.2f}",
            ],
            [
                k,
                "peak memory (MB)",
                f"{m_mem:.0f}",
                f"{f_mem:.0f}",
                verdict("memory"),
                f"{p_mem:.0f}",
            ],
        ]
        summary[k] = {
            "medsilo": {
                "steady_round_s": m_steady,
                "first_round_s": m_first,
                "whole_s": m_whole,
                "peak_rss_sum_mb": m_mem,
                "import_s": median([r["import_s"] for r in ok_m]),
                "setup_s": median([r["setup_s"] for r in ok_m]),
                "ru_maxrss_mb": median([r["ru_maxrss_mb"] for r in ok_m]),
                "torch_threads": ok_m[0]["torch_threads"],
            },
            "flower": {
                "steady_round_s": f_steady,
                "first_round_s": f_first,
                "whole_s": f_whole,
                "peak_rss_sum_mb": f_mem,
                "import_s": median([r["import_s"] for r in ok_f]),
                "start_to_round1_s": median([r["start_to_round1_s"] for r in ok_f]),
                "peak_processes": max(r["peak_processes"] for r in ok_f),
                "client_cpus": CLIENT_CPUS,
                "client_torch_threads": ok_f[0].get("client_torch_threads"),
            },
            "plain": {
                "steady_round_s": p_steady,
                "first_round_s": p_first,
                "whole_s": p_whole,
                "peak_rss_sum_mb": p_mem,
                "import_s": median([r["import_s"] for r in ok_p]),
            },
            "ratios_flower_over_medsilo": ratios,
            "ratios_per_repetition": per_rep,
            "medsilo_over_plain_steady": m_steady / p_steady,
        }
    detail_rows = []
    for k, s in summary.items():
        m, f = s["medsilo"], s["flower"]
        detail_rows.append(
            [
                k,
                f"import {m['import_s']:.2f} s, data + sites {m['setup_s']:.2f} s, "
                f"ru_maxrss {m['ru_maxrss_mb']:.0f} MB, 1 process, "
                f"{m['torch_threads']} torch thread(s)",
                f"import {f['import_s']:.2f} s, process start to round 1 "
                f"{f['start_to_round1_s']:.2f} s, up to {f['peak_processes']} processes, "
                f"clients on {f['client_torch_threads']:.0f} torch thread(s)",
            ]
        )
    body = (
        f"Logistic regression, synthetic table ({FEATURES} numeric features -> "
        f"{2 * FEATURES} inputs with missing indicators), {ROWS_PER_SITE} rows per site "
        f"(32 train), {ROUNDS} rounds of FedAvg, every site every round, local work one "
        f"epoch of batch {TRAIN['batch-size']} (one SGD step, lr {TRAIN['lr']}); no "
        f"evaluation. Flower: `run_simulation`, Message-API ServerApp with "
        f"`flwr.serverapp.strategy.FedAvg`, ClientApp on Ray, client_resources num_cpus = "
        f"{CLIENT_CPUS:g} (2 actors on 2 cores). Medians of {reps} interleaved repetitions. "
        "Columns medsilo, Flower, plain: medians over repetitions. Ratio = Flower / medsilo "
        "(higher is better for medsilo), computed per repetition from the two adjacent runs, "
        "then the median [range over repetitions]. The last column is the "
        "floor: the same rounds as a bare torch loop in its own process (one model, one "
        "optimizer, same batches, no framework; `_local_train.plain_fedavg_round`).\n\n"
        + md_table(
            ["sites", "measure", "medsilo", "Flower", "Flower / medsilo", "plain torch loop"],
            rows,
        )
        + "\n\nWhere the time goes (medians):\n\n"
        + md_table(["sites", "medsilo", "Flower"], detail_rows)
        + "\n\nSame global model at the end: largest weight difference "
        + ", ".join(f"{k} {v:.1e}" for k, v in agreement.items())
        + ".\n"
        + (
            "\nFailures: " + "; ".join(failures) + " (log tails in the JSON file).\n"
            if failures
            else ""
        )
    )
    out = write_results(
        "vs_flower",
        "medsilo local engine vs Flower 1.41 simulation",
        body,
        {
            "rounds": ROUNDS,
            "rows_per_site": ROWS_PER_SITE,
            "train": TRAIN,
            "repetitions": reps,
            "targets": targets,
            "summary": summary,
            "weight_agreement": agreement,
            "runs": runs,
            "failures": failures,
        },
        started,
    )
    print(out.read_text())
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
