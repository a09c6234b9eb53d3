"""CPU time of secure aggregation (medsilo.secagg) per round, coordinator and sites.

For n in {5, 10, 50, 100} sites and d in {1e4, 1e5, 1e6} parameters, one session per
(n, d, scenario):

* ``no dropout``: every site takes part in every round;
* ``10% drop``: ceil(n / 10) sites fall silent after sharing their keys (before the
  masked input), so the coordinator rebuilds their mask keys and removes their pairwise
  masks from their neighbours' inputs: the expensive unmasking path.

Graph and threshold come from ``plan_graph(n, dropout_rate=0.2)`` (complete graph for
n <= 20, random Harary graph above; planned for up to 20% dropouts), modulus 2^32,
random inputs. The CPU time of a party in a round is ``time.process_time()`` around its
stage function (one party runs at a time, single-threaded, in one process; no transport
or serialization). Each session's total is checked against the plaintext sum before its
times are kept.
Combinations are run from cheapest to dearest; any that would start after
``--max-seconds`` of wall time are skipped and listed.

    python benchmarks/secagg.py [--max-seconds 600]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _common import md_table, write_results

from medsilo.secagg import Stage, harary_graph, plan_graph
from medsilo.secagg.client import site_step
from medsilo.secagg.server import Finished
from medsilo.secagg.simulate import Simulation

SITES = (5, 10, 50, 100)
SIZES = (10_000, 100_000, 1_000_000)
SCENARIOS = ("no dropout", "10% drop")
BITS = 32


def run(n: int, dim: int, scenario: str, seed: int = 0) -> dict[str, object]:
    """One timed session; per round the coordinator's CPU seconds and each site's."""
    rng = np.random.default_rng(seed)
    sites = [f"site{i:03d}" for i in range(n)]
    plan = plan_graph(n, dropout_rate=0.2)
    graph = harary_graph(sites, plan.degree, rng)
    vectors = {s: rng.integers(0, 2**BITS, size=dim, dtype=np.uint64) for s in sites}
    simulation = Simulation(vectors, plan.threshold, bits=BITS, graph=graph)
    dropped = set(rng.choice(sites, math.ceil(n / 10), replace=False).tolist())
    rounds = []
    for stage in Stage:
        late = scenario == "10% drop" and stage is Stage.MASKED_INPUT_COLLECTION
        silent = dropped if late else set()  # they share their keys, then go silent
        site_seconds, inbox = [], []
        for site, message in simulation.outbox.items():
            if site in silent:
                continue
            start = time.process_time()
            simulation.sites[site], reply = site_step(simulation.sites[site], message)
            site_seconds.append(time.process_time() - start)
            inbox.append(reply)
        start = time.process_time()
        simulation.close(inbox)
        coordinator = time.process_time() - start
        rounds.append({"stage": str(stage), "coordinator": coordinator, "sites": site_seconds})
    state = simulation.coordinator
    assert isinstance(state, Finished)
    expected = np.zeros(dim, dtype=np.uint64)
    for site in state.survivors:
        expected += vectors[site]  # wraps mod 2^64, a multiple of 2^BITS
    assert np.array_equal(state.total, expected % np.uint64(2**BITS)), "wrong sum"
    return {
        "n": n,
        "dim": dim,
        "scenario": scenario,
        "degree": plan.degree,
        "threshold": plan.threshold,
        "survivors": len(state.survivors),
        "rounds": rounds,
    }


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


def report(results: list[dict[str, object]], skipped: list[str], budget: float) -> str:
    summary, detail = [], []
    for r in results:
        rounds = r["rounds"]
        assert isinstance(rounds, list)
        coordinator = sum(x["coordinator"] for x in rounds)
        per_site = [sum(x["sites"]) / len(x["sites"]) for x in rounds]
        head = [r["n"], r["degree"], r["threshold"], f"{r['dim']:.0e}", r["scenario"]]
        summary.append([*head, _ms(coordinator), _ms(sum(per_site))])
        for x, mean in zip(rounds, per_site, strict=True):
            detail.append(
                [*head, x["stage"], _ms(x["coordinator"]), _ms(mean), _ms(max(x["sites"]))]
            )
    columns = ["n", "k", "t", "d", "scenario"]
    body = [
        "CPU time in milliseconds (`time.process_time`), one session per row, modulus"
        " 2^32. k: graph degree (n - 1: complete graph), t: threshold, both from"
        " `plan_graph(n, dropout_rate=0.2)`. `10% drop`: ceil(n/10) sites go silent after"
        " sharing keys. Site times: mean over the sites that ran the round (max in the"
        " detail table). Sums checked against the plaintext sum.",
        "",
        "## Per session",
        "",
        md_table([*columns, "coordinator total", "site total (mean)"], summary),
        "",
        "## Per round",
        "",
        md_table([*columns, "round", "coordinator", "site mean", "site max"], detail),
        "",
        f"Skipped (wall-time budget {budget:.0f} s reached): {', '.join(skipped) or 'none'}.",
    ]
    return "\n".join(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args()
    started = datetime.now(UTC)
    clock = time.monotonic()
    combos = sorted(
        ((n, d, s) for n in SITES for d in SIZES for s in SCENARIOS), key=lambda c: c[0] * c[1]
    )
    results, skipped = [], []
    for n, dim, scenario in combos:
        if time.monotonic() - clock > args.max_seconds:
            skipped.append(f"n={n} d={dim:.0e} {scenario}")
            continue
        results.append(run(n, dim, scenario))
        print(f"n={n} d={dim:.0e} {scenario}: done", file=sys.stderr)
    body = report(results, skipped, args.max_seconds)
    data = {"results": results, "skipped": skipped}
    path = write_results("secagg", "Secure aggregation: CPU time per round", body, data, started)
    print(path)


if __name__ == "__main__":
    main()
