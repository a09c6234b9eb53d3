"""Where a ``flower`` round's time goes: the 3-SuperNode study of ``engines.py`` (loopback,
TLS, node authentication, the 99,010-parameter MLP) traced in every process it starts.

Every Python process of the run imports ``_engines_trace/sitecustomize.py`` (through
``PYTHONPATH``), which logs each HTTP request the process makes (start and end on the
wall clock), its CPU time every 0.2 s, and in the SuperLink the CPU time of every request
handler. From the ServerApp's pushes (one per round) this script cuts the run into
rounds and reports, as medians over the steady rounds (the first one, with the joins,
and the last one, with the evaluation, left out):

* the critical path of a round, hop by hop: the ServerApp pushes the messages to the
  SuperLink; the SuperNodes pull them (their poll and the objects); the sites take the
  task and pull its input from their SuperNode; they train; they hand the reply to their
  SuperNode; the SuperNodes push it to the SuperLink; the ServerApp pulls the replies; it
  aggregates, checkpoints and plans the next round (the slowest site or node per hop);
* CPU seconds per round of each process (SuperLink, ServerApp, each SuperNode, each site);
* HTTP requests per round to the SuperLink and from the sites to their SuperNodes;
* the SuperLink's CPU per round in its request handlers (database work, node
  authentication) and outside them (TLS, HTTP, middleware: the event loop).

On a shared machine the figures move with the load (recorded): compare within one run.

    python benchmarks/engines_trace.py [--rounds 10] [--name engines_trace] [--label TEXT]

To trace another version of medsilo, put its ``src`` first on ``PYTHONPATH`` (e.g. from
``git archive REV src | tar -x -C /tmp/old``) and say so with ``--label``.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import md_table, write_results  # noqa: E402
from engines import write_table  # noqa: E402

HOPS = (
    "ServerApp pushes the messages to the SuperLink",
    "SuperNodes pull them (poll, message, objects)",
    "sites take the task and pull its input from their SuperNode",
    "sites train (the work `local` does)",
    "sites hand the reply to their SuperNode",
    "SuperNodes push the replies to the SuperLink",
    "ServerApp pulls the replies",
    "ServerApp aggregates, checkpoints, plans the next round",
)


def role(argv: list[str]) -> str:
    if "site" in argv and "start" in argv:
        return "site " + Path(argv[argv.index("start") + 1]).parent.name
    if "--superlink" in argv:
        return "SuperNode"
    if "--database" in argv:
        return "SuperLink"
    if argv and argv[0].endswith("flwr-serverapp"):
        return "ServerApp"
    return "other"


def load(folder: Path) -> tuple[dict[int, str], list[dict[str, Any]]]:
    roles: dict[int, str] = {}
    events: list[dict[str, Any]] = []
    for path in folder.glob("*.jsonl"):
        pid = int(path.stem)
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event["ev"] == "start":
                roles[pid] = role(event["argv"])
            else:
                events.append({**event, "pid": pid})
    nodes = sorted(p for p, r in roles.items() if r == "SuperNode")
    roles.update({p: f"SuperNode {i}" for i, p in enumerate(nodes)})  # sites start in order
    return roles, events


def analyse(roles: dict[int, str], events: list[dict[str, Any]]) -> dict[str, Any]:
    http = sorted((e for e in events if e["ev"] == "http"), key=lambda e: e["t0"])
    link_port = next(e["port"] for e in http if e["path"].startswith("/v1/fleet/"))
    kind = {pid: r.split()[0] for pid, r in roles.items()}
    pushes = [
        e["t0"]
        for e in http
        if kind.get(e["pid"]) == "ServerApp" and e["path"] == "/v1/runtime/push-messages"
    ]
    # pushes: the hello, each round's training, the last round's evaluation
    steady = list(itertools.pairwise(pushes[2:-1]))  # rounds 2 .. R-1
    hops: dict[str, list[float]] = collections.defaultdict(list)
    for start, end in steady:
        window = [e for e in http if start <= e["t0"] < end]

        def times(who: str, path: str, field: str, w: list[dict[str, Any]] = window) -> dict:
            out: dict[int, float] = {}
            for e in w:
                if kind.get(e["pid"]) == who and e["path"].endswith(path):
                    out.setdefault(e["pid"], e[field])  # the first in the round
            return out

        first_pull = min(times("ServerApp", "/runtime/pull-messages", "t0").values())
        pushed = max(
            e["t1"]
            for e in window
            if kind.get(e["pid"]) == "ServerApp"
            and e["path"].startswith("/v1/runtime/push-")
            and e["t0"] < first_pull
        )
        node_got = times("SuperNode", "/fleet/confirm-message-received", "t1")
        site_got = times("site", "/runtime/confirm-message-received", "t1")
        site_sends = times("site", "/runtime/push-messages", "t0")
        site_sent = times("site", "/runtime/push-task-output", "t1")
        node_sent = max(
            e["t1"]
            for e in window
            if kind.get(e["pid"]) == "SuperNode" and e["path"].startswith("/v1/fleet/push-")
        )
        done = max(
            e["t1"]
            for e in window
            if kind.get(e["pid"]) == "ServerApp" and e["path"].endswith("confirm-message-received")
        )
        for name, value in zip(
            HOPS,
            (
                pushed - start,
                max(node_got.values()) - pushed,
                max(site_got.values()) - max(node_got.values()),
                max(site_sends[p] - site_got[p] for p in site_got),
                max(site_sent[p] - site_sends[p] for p in site_got),
                node_sent - max(site_sent.values()),
                done - node_sent,
                end - done,
            ),
            strict=True,
        ):
            hops[name].append(value)
        hops["round"].append(end - start)
    first, last = steady[0][0], steady[-1][1]
    rounds = len(steady)
    cpu: dict[str, float] = {}
    for pid, name in roles.items():
        samples = sorted((e["t"], e["cpu"]) for e in events if e["ev"] == "cpu" and e["pid"] == pid)
        if name == "other" or len(samples) < 2:
            continue
        clock = [t for t, _ in samples]

        def at(t: float, s: list[tuple[float, float]] = samples, c: list[float] = clock) -> float:
            return s[min(bisect.bisect_left(c, t), len(s) - 1)][1]

        cpu[name] = (at(last) - at(first)) / rounds
    inside = [e for e in http if first <= e["t0"] < last]
    to_link = collections.Counter(e["path"] for e in inside if e["port"] == link_port)
    to_node = collections.Counter(
        e["path"] for e in inside if e["port"] != link_port and kind.get(e["pid"]) == "site"
    )
    handlers: dict[str, list[float]] = collections.defaultdict(list)
    for e in events:
        if e["ev"] == "handler" and first <= e["t"] < last:
            handlers[e["name"]].append(e["cpu"])
    return {
        "rounds": rounds,
        "hops_s": {k: statistics.median(v) for k, v in hops.items()},
        "cpu_s_per_round": cpu,
        "requests_per_round_superlink": {k: v / rounds for k, v in to_link.most_common()},
        "requests_per_round_sites_to_supernodes": {k: v / rounds for k, v in to_node.most_common()},
        "superlink_handlers": {
            k: {"calls_per_round": len(v) / rounds, "cpu_ms_per_call": 1e3 * statistics.mean(v)}
            for k, v in sorted(handlers.items(), key=lambda kv: -sum(kv[1]))
        },
        "superlink_handler_cpu_s_per_round": sum(sum(v) for v in handlers.values()) / rounds,
    }


def report(result: dict[str, Any], load0: Any, started: datetime, name: str, label: str) -> None:
    hops = result["hops_s"]
    hop_table = md_table(
        ["hop (slowest site or node)", "median s"],
        [[h, f"{hops[h]:.3f}"] for h in HOPS] + [["**round**", f"**{hops['round']:.3f}**"]],
    )
    cpu = result["cpu_s_per_round"]
    cpu_table = md_table(
        ["process", "CPU s per round"],
        [[k, f"{v:.3f}"] for k, v in sorted(cpu.items())]
        + [["**all**", f"**{sum(cpu.values()):.3f}**"]],
    )
    link = result["requests_per_round_superlink"]
    node = result["requests_per_round_sites_to_supernodes"]
    requests = md_table(
        ["to", "requests per round", "most frequent"],
        [
            [
                "SuperLink (all clients)",
                f"{sum(link.values()):.0f}",
                ", ".join(f"{k} {v:.0f}" for k, v in list(link.items())[:5]),
            ],
            [
                "SuperNodes (from their sites)",
                f"{sum(node.values()):.0f}",
                ", ".join(f"{k} {v:.0f}" for k, v in list(node.items())[:4]),
            ],
        ],
    )
    handlers = result["superlink_handlers"]
    handler_cpu = result["superlink_handler_cpu_s_per_round"]
    top = ", ".join(
        f"{k} {h['calls_per_round']:.0f} x {h['cpu_ms_per_call']:.1f} ms"
        for k, h in list(handlers.items())[:6]
    )
    body = (
        (f"**{label}**\n\n" if label else "")
        + f"3 SuperNodes on loopback (TLS, node authentication), the 99,010-parameter MLP of "
        f"`engines.py`, FedAvg; medians over {result['rounds']} steady rounds.\n\n"
        f"{hop_table}\n\n{cpu_table}\n\n{requests}\n\n"
        f"SuperLink CPU per round: {handler_cpu:.3f} s in request handlers (database, node "
        f"authentication; {top}) and {cpu.get('SuperLink', 0) - handler_cpu:.3f} s outside "
        "them (TLS, HTTP, middleware).\n\n"
        f"Load average at the start: {load0}."
    )
    write_results(name, "Where a flower round's time goes (traced)", body, result, started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--name", default="engines_trace", help="results/NAME.{json,md}")
    parser.add_argument("--label", default="", help="what was traced (e.g. a git revision)")
    args = parser.parse_args()
    started = datetime.now(UTC)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="medsilo-trace-") as tmp:
        work, trace = Path(tmp) / "work", Path(tmp) / "trace"
        work.mkdir()
        trace.mkdir()
        write_table(work / "table.csv", 3)
        paths = [str(HERE / "_engines_trace"), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "MEDSILO_TRACE_DIR": str(trace), "PYTHONPATH": os.pathsep.join(paths)}
        command = [sys.executable, str(HERE / "engines.py"), "--worker", "flower", "--sites", "3"]
        command += ["--rounds", str(args.rounds), "--workdir", str(work)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            sys.exit(f"the traced run failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        result = analyse(*load(trace))
    import medsilo

    result["medsilo_source"] = str(Path(medsilo.__file__).parent)
    report(result, load0, started, args.name, args.label)
    print((HERE / "results" / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
