"""Personalized, sparse, cheap to send: FedAvg, FedAvg + local fine-tuning, FedBN,
LotteryFL-style (with rewinding) and FedLTN side by side, mean of 3 seeds.

Claims tested (FedLTN, Mugunthan, Lin et al., ECCV 2022; REFERENCES.md): at 90%
sparsity the final model is about 10x smaller (goal: >= 8x), total communication is
4-6x lower (goal: >= 4x) and personalized accuracy is about 10 points above the best
baseline (goal: >= FedAvg + 10 points on a k-classes-per-site split).

Datasets (medsilo's built-ins, partitioned with ``medsilo.data.federate``):

* ``retina`` (RetinaMNIST, 1,600 images, 5 grades), 10 sites, ``partition = "shards"``,
  ``classes_per_site = 2`` (each site holds 2 of the 5 grades): the k-classes split;
* ``retina``, Dirichlet alpha = 0.1 over the labels, 10 and 20 sites (sites left with
  fewer than 20 rows or one class are dropped, ``on_invalid_site = "drop"``, and the
  number kept is reported);
* ``heart`` (UCI Heart Disease), its 4 natural hospitals.

Models: retina, medsilo's GroupNorm CNN (``model.name = "cnn"``, channels (32, 64), 4
groups; 19,909 parameters, of which 293 (biases and GroupNorm, 1.5%) are never pruned: at
90% sparsity of the rest the model can be at most 8.8x smaller by nonzeros. The first
run used channels (16, 32), where those 149 of 5,349 parameters (2.8%) capped it at
8.0x, so that the ">= 8x" goal could only be missed); heart, an MLP with one hidden
layer of 32 (no normalization layer, so FedBN *is* FedAvg there and is not run).

How each setting runs (one process, one thread):

* FedAvg and FedBN: medsilo's own ``Site`` / ``Coordinator`` driven by the ``local``
  engine, built from a study (``medsilo.study.run.build_federation``). FedBN is
  ``strategy.fedbn = true`` (GroupNorm kept local, Li et al., ICLR 2021).
* FedAvg + fine-tuning: each site fine-tunes the final FedAvg model
  (:func:`medsilo.fed.personalization.fine_tune`) before its test evaluation (Manoel et
  al., CHIL 2023); no extra communication.
* LotteryFL-style and FedLTN: ``strategy.name = "fedltn"`` with a ``[lottery]`` section
  (``variant = "lotteryfl"`` / ``"fedltn"``), also through ``Site`` / ``Coordinator`` and
  the local engine; bytes are the coordinator's exact per-round counts.

Bytes are what ``medsilo.fed.sparse.encode`` produces (zlib-compressed), summed over
every site and round: for the lottery settings the exact payloads that crossed; for
FedAvg/FedBN each download is the dense global model and each upload the dense delta,
encoded in the same format, so the ratio compares like with like.
"Final model" is what one site keeps: for FedAvg every parameter; for FedLTN its mask
on the global weights plus its local GroupNorm (mask stored in the same format).
Personalized accuracy is each site's model on its own test split: the global model for
FedAvg, the fine-tuned one, global + local norm (FedBN), mask x global (+ local norm).

    python benchmarks/fedltn.py [--quick]   # --quick: 1 seed, fewer rounds (a smoke run)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from _common import fmt_mean_sd, md_table, mean_sd, write_results

from medsilo.engines.local import LocalEngine, RoundResult
from medsilo.fed import sparse
from medsilo.fed.lottery import LotterySpec
from medsilo.fed.messages import Update
from medsilo.fed.personalization import PersonalizationSpec, fine_tune
from medsilo.fed.site import derive_seed
from medsilo.fed.training import get_weights, set_weights
from medsilo.study.config import StudyConfig, parse_study
from medsilo.study.run import Federation, build_federation

SEEDS = (0, 1, 2)
METHODS = ("fedavg", "fedavg_ft", "fedbn", "lotteryfl", "fedltn")
LABELS = {
    "fedavg": "FedAvg",
    "fedavg_ft": "FedAvg + fine-tuning",
    "fedbn": "FedBN",
    "lotteryfl": "LotteryFL-style (rewinding)",
    "fedltn": "FedLTN",
}


@dataclass(frozen=True)
class Setup:
    name: str
    data_toml: str
    model_toml: str
    rounds: int
    lr: float
    batch: int
    norm: bool
    seeds: tuple[int, ...] = (0, 1, 2)


SETUPS = (
    Setup(
        "retina k-classes (shards, 2 of 5 grades per site), 10 sites",
        'dataset = "retina"\npartition = "shards"\nnum_sites = 10\nclasses_per_site = 2\n'
        'on_invalid_site = "drop"\nmin_site_rows = 20',
        'name = "cnn"\nchannels = [32, 64]\ngroups = 4',
        rounds=15,
        lr=0.05,
        batch=16,
        norm=True,
    ),
    Setup(
        "retina Dirichlet alpha=0.1, 10 sites",
        'dataset = "retina"\npartition = "dirichlet"\nalpha = 0.1\nnum_sites = 10\n'
        'on_invalid_site = "drop"\nmin_site_rows = 20',
        'name = "cnn"\nchannels = [32, 64]\ngroups = 4',
        rounds=15,
        lr=0.05,
        batch=16,
        norm=True,
    ),
    Setup(
        "retina Dirichlet alpha=0.1, 20 sites",
        'dataset = "retina"\npartition = "dirichlet"\nalpha = 0.1\nnum_sites = 20\n'
        'on_invalid_site = "drop"\nmin_site_rows = 10',
        'name = "cnn"\nchannels = [32, 64]\ngroups = 4',
        rounds=15,
        lr=0.05,
        batch=16,
        norm=True,
        # Seed 1 has no Dirichlet(0.1) draw that gives all 20 sites 10 rows (medsilo's
        # partitioner gives up after 1,000 draws), so this setup uses seeds 0, 2, 3.
        seeds=(0, 2, 3),
    ),
    Setup(
        "heart natural (4 hospitals)",
        'dataset = "heart"\npartition = "natural"',
        'name = "mlp"\nhidden = [32]',
        rounds=20,
        lr=0.05,
        batch=16,
        norm=False,
    ),
)

MOMENTUM = 0.9
FINE_TUNE = PersonalizationSpec(fine_tune_epochs=3, fine_tune_lr=0.02, layers="all")
FEDLTN = LotterySpec(
    variant="fedltn",
    target_density=0.1,
    prune_rate=0.2,
    accuracy_threshold=0.5,
    jump_start_epochs=10,
    server_momentum=0.5,
)
LOTTERYFL = LotterySpec(
    variant="lotteryfl", target_density=0.1, prune_rate=0.2, accuracy_threshold=0.5
)


def study(
    setup: Setup, seed: int, rounds: int, fedbn: bool, lottery: LotterySpec | None = None
) -> StudyConfig:
    strategy = f'fedavg"\nfedbn = {"true" if fedbn else "false"}'
    if lottery is not None:
        values = "\n".join(f"{k} = {json.dumps(v)}" for k, v in lottery.model_dump().items())
        strategy = f'fedltn"\n\n[lottery]\n{values}'
    text = f"""
[study]
name = "fedltn-bench"
seed = {seed}
rounds = {rounds}
evaluate_every = 0

[data]
{setup.data_toml}
val_fraction = 0.15
test_fraction = 0.25

[model]
{setup.model_toml}

[train]
local_epochs = 1
batch_size = {setup.batch}
lr = {setup.lr}
momentum = {MOMENTUM}

[strategy]
name = "{strategy}

[baselines]
local_only = false
pooled = false
"""
    return parse_study(text, source="<fedltn benchmark>")


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(dim=1) == y).float().mean()) if len(y) else float("nan")


def tensors(fed: Federation, split: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {
        s.name: (
            torch.from_numpy(getattr(s, f"x_{split}")),
            torch.from_numpy(getattr(s, f"y_{split}")),
        )
        for s in fed.data.sites
    }


@dataclass
class Outcome:
    accuracy: dict[str, float]
    up: int
    down: int
    nonzeros: float
    model_bytes: float
    density: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)


def run_fedavg(setup: Setup, seed: int, rounds: int, fedbn: bool) -> dict[str, Outcome]:
    """FedAvg or FedBN through Site/Coordinator/LocalEngine (+ fine-tuning after FedAvg)."""
    fed = build_federation(study(setup, seed, rounds, fedbn))
    coordinator = fed.coordinator
    sent = {"up": 0, "down": 0}
    previous = {k: v.copy() for k, v in coordinator.weights.items()}

    def on_round(result: RoundResult) -> None:
        nonlocal previous
        updates = [r for r in result.replies if isinstance(r, Update)]
        sent["down"] += len(sparse.encode(previous)) * len(result.replies)
        sent["up"] += sum(len(sparse.encode(u.delta)) for u in updates)
        previous = {k: v.copy() for k, v in coordinator.weights.items()}

    LocalEngine().run(
        coordinator, fed.sites, rounds, on_round=on_round, evaluate_every=0, splits=()
    )
    test = tensors(fed, "test")
    train = tensors(fed, "train")
    whole = get_weights(fed.model_factory())
    size = (sum(v.size for v in whole.values()), len(sparse.encode(whole)))
    accs, tuned = {}, {}
    ft_config = fed.config.train_config()
    for i, (name, site) in enumerate(fed.sites.items()):
        model = fed.model_factory()
        set_weights(model, coordinator.weights)
        set_weights(model, site.local_weights)
        accs[name] = accuracy(model, *test[name])
        if not fedbn:
            fine_tune(
                model,
                *train[name],
                FINE_TUNE,
                ft_config,
                seed=derive_seed(seed, i, 77),
                round=rounds + 1,
            )
            tuned[name] = accuracy(model, *test[name])
    out = {"fedbn" if fedbn else "fedavg": Outcome(accs, sent["up"], sent["down"], *size)}
    if not fedbn:
        out["fedavg_ft"] = Outcome(tuned, sent["up"], sent["down"], *size)
    return out


def run_lottery(setup: Setup, seed: int, rounds: int, spec: LotterySpec) -> Outcome:
    """LotteryFL-style or FedLTN: ``strategy.name = "fedltn"`` with a ``[lottery]``
    section, through medsilo's Site/Coordinator and the local engine."""
    fed = build_federation(study(setup, seed, rounds, fedbn=False, lottery=spec))
    coordinator = fed.coordinator
    sent = {"up": 0, "down": 0}
    densities: list[float] = []
    clients = {name: site.lottery for name, site in fed.sites.items()}

    def on_round(result: RoundResult) -> None:
        sent["up"] += coordinator.traffic["bytes_up"]  # exact sparse payload lengths
        sent["down"] += coordinator.traffic["bytes_down"]
        densities.append(float(np.mean([c.density() for c in clients.values() if c])))

    LocalEngine().run(
        coordinator, fed.sites, rounds, on_round=on_round, evaluate_every=0, splits=()
    )
    test = tensors(fed, "test")
    accs, nonzeros, nbytes, density = {}, [], [], []
    for name, client in clients.items():
        assert client is not None
        personal = client.personalized(coordinator.weights)
        model = fed.model_factory()
        set_weights(model, personal)
        accs[name] = accuracy(model, *test[name])
        nonzeros.append(sparse.nonzeros(personal, client.masks))
        nbytes.append(len(sparse.encode(personal, client.masks)))
        density.append(client.density())
    return Outcome(
        accs,
        sent["up"],
        sent["down"],
        float(np.mean(nonzeros)),
        float(np.mean(nbytes)),
        density=float(np.mean(density)),
        extra={
            "density_by_round": densities,
            "parameters": sum(v.size for v in get_weights(fed.model_factory()).values()),
            "prunable": sum(m.size for m in next(iter(clients.values())).masks.values()),  # type: ignore[union-attr]
        },
    )


def run_setup(setup: Setup, seed: int, rounds: int) -> dict[str, Outcome]:
    out: dict[str, Outcome] = {}
    start = time.perf_counter()
    out.update(run_fedavg(setup, seed, rounds, fedbn=False))
    if setup.norm:
        out.update(run_fedavg(setup, seed, rounds, fedbn=True))
    out["lotteryfl"] = run_lottery(setup, seed, rounds, LOTTERYFL)
    out["fedltn"] = run_lottery(setup, seed, rounds, FEDLTN)
    print(f"  {setup.name}, seed {seed}: {time.perf_counter() - start:.1f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed per setup (smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="override every setup's rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = datetime.now(UTC)
    results: dict[str, dict[int, dict[str, Outcome]]] = {}
    rounds: dict[str, int] = {}
    for setup in SETUPS:
        seeds = setup.seeds[:1] if args.quick else setup.seeds
        rounds[setup.name] = args.rounds or setup.rounds
        results[setup.name] = {s: run_setup(setup, s, rounds[setup.name]) for s in seeds}
    write(results, rounds, started, args.quick or args.rounds is not None)


def _pp(x: float) -> str:
    return f"{100 * x:.1f}"


def write(
    results: dict[str, dict[int, dict[str, Outcome]]],
    rounds_by_setup: dict[str, int],
    started: datetime,
    smoke: bool,
) -> None:
    body: list[str] = []
    data: dict[str, Any] = {"setups": {}, "smoke_run": smoke}
    goals: list[str] = []
    for setup in SETUPS:
        by_seed = results[setup.name]
        seeds = tuple(by_seed)
        methods = [m for m in METHODS if m in by_seed[seeds[0]]]
        rows = []
        summary: dict[str, Any] = {}
        base = by_seed[seeds[0]]["fedavg"]
        for m in methods:
            mean_acc = [float(np.mean(list(by_seed[s][m].accuracy.values()))) for s in seeds]
            total = [by_seed[s][m].up + by_seed[s][m].down for s in seeds]
            base_total = [by_seed[s]["fedavg"].up + by_seed[s]["fedavg"].down for s in seeds]
            o = by_seed[seeds[0]][m]
            nz = float(np.mean([by_seed[s][m].nonzeros for s in seeds]))
            nb = float(np.mean([by_seed[s][m].model_bytes for s in seeds]))
            up = float(np.mean([by_seed[s][m].up for s in seeds]))
            down = float(np.mean([by_seed[s][m].down for s in seeds]))
            comm_ratio = float(np.mean(base_total)) / float(np.mean(total))
            rows.append(
                [
                    LABELS[m],
                    fmt_mean_sd([100 * a for a in mean_acc], 1),
                    f"{float(np.mean([by_seed[s][m].density for s in seeds])):.3f}",
                    f"{nz:,.0f} / {nb:,.0f}",
                    f"{base.nonzeros / nz:.1f}x / {base.model_bytes / nb:.1f}x",
                    f"{up / 1e6:.2f} / {down / 1e6:.2f}",
                    f"{comm_ratio:.1f}x",
                ]
            )
            summary[m] = {
                "accuracy_mean_over_sites": mean_acc,
                "accuracy_per_site": {s: by_seed[s][m].accuracy for s in seeds},
                "density": [by_seed[s][m].density for s in seeds],
                "nonzeros": nz,
                "model_bytes": nb,
                "bytes_up": [by_seed[s][m].up for s in seeds],
                "bytes_down": [by_seed[s][m].down for s in seeds],
                "communication_reduction_vs_fedavg": comm_ratio,
                **o.extra,
            }
        sites = sorted({n for s in seeds for n in by_seed[s]["fedavg"].accuracy})
        site_rows = []
        for name in sites:
            row = [name]
            for m in methods:
                vals = [
                    by_seed[s][m].accuracy[name] for s in seeds if name in by_seed[s][m].accuracy
                ]
                row.append(f"{100 * float(np.mean(vals)):.1f}" if vals else "-")
            site_rows.append(row)
        rounds = rounds_by_setup[setup.name]
        kept = [len(by_seed[s]["fedavg"].accuracy) for s in seeds]
        body += [
            f"## {setup.name}",
            "",
            f"Seeds {list(seeds)}; sites kept per seed {kept}; {rounds} rounds. Personalized "
            "accuracy: mean over sites of each site's test accuracy, then mean ± sd over seeds.",
            "",
            md_table(
                [
                    "setting",
                    "personalized accuracy (%)",
                    "final density",
                    "final model: nonzeros / bytes",
                    "smaller than FedAvg (nonzeros / bytes)",
                    "MB up / down (total)",
                    "communication vs FedAvg",
                ],
                rows,
            ),
            "",
            "Per site (test accuracy %, mean over seeds; with shards/Dirichlet a site name "
            "holds different data in each seed):",
            "",
            md_table(["site", *[LABELS[m] for m in methods]], site_rows),
            "",
        ]
        data["setups"][setup.name] = {"seeds": list(seeds), "rounds": rounds, **summary}
        if setup.name.startswith("retina k-classes"):
            fa = mean_sd(summary["fedavg"]["accuracy_mean_over_sites"])[0]
            lt = mean_sd(summary["fedltn"]["accuracy_mean_over_sites"])[0]
            small_nz = base.nonzeros / summary["fedltn"]["nonzeros"]
            small_b = base.model_bytes / summary["fedltn"]["model_bytes"]
            comm = summary["fedltn"]["communication_reduction_vs_fedavg"]
            best = max(
                (m for m in methods if m not in ("fedltn", "lotteryfl")),
                key=lambda m: mean_sd(summary[m]["accuracy_mean_over_sites"])[0],
            )
            bb = mean_sd(summary[best]["accuracy_mean_over_sites"])[0]
            total_p = summary["fedltn"]["parameters"]
            prunable = summary["fedltn"]["prunable"]
            cap = total_p / (FEDLTN.target_density * prunable + total_p - prunable)
            goals = [
                f"- final model >= 8x smaller: {small_nz:.1f}x by nonzeros "
                f"**{'met' if small_nz >= 8 else 'missed'}**, {small_b:.1f}x by bytes "
                f"**{'met' if small_b >= 8 else 'missed'}**",
                f"- communication >= 4x lower than FedAvg: {comm:.1f}x "
                f"**{'met' if comm >= 4 else 'missed'}**",
                f"- personalized accuracy >= FedAvg + 10 points: FedLTN {_pp(lt)} vs FedAvg "
                f"{_pp(fa)} ({100 * (lt - fa):+.1f} points) "
                f"**{'met' if lt - fa >= 0.10 else 'missed'}**; against the best "
                f"baseline, {LABELS[best]} {_pp(bb)}: {100 * (lt - bb):+.1f} points",
                "",
                "Reading these numbers:",
                "",
                f"- Size: biases and GroupNorm are never pruned ({total_p - prunable} of the "
                f"CNN's {total_p} parameters), so at exactly 90% sparsity of the prunable "
                f"layers the model can be at most {cap:.2f}x smaller by nonzeros; a site that "
                "has not reached the target by the last round keeps a little more. By bytes "
                "the kept float32 values plus each layer's mask (bitmap, zlib) cap it near "
                "6x. FedLTN's ~10x (ECCV 2022) is a parameter count on much larger networks, "
                "where unpruned layers are a negligible share.",
                f"- Rounds: {rounds} per retina setup (20 for heart) so that the whole "
                "benchmark stays near 10 minutes on 2 shared cores; FedAvg's single global "
                "model is far from converged on these pathological splits, which flatters "
                "every personalized method against it.",
                f"- Compute: FedLTN also trains {FEDLTN.jump_start_epochs} Jump-Start epochs "
                f"per site before round 1; fine-tuning adds {FINE_TUNE.fine_tune_epochs} "
                "epochs after the last round. Neither communicates.",
                "- Test sets are small (about 40 images per site on retina shards, fewer on "
                "the Dirichlet splits, where some sites' test split holds a single class).",
            ]
            data["goals"] = {
                "smaller_nonzeros": small_nz,
                "smaller_bytes": small_b,
                "communication_reduction": comm,
                "accuracy_gain_points": 100 * (lt - fa),
            }
    intro = [
        "FedAvg, FedAvg + local fine-tuning, FedBN, LotteryFL-style (with rewinding) and "
        "FedLTN side by side (`benchmarks/fedltn.py`; how each runs is in its docstring). "
        f"Seeds per setup below; local SGD, 1 epoch per round, momentum {MOMENTUM}; "
        f"fine-tuning {FINE_TUNE.fine_tune_epochs} epochs at lr {FINE_TUNE.fine_tune_lr} "
        "(all layers); FedLTN: target density 0.1, prune rate 0.2, accuracy threshold 0.5, "
        f"Jump-Start {FEDLTN.jump_start_epochs} epochs, server momentum "
        f"{FEDLTN.server_momentum}; LotteryFL-style: the same pruning, before training, "
        "with rewinding to the initial weights, shared GroupNorm, no momentum, no "
        "Jump-Start. Every setting runs as a medsilo study (Site/Coordinator/local engine); "
        "fine-tuning is `medsilo.fed.personalization.fine_tune` on the final FedAvg model. "
        "Bytes: zlib-compressed `medsilo.fed.sparse` payloads (FedAvg/FedBN encoded dense "
        "in the same format).",
        "",
        "Goals on the k-classes split (FedLTN vs FedAvg):",
        "",
        *goals,
        "",
    ]
    write_results(
        "fedltn",
        "Personalization: FedAvg, fine-tuning, FedBN, LotteryFL, FedLTN",
        "\n".join(intro + body),
        data,
        started,
    )


if __name__ == "__main__":
    main()
