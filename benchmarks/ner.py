"""Multilingual clinical entity tagging across providers (issue 8), mean of 3 seeds.

(a) E3C clinical entities, one provider per language (English, French, Italian, Spanish,
    Basque): local-only vs federated vs federated + local step vs central-on-public
    (NCBI-disease + BC5CDR English PubMed, Disease -> the clinical-entity type, Chemical
    dropped) vs pooled. Federated = MLM pretraining across the providers, then tagging
    fine-tuning, both FedAvg (:mod:`medsilo.study.text`).
(b) De-identification on MEDDOCAN (Spanish, brat) + GraSCCo (German, BIO; documents
    split 80/20 in file order, no official split exists), PHI types mapped to one scheme
    (:data:`PHI_MAP`): local-only vs federated vs federated + local step.

Goals (issue 8): federated + local step beats local-only on every provider and beats
central-on-public; the local step adds >= 1 F1 point on average; MEDDOCAN PHI F1 >= 0.90.

Every (experiment, seed, setting) is one job; jobs run in parallel processes with one
torch thread each (``--workers``). The tokenizer is a byte-level BPE learnt on the
public English corpora only (train splits of NCBI-disease and BC5CDR).

Reads ../shared/data (or ``--data``); exits with status 2 and says so when it is absent.
E3C is CC BY-NC: it is read from there, never copied into the package.

    python benchmarks/ner.py                       # both experiments, 3 seeds
    python benchmarks/ner.py --quick --seeds 1     # minutes: smoke run
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import REPO, fmt_mean_sd, md_table, mean_sd, write_results

LANGUAGES = ("English", "French", "Italian", "Spanish", "Basque")

PHI_MAP = {
    "meddocan": {
        "NOMBRE_SUJETO_ASISTENCIA": "NAME",
        "NOMBRE_PERSONAL_SANITARIO": "NAME",
        "FAMILIARES_SUJETO_ASISTENCIA": "NAME",
        "FECHAS": "DATE",
        "EDAD_SUJETO_ASISTENCIA": "AGE",
        "TERRITORIO": "LOCATION",
        "CALLE": "LOCATION",
        "PAIS": "LOCATION",
        "HOSPITAL": "ORGANIZATION",
        "INSTITUCION": "ORGANIZATION",
        "CENTRO_SALUD": "ORGANIZATION",
        "ID_SUJETO_ASISTENCIA": "ID",
        "ID_TITULACION_PERSONAL_SANITARIO": "ID",
        "ID_ASEGURAMIENTO": "ID",
        "ID_CONTACTO_ASISTENCIAL": "ID",
        "ID_EMPLEO_PERSONAL_SANITARIO": "ID",
        "CORREO_ELECTRONICO": "CONTACT",
        "NUMERO_TELEFONO": "CONTACT",
        "NUMERO_FAX": "CONTACT",
        "PROFESION": "PROFESSION",
        "SEXO_SUJETO_ASISTENCIA": "SEX",
        "OTROS_SUJETO_ASISTENCIA": "OTHER",
    },
    "grascco": {
        "NAME_PATIENT": "NAME",
        "NAME_DOCTOR": "NAME",
        "NAME_RELATIVE": "NAME",
        "NAME_EXT": "NAME",
        "NAME_USERNAME": "NAME",
        "NAME_TITLE": "O",  # "Dr.", "Prof.": not identifying on their own
        "DATE": "DATE",
        "AGE": "AGE",
        "LOCATION_CITY": "LOCATION",
        "LOCATION_ZIP": "LOCATION",
        "LOCATION_STREET": "LOCATION",
        "LOCATION_COUNTRY": "LOCATION",
        "LOCATION_HOSPITAL": "ORGANIZATION",
        "LOCATION_ORGANIZATION": "ORGANIZATION",
        "ID": "ID",
        "CONTACT_PHONE": "CONTACT",
        "CONTACT_FAX": "CONTACT",
        "CONTACT_EMAIL": "CONTACT",
        "PROFESSION": "PROFESSION",
    },
}
"""MEDDOCAN's 22 and GraSCCo's 19 PHI types -> 10 shared types."""

PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "model": {
            "layers": 2,
            "hidden": 128,
            "heads": 2,
            "intermediate": 512,
            "max_len": 64,
            "overlap": 16,
        },
        "pretrain": {"rounds": 4, "local_epochs": 1, "batch_size": 16, "lr": 0.05},
        "finetune": {"rounds": 12, "local_epochs": 1, "batch_size": 16, "lr": 0.05},
        "local_step": {"fine_tune_epochs": 3},
        "public_sentences": 3000,
    },
    "small": {
        "model": {
            "layers": 1,
            "hidden": 64,
            "heads": 2,
            "intermediate": 128,
            "max_len": 48,
            "overlap": 8,
        },
        "pretrain": {"rounds": 1, "local_epochs": 1, "batch_size": 16, "lr": 0.05},
        "finetune": {"rounds": 8, "local_epochs": 1, "batch_size": 16, "lr": 0.05},
        "local_step": {"fine_tune_epochs": 2},
        "public_sentences": 600,
        "provider_sentences": 300,
        "vocab_size": 2000,
    },
    "quick": {
        "model": {
            "layers": 1,
            "hidden": 32,
            "heads": 2,
            "intermediate": 64,
            "max_len": 48,
            "overlap": 8,
        },
        "pretrain": {"rounds": 1, "local_epochs": 1, "batch_size": 16, "lr": 0.05},
        "finetune": {"rounds": 2, "local_epochs": 1, "batch_size": 16, "lr": 0.05},
        "local_step": {"fine_tune_epochs": 1},
        "public_sentences": 300,
        "provider_sentences": 200,
    },
}


def _study(
    experiment: str, seed: int, preset: dict[str, Any], data: Path, split_dir: Path, device: str
) -> Any:
    from medsilo.study.text import TextStudy

    public_files = [data / "ncbi_disease" / "train.tsv", data / "bc5cdr" / "train.tsv"]
    cap = preset.get("provider_sentences")
    if experiment == "e3c":
        providers = {
            lang.lower(): {
                "train": [data / "e3c_clinical_entities" / lang / "train.txt"],
                "test": [data / "e3c_clinical_entities" / lang / "test.txt"],
                "max_sentences": cap,
            }
            for lang in LANGUAGES
        }
        public = {
            "train": public_files,
            "label_map": {"Disease": "ety", "Chemical": "O"},
            "max_sentences": preset["public_sentences"],
        }
        baselines = ["local", "central_public", "pooled"]
    else:
        providers = {
            "meddocan": {
                "train": [data / "meddocan" / "brat" / "train"],
                "test": [data / "meddocan" / "brat" / "test"],
                "format": "brat",
                "label_map": PHI_MAP["meddocan"],
                "max_sentences": cap,
            },
            "grascco": {
                "train": [split_dir / "grascco_train.tsv"],
                "test": [split_dir / "grascco_test.tsv"],
                "label_map": PHI_MAP["grascco"],
                "max_sentences": cap,
            },
        }
        public = None
        baselines = ["local"]
    return TextStudy.model_validate(
        {
            "study": {"name": experiment, "seed": seed, "threads": 1, "device": device},
            "model": preset["model"],
            "tokenizer": {"public": public_files, "vocab_size": preset.get("vocab_size", 8000)},
            "providers": providers,
            "public": public,
            "pretrain": preset["pretrain"],
            "finetune": preset["finetune"],
            "local_step": preset["local_step"],
            "baselines": baselines,
        }
    )


def _job(args: tuple[str, int, str, dict[str, Any], str, str, str]) -> dict[str, Any]:
    experiment, seed, setting, preset, data, split_dir, device = args
    import torch

    torch.set_num_threads(1)
    from medsilo.study.text import prepare, run_setting

    started = time.perf_counter()
    study = _study(experiment, seed, preset, Path(data), Path(split_dir), device)
    prepared = prepare(study)
    result = run_setting(study, prepared, setting)
    return {
        "experiment": experiment,
        "seed": seed,
        "setting": setting,
        "scores": result.scores,
        "round_seconds": result.round_seconds,
        "mlm_loss": result.mlm_loss,
        "seconds": time.perf_counter() - started,
        "rows": {
            p.name: len(p.tagging) if p.tagging is not None else 0 for p in prepared.providers
        },
    }


def _split_grascco(data: Path, out: Path) -> None:
    """GraSCCo has no official split: the first 80% of its documents train, the rest test.
    Its 90 ``I-`` tags that continue no entity are repaired to ``B-``."""
    from medsilo.data.text import read_conll, write_conll

    corpus = read_conll(data / "grascco_phi" / "grascco_phi.bio.tsv", repair=True)
    documents = list(dict.fromkeys(s.document for s in corpus.sentences))
    cut = round(0.8 * len(documents))
    train = set(documents[:cut])
    write_conll(out / "grascco_train.tsv", [s for s in corpus.sentences if s.document in train])
    write_conll(out / "grascco_test.tsv", [s for s in corpus.sentences if s.document not in train])


SETTINGS = {
    "e3c": [
        "federated",
        *(f"local:{lang.lower()}" for lang in LANGUAGES),
        "central_public",
        "pooled",
    ],
    "deid": ["federated", "local:meddocan", "local:grascco"],
}
ORDER = ["local", "federated", "federated+local", "central_public", "pooled"]


def summarize(runs: Sequence[dict[str, Any]], experiment: str) -> tuple[str, dict[str, Any]]:
    """Mean +- sd over seeds of F1 per provider and setting, and the goals."""
    per: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        if run["experiment"] != experiment:
            continue
        for setting, rows in run["scores"].items():
            for provider, scores in rows.items():
                per.setdefault(setting, {}).setdefault(provider, []).append(scores["f1"])
    settings = [s for s in ORDER if s in per]
    providers = list(next(iter(per.values())))
    rows = []
    for setting in settings:
        means = [mean_sd(per[setting][p])[0] for p in providers]
        rows.append(
            [
                setting,
                *(fmt_mean_sd(per[setting][p]) for p in providers),
                f"{sum(means) / len(means):.3f}",
            ]
        )
    table = md_table(["setting", *providers, "mean"], rows)

    def mean(setting: str, provider: str) -> float:
        return mean_sd(per[setting][provider])[0]

    goals: dict[str, Any] = {}
    if "federated+local" in per and "local" in per:
        goals["fed+local > local on every provider"] = all(
            mean("federated+local", p) > mean("local", p) for p in providers
        )
        gain = [mean("federated+local", p) - mean("federated", p) for p in providers]
        goals["local step gain (F1 points, mean)"] = round(100 * sum(gain) / len(gain), 2)
        goals["local step >= +1 F1 point"] = 100 * sum(gain) / len(gain) >= 1.0
    if "central_public" in per and "federated+local" in per:
        goals["fed+local > central_public (mean)"] = sum(
            mean("federated+local", p) for p in providers
        ) > sum(mean("central_public", p) for p in providers)
    if experiment == "deid":
        best = max(mean(s, "meddocan") for s in settings)
        goals["MEDDOCAN PHI F1 (best setting)"] = round(best, 4)
        goals["MEDDOCAN PHI F1 >= 0.90"] = best >= 0.90
    data = {"f1": per, "goals": goals}
    text = table + "\n\n" + "\n".join(f"- {k}: {v}" for k, v in goals.items())
    return text, data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", choices=["e3c", "deid", "all"], default="all")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny model and data: a smoke run")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--name", default="ner")
    args = parser.parse_args(argv)
    needed = ["e3c_clinical_entities", "ncbi_disease", "bc5cdr", "meddocan", "grascco_phi"]
    missing = [n for n in needed if not (args.data / n).is_dir()]
    if missing:
        print(
            f"ner benchmark: corpora missing under {args.data}: {', '.join(missing)}; "
            "pass --data DIR (see ../shared/data/README.md)",
            file=sys.stderr,
        )
        return 2
    started = datetime.now(UTC)
    preset = PRESETS[args.preset or ("quick" if args.quick else "full")]
    experiments = ["e3c", "deid"] if args.experiment == "all" else [args.experiment]
    with tempfile.TemporaryDirectory() as split_dir:
        _split_grascco(args.data, Path(split_dir))
        jobs = [
            (e, seed, s, preset, str(args.data), split_dir, args.device)
            for seed in range(args.seeds)
            for e in experiments
            for s in SETTINGS[e]
        ]
        # Longest first: the federated and pooled jobs train on every provider's rows.
        jobs.sort(key=lambda j: j[2] not in ("federated", "pooled", "local:meddocan"))
        wall = time.perf_counter()
        with mp.get_context("spawn").Pool(args.workers) as pool:
            runs = []
            for run in pool.imap_unordered(_job, jobs):
                runs.append(run)
                print(
                    f"{run['experiment']} seed {run['seed']} {run['setting']}: "
                    f"{run['seconds']:.0f} s",
                    flush=True,
                )
        wall = time.perf_counter() - wall
    body, data = (
        [],
        {
            "runs": runs,
            "preset": preset,
            "device": args.device,
            "workers": args.workers,
            "wall_seconds": wall,
        },
    )
    for e in experiments:
        text, summary = summarize(runs, e)
        data[e] = summary
        title = (
            "(a) E3C 5-language federation"
            if e == "e3c"
            else "(b) De-identification, MEDDOCAN + GraSCCo"
        )
        body.append(
            f"## {title}\n\nEntity-level F1 (seqeval strict IOB2, micro over types), "
            f"mean ± sd over {args.seeds} seed(s).\n\n{text}"
        )
    rounds = [
        t for r in runs if r["setting"] == "federated" for t in r["round_seconds"]["finetune"]
    ]
    pre = [t for r in runs if r["setting"] == "federated" for t in r["round_seconds"]["pretrain"]]
    timing = (
        f"Wall time per federated round (all providers, one process, 1 thread, "
        f"device {args.device}, {args.workers} jobs in parallel): MLM pretraining "
        f"{fmt_mean_sd(pre, 1)} s, fine-tuning {fmt_mean_sd(rounds, 1)} s."
    )
    body.append(f"## Cost\n\n{timing}")
    write_results(
        args.name,
        "Clinical entity tagging across providers (issue 8)",
        "\n\n".join(body),
        data,
        started,
    )
    print("\n\n".join(body))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
