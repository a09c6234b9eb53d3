"""Time that secure aggregation adds per round: medsilo.secagg vs Flower 1.41's SecAgg+.

Same n (sites / clients) and d (parameters), same graph size: medsilo's
``plan_graph(n, dropout_rate=0.2)`` gives degree k and threshold t; Flower gets
``num_shares = k + 1`` (a neighbourhood with the site itself) and
``reconstruction_threshold = t``. Modulus 2^32 on both sides; no dropouts.

Flower (``--worker flower`` / ``flower-secagg``): ``flwr.simulation.run_simulation`` on
Ray, legacy API (SecAgg+ exists only there): a ``ServerApp`` running
``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` with the legacy ``FedAvg``
(every client every round, no client evaluation), against ``DefaultWorkflow()``; the
``ClientApp`` wraps a ``NumPyClient`` whose ``fit`` returns a fixed float32 vector of d
parameters, with ``mods=[secaggplus_mod]`` in the SecAgg+ run. Time per round: between
consecutive calls of the strategy's ``evaluate_fn`` (called after initialisation and
after each round); steady state = median of rounds 2..R. Added time = with - without.
One Ray actor per core (``num_cpus = 1`` per client), as in ``vs_flower.py``.

medsilo (``--worker medsilo``): per round, every site's ``Quantizer.encode`` (clip 1,
modulus 2^32, ``choose_scale``), the whole protocol (``Simulation``: all parties' stage
functions in one process, sequentially) and ``Quantizer.decode`` of the total, against the
plain float sum of the same vectors; added time = the difference (wall clock). Also the
coordinator's CPU time (``time.process_time`` around its stage functions) and the slowest
site's, per round. Each total is checked against the plaintext sum. Steady state =
median of rounds 2..R.

Each measurement runs in its own subprocess, one at a time; the three workers of a
configuration are interleaved within each repetition and their order rotates between
repetitions. Reported: medians over repetitions of the per-run steady-state medians.

    python benchmarks/secagg_vs_flower.py [--reps 3] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from _common import md_table, median, quiet_flower_env, write_results  # noqa: E402

quiet_flower_env()

BITS = 32
SEED = 0
CLIENT_CPUS = 1.0
WORKERS = ("flower", "flower-secagg", "medsilo")
# (n, d, rounds): Flower's simulation costs ~11 s to start plus its rounds; fewer rounds
# where a round is dear (at least 3, so that rounds 2.. give a median).
CONFIGS = ((10, 1_000, 6), (10, 100_000, 5), (100, 1_000, 5), (100, 100_000, 3))


def graph_size(n: int) -> tuple[int, int]:
    """medsilo's degree and threshold for n sites (20% dropouts planned)."""
    from medsilo.secagg import plan_graph

    plan = plan_graph(n, dropout_rate=0.2)
    return plan.degree, plan.threshold


def fixed_vector(dim: int, site: int) -> np.ndarray:
    """The d parameters a client returns every round (float32 in [-1, 1))."""
    rng = np.random.default_rng([SEED, site])
    return rng.uniform(-1.0, 1.0, size=dim).astype(np.float32)


# --------------------------------------------------------------------------- workers


def worker_flower(
    n: int, dim: int, rounds: int, secagg: bool, shares: tuple[int, int] | None = None
) -> dict[str, Any]:
    t0 = time.perf_counter()
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.simulation import run_simulation

    t_import = time.perf_counter()
    degree, threshold = graph_size(n) if shares is None else (shares[0] - 1, shares[1])

    class FixedClient(NumPyClient):  # type: ignore[misc]
        def __init__(self, vector: np.ndarray) -> None:
            self.vector = vector

        def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
            return [self.vector]

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
            return [self.vector], 1, {}

        def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
            return 0.0, 1, {}

    def client_fn(context: Context) -> Any:
        pid = int(context.node_config["partition-id"])
        return FixedClient(fixed_vector(dim, pid)).to_client()

    client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if secagg else [])
    stamps: list[float] = []
    shapes: list[int] = []

    def stamp(server_round: int, parameters: list[np.ndarray], config: dict[str, Any]) -> None:
        stamps.append(time.perf_counter())
        shapes.append(int(parameters[0].size))
        return None

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Any, context: Context) -> None:
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=n,
            min_available_clients=n,
            evaluate_fn=stamp,
            initial_parameters=ndarrays_to_parameters([np.zeros(dim, dtype=np.float32)]),
        )
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy
        )
        if secagg:
            fit = SecAggPlusWorkflow(num_shares=degree + 1, reconstruction_threshold=threshold)
            DefaultWorkflow(fit_workflow=fit)(grid, legacy)
        else:
            DefaultWorkflow()(grid, legacy)

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=n,
        backend_config={
            "client_resources": {"num_cpus": CLIENT_CPUS, "num_gpus": 0.0},
            "init_args": {"num_cpus": os.cpu_count() or 2, "num_gpus": 0},
        },
    )
    if len(stamps) != rounds + 1 or any(s != dim for s in shapes):
        raise RuntimeError(f"Flower simulation did not complete: {len(stamps)} stamps")
    round_s = [b - a for a, b in itertools.pairwise(stamps)]
    return {
        "import_s": t_import - t0,
        "round_s": round_s,
        "num_shares": degree + 1 if secagg else None,
        "reconstruction_threshold": threshold if secagg else None,
    }


def worker_medsilo(n: int, dim: int, rounds: int) -> dict[str, Any]:
    from medsilo.secagg import Quantizer, Stage, choose_scale, harary_graph, plan_graph
    from medsilo.secagg.client import site_step
    from medsilo.secagg.server import Finished
    from medsilo.secagg.simulate import Simulation

    plan = plan_graph(n, dropout_rate=0.2)
    sites = [f"site{i:03d}" for i in range(n)]
    floats = {s: fixed_vector(dim, i).astype(np.float64) for i, s in enumerate(sites)}
    quantizer = Quantizer(clip=1.0, n_sites=n, bits=BITS, scale=choose_scale(1.0, n, BITS))
    plain_s, secure_s, coordinator_cpu, site_cpu_max, site_cpu_sum = [], [], [], [], []
    for r in range(rounds):
        rng = np.random.default_rng([SEED, r])
        start = time.perf_counter()
        plain = np.sum(np.stack([floats[s] for s in sites]), axis=0)
        plain_s.append(time.perf_counter() - start)

        start = time.perf_counter()
        vectors = {s: quantizer.encode(floats[s], rng) for s in sites}
        graph = harary_graph(sites, plan.degree, rng)
        simulation = Simulation(
            vectors, plan.threshold, bits=BITS, graph=graph, session_id=f"bench-round-{r}".encode()
        )
        coordinator, per_site = 0.0, dict.fromkeys(sites, 0.0)
        for _stage in Stage:
            inbox = []
            for site, message in simulation.outbox.items():
                t = time.process_time()
                simulation.sites[site], reply = site_step(simulation.sites[site], message)
                per_site[site] += time.process_time() - t
                inbox.append(reply)
            t = time.process_time()
            simulation.close(inbox)
            coordinator += time.process_time() - t
        state = simulation.coordinator
        assert isinstance(state, Finished) and len(state.survivors) == n
        decoded = quantizer.decode(state.total, count=n)
        secure_s.append(time.perf_counter() - start)

        error = float(np.max(np.abs(decoded - plain)))
        bound = quantizer.error_bound(n, stochastic=True)
        if error >= bound:
            raise RuntimeError(f"secure sum off by {error:.3g} >= bound {bound:.3g}")
        coordinator_cpu.append(coordinator)
        site_cpu_max.append(max(per_site.values()))
        site_cpu_sum.append(sum(per_site.values()))
    return {
        "round_s": [s - p for s, p in zip(secure_s, plain_s, strict=True)],
        "secure_round_s": secure_s,
        "plain_round_s": plain_s,
        "coordinator_cpu_s": coordinator_cpu,
        "site_cpu_max_s": site_cpu_max,
        "site_cpu_sum_s": site_cpu_sum,
        "degree": plan.degree,
        "threshold": plan.threshold,
        "scale": quantizer.scale,
    }


# --------------------------------------------------------------------------- driver


def run_worker(kind: str, n: int, dim: int, rounds: int, workdir: Path) -> dict[str, Any]:
    out = workdir / f"{kind}-{n}-{dim}.json"
    log = workdir / f"{kind}-{n}-{dim}.log"
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--n",
        str(n),
        "--dim",
        str(dim),
        "--rounds",
        str(rounds),
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    with log.open("w") as handle:
        # Its own session: whatever it starts (Ray) is in its process group, ended below.
        proc = subprocess.Popen(
            cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        code = proc.wait()
    wall = time.perf_counter() - start
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # leftovers of this worker only
    if code != 0 or not out.exists():
        tail = log.read_text(errors="replace")[-3000:]
        return {"ok": False, "exit_code": code, "wall_s": wall, "log_tail": tail}
    result = json.loads(out.read_text())
    steady = result["round_s"][1:]
    result.update(ok=True, wall_s=wall, steady_s=median(steady))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="only d = 1e3, 1 repetition")
    parser.add_argument("--worker", choices=WORKERS)
    parser.add_argument("--n", type=int)
    parser.add_argument("--dim", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--shares",
        type=int,
        nargs=2,
        metavar=("NUM_SHARES", "THRESHOLD"),
        help="worker flower-secagg only: Flower's num_shares and reconstruction_threshold "
        "instead of medsilo's graph size (a context measurement, not in the table)",
    )
    args = parser.parse_args()
    if args.worker:
        if args.worker == "medsilo":
            result = worker_medsilo(args.n, args.dim, args.rounds)
        else:
            secagg = args.worker == "flower-secagg"
            shares = tuple(args.shares) if args.shares else None
            result = worker_flower(args.n, args.dim, args.rounds, secagg, shares)  # type: ignore[arg-type]
        args.out.write_text(json.dumps(result))
        return

    started = datetime.now(UTC)
    configs = [c for c in CONFIGS if not args.quick or c[1] == 1_000]
    reps = 1 if args.quick else args.reps
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="secagg-vs-flower-") as tmp:
        workdir = Path(tmp)
        for rep in range(reps):
            for n, dim, rounds in configs:
                order = WORKERS[rep % 3 :] + WORKERS[: rep % 3]
                for kind in order:
                    result = run_worker(kind, n, dim, rounds, workdir)
                    result.update(rep=rep, kind=kind, n=n, dim=dim, rounds=rounds)
                    runs.setdefault(f"{kind}/{n}/{dim}", []).append(result)
                    status = f"{result['steady_s']:.3f} s/round" if result["ok"] else "FAILED"
                    print(f"rep {rep} n={n} d={dim:.0e} {kind}: {status}", file=sys.stderr)
    body, summary = report(runs, configs, reps)
    data = {"configs": configs, "reps": reps, "summary": summary, "runs": runs}
    path = write_results(
        "secagg_vs_flower",
        "Secure aggregation: medsilo vs Flower 1.41 SecAgg+",
        body,
        data,
        started,
    )
    print(path)


def _ok(runs: dict[str, list[dict[str, Any]]], key: str) -> list[dict[str, Any]]:
    return [r for r in runs.get(key, []) if r["ok"]]


def report(
    runs: dict[str, list[dict[str, Any]]], configs: list[tuple[int, int, int]], reps: int
) -> tuple[str, list[dict[str, Any]]]:
    rows, summary, notes = [], [], []
    for n, dim, rounds in configs:
        plain = _ok(runs, f"flower/{n}/{dim}")
        secure = _ok(runs, f"flower-secagg/{n}/{dim}")
        ours = _ok(runs, f"medsilo/{n}/{dim}")
        for kind in WORKERS:
            for r in runs.get(f"{kind}/{n}/{dim}", []):
                if not r["ok"]:
                    notes.append(
                        f"n={n} d={dim:.0e} {kind} rep {r['rep']} failed: exit {r['exit_code']}"
                    )
        # Flower's added time per repetition: that repetition's SecAgg+ run minus its plain
        # run (interleaved, so under the same machine load), then the median.
        pairs = {r["rep"]: r["steady_s"] for r in plain}
        flower_added = [r["steady_s"] - pairs[r["rep"]] for r in secure if r["rep"] in pairs]
        ours_added = [r["steady_s"] for r in ours]
        item: dict[str, Any] = {"n": n, "dim": dim, "rounds": rounds}
        if flower_added and ours_added:
            fa, oa = median(flower_added), median(ours_added)
            coord = median([median(r["coordinator_cpu_s"][1:]) for r in ours])
            site = median([median(r["site_cpu_max_s"][1:]) for r in ours])
            ratio = fa / oa if oa > 0 else float("inf")
            item.update(
                flower_plain_s=median([r["steady_s"] for r in plain]),
                flower_secagg_s=median([r["steady_s"] for r in secure]),
                flower_added_s=fa,
                medsilo_added_s=oa,
                ratio=ratio,
                medsilo_coordinator_cpu_s=coord,
                medsilo_slowest_site_cpu_s=site,
                degree=ours[0]["degree"],
                threshold=ours[0]["threshold"],
            )
            verdict = "met" if ratio >= 3 else "MISSED"
            rows.append(
                [
                    n,
                    f"{dim:.0e}",
                    f"{ours[0]['degree']} / {ours[0]['threshold']}",
                    rounds,
                    f"{item['flower_plain_s']:.3f}",
                    f"{item['flower_secagg_s']:.3f}",
                    f"{fa:.3f}",
                    f"{oa:.3f}",
                    f"**{ratio:.1f}x** ({verdict}, target >= 3x)",
                    f"{coord:.3f}",
                    f"{site:.3f}",
                ]
            )
        summary.append(item)
    header = [
        "n",
        "d",
        "k / t",
        "rounds",
        "Flower plain s/round",
        "Flower SecAgg+ s/round",
        "Flower added s",
        "medsilo added s",
        "ratio",
        "medsilo coordinator CPU s",
        "medsilo slowest site CPU s",
    ]
    big = next((s for s in summary if s["n"] == 100 and s["dim"] == 100_000), None)
    cpu_line = ""
    if big and "medsilo_coordinator_cpu_s" in big:
        c = big["medsilo_coordinator_cpu_s"]
        cpu_line = (
            f"n = 100, d = 1e5: medsilo coordinator CPU {c:.3f} s per round "
            f"({'met' if c < 5 else 'MISSED'}, target < 5 s)."
        )
    body = [
        "Added time per round = time per round with secure aggregation minus without, "
        f"steady state (median of rounds 2..R), median over {reps} interleaved repetition(s). "
        "Ratio = Flower added / medsilo added (higher is better for medsilo). k / t: graph "
        "degree and threshold (medsilo `plan_graph(n, 0.2)`; Flower `num_shares = k + 1`, "
        "`reconstruction_threshold = t`). Modulus 2^32 on both sides, no dropouts.",
        "",
        md_table(header, rows),
        "",
        cpu_line,
        "",
        "What is compared: Flower's added time is wall clock in its Ray simulation (clients "
        "on 2 actors, one per core, so two clients' work overlaps, plus message passing "
        "through the simulation's state). medsilo's is wall clock with every party's stage "
        "functions run one after the other in one process, plus quantization of every "
        "input and decoding of the sum, against a plain float sum (no transport, no "
        "serialization: an engine adds those). In a deployment the sites run in "
        "parallel, so a round's critical path is about the coordinator's CPU plus the "
        "slowest site's (last two columns).",
        "",
        f"Failures: {'; '.join(notes) or 'none'}.",
    ]
    return "\n".join(body), summary


if __name__ == "__main__":
    main()
