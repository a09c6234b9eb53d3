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

The recorded results that meet the goals (docs/benchmarks.md, "Clinical entity tagging"):

    python benchmarks/ner.py --preset rounds_val --experiment e3c      # (a)
    python benchmarks/ner.py --preset full_data_8ep_all --experiment deid
        --tokenizer-text multilingual                                   # (b), one line

A study too long for one sitting runs in parts (``--first-seed S --seeds K`` and/or
``--settings SETTING ...``, each part its own ``--name``), then ``--merge PART ... --name
WHOLE`` summarizes the parts' runs as one result (refused, exit 2, for parts of another
preset or device, or a run found twice).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import REPO, RESULTS, fmt_mean_sd, md_table, mean_sd, write_results

from medsilo.tasks.deid import PHI_MAP

LANGUAGES = ("English", "French", "Italian", "Spanish", "Basque")

_ADAMW = {"optimizer": "adamw", "batch_size": 32, "lr": 2e-3, "weight_decay": 0.01}
_SMALL_MODEL = {
    "layers": 1,
    "hidden": 64,
    "heads": 2,
    "intermediate": 128,
    "max_len": 48,
    "overlap": 8,
}
"""1 x 64 BERT of the small presets."""
_BASE_MODEL = {
    "layers": 2,
    "hidden": 128,
    "heads": 2,
    "intermediate": 512,
    "max_len": 64,
    "overlap": 16,
}
"""2 x 128 BERT: the largest the 2-core machine trains in a session."""

PRESETS: dict[str, dict[str, Any]] = {
    # AdamW with warmup + linear decay (docs/text.md, "Why the first runs did not learn");
    # sized for ~1 h on the shared 2-core machine. "deid" / "e3c" override per experiment.
    "adamw": {
        "model": _BASE_MODEL,
        "pretrain": {"rounds": 2, "local_epochs": 1, **_ADAMW, "lr": 1e-3},
        "finetune": {"rounds": 5, "local_epochs": 1, **_ADAMW},
        "local_step": {"fine_tune_epochs": 1, "fine_tune_lr": 5e-4},
        "public_sentences": 1500,
        "provider_sentences": 600,
        "deid": {
            "pretrain": {"rounds": 0},
            "finetune": {"rounds": 3, "local_epochs": 1, **_ADAMW},
            "provider_sentences": 2000,  # an eighth of MEDDOCAN's: the shared CPU's limit
        },
    },
    # The "adamw" preset with the collapse fixed (docs/text.md, "Why federated tagging
    # collapsed"): the same fine-tuning steps per site cut into rounds of a few steps
    # instead of one epoch, and lr 5e-3 (better in the 600-sentence diagnosis).
    "rounds": {
        "model": _BASE_MODEL,
        "pretrain": {"rounds": 2, "local_epochs": 1, **_ADAMW, "lr": 1e-3},
        "finetune": {"rounds": 22, "local_steps": 5, **_ADAMW, "lr": 5e-3},
        "local_step": {"fine_tune_epochs": 1, "fine_tune_lr": 5e-4},
        "public_sentences": 1500,
        "provider_sentences": 600,
        "deid": {
            "pretrain": {"rounds": 0},
            # 3 epochs of ~83 steps per site, 10 steps a round
            "finetune": {"rounds": 25, "local_steps": 10, **_ADAMW, "lr": 5e-3},
            "provider_sentences": 2000,
        },
    },
    "full": {
        "model": _BASE_MODEL,
        "pretrain": {"rounds": 4, "local_epochs": 1, "batch_size": 16, "lr": 0.05},
        "finetune": {"rounds": 12, "local_epochs": 1, "batch_size": 16, "lr": 0.05},
        "local_step": {"fine_tune_epochs": 3},
        "public_sentences": 3000,
    },
    # The "small" preset's data, model and rounds with AdamW instead of SGD: the same run
    # as ner_small_e3c but for the optimizer.
    "small_adamw": {
        "model": _SMALL_MODEL,
        "pretrain": {"rounds": 1, "local_epochs": 1, **_ADAMW, "batch_size": 16},
        "finetune": {"rounds": 8, "local_epochs": 1, **_ADAMW, "lr": 3e-3, "batch_size": 16},
        "local_step": {"fine_tune_epochs": 2, "fine_tune_lr": 1e-3},
        "public_sentences": 600,
        "provider_sentences": 300,
        "vocab_size": 2000,
    },
    # "small_adamw" with the fine-tuning cut into rounds of a few steps (as "rounds"):
    # 8 epochs of ~22 steps per provider, 8 steps a round.
    "small_rounds": {
        "model": _SMALL_MODEL,
        "pretrain": {"rounds": 1, "local_epochs": 1, **_ADAMW, "batch_size": 16},
        "finetune": {"rounds": 22, "local_steps": 8, **_ADAMW, "lr": 5e-3, "batch_size": 16},
        "local_step": {"fine_tune_epochs": 2, "fine_tune_lr": 1e-3},
        "public_sentences": 600,
        "provider_sentences": 300,
        "vocab_size": 2000,
    },
    "small": {
        "model": _SMALL_MODEL,
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
# "rounds" at lr 2e-3 (the learning rate of the local taggers that learnt; at 5e-3 and 2,000
# sentences every setting stayed on the all-O plateau: ner_rounds_deid).
PRESETS["rounds_2e-3"] = {
    **PRESETS["rounds"],
    "deid": {
        "pretrain": {"rounds": 0},
        "finetune": {"rounds": 25, "local_steps": 10, **_ADAMW, "lr": 2e-3},
        "provider_sentences": 2000,
    },
}

# "rounds" with a validation split at every provider (15% of its training sentences, held
# out of every setting) that chooses each local step's length, 0 to 5 epochs, by entity F1
# (``[validation]``, docs/text.md): early stopping on the provider's own data instead of a
# fixed epoch count. The local-only baselines choose theirs the same way.
PRESETS["rounds_val"] = {
    **PRESETS["rounds"],
    "local_step": {"fine_tune_epochs": 5, "fine_tune_lr": 5e-4},
    "validation": {"fraction": 0.15},
}

# "rounds_val" at lr 2e-3 for the fine-tuning: a diagnostic of the pooled baseline, which
# stays on the all-O plateau at 5e-3 in ner_rounds_val_e3c (run with --settings pooled;
# chosen after seeing that result, so not the study's table).
PRESETS["rounds_val_2e-3"] = {
    **PRESETS["rounds_val"],
    "finetune": {**PRESETS["rounds_val"]["finetune"], "lr": 2e-3},
}

# The whole MEDDOCAN training set (16,228 sentences, ~21,000 windows: ~660 AdamW steps per
# epoch) and GraSCCo's 80% split, after the O-prior fix (docs/text.md, "Why uninterrupted
# AdamW stalled"): rounds of 66 steps (a tenth of a MEDDOCAN epoch), Adam's moments kept
# at each site (continuous AdamW for the local-only taggers), 5 MEDDOCAN epochs, every
# global model scored once per MEDDOCAN epoch (``score_every``).
PRESETS["full_data"] = {
    **PRESETS["rounds"],
    "deid": {
        "pretrain": {"rounds": 0},
        "finetune": {"rounds": 50, "local_steps": 66, **_ADAMW, "keep_moments": True},
        "provider_sentences": None,
        "score_every": 10,
    },
}
# "full_data" at what reached F1 >= 0.90 for one local MEDDOCAN tagger
# (ner_meddocan_decoding.md): alignment "all" and 8 MEDDOCAN epochs (71 rounds of 66 steps
# = 4,686 steps per site, 581 steps an epoch with the multilingual tokenizer); run it with
# --tokenizer-text multilingual (scores use Viterbi decoding, the default).
PRESETS["full_data_8ep_all"] = {
    **PRESETS["full_data"],
    "model": {**_BASE_MODEL, "alignment": "all"},
    "deid": {
        **PRESETS["full_data"]["deid"],
        "finetune": {**PRESETS["full_data"]["deid"]["finetune"], "rounds": 71},
        "score_every": 9,
    },
}


def _study(
    experiment: str, seed: int, preset: dict[str, Any], data: Path, split_dir: Path, device: str
) -> Any:
    from medsilo.study.text import TextStudy

    preset = {**preset, **preset.get(experiment, {})}
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
            "tokenizer": {
                "public": preset.get("tokenizer_public", public_files),
                "vocab_size": preset.get("vocab_size", 8000),
            },
            "providers": providers,
            "public": public,
            "pretrain": preset["pretrain"],
            "finetune": preset["finetune"],
            "local_step": preset["local_step"],
            "validation": preset.get("validation"),
            "baselines": baselines,
        }
    )


def _job(args: tuple[str, int, str, dict[str, Any], str, str, str, str]) -> dict[str, Any]:
    experiment, seed, setting, preset, data, split_dir, device, save_dir = args
    import torch

    torch.set_num_threads(1)
    from medsilo.study.text import prepare, run_setting, save_models

    started = time.perf_counter()
    study = _study(experiment, seed, preset, Path(data), Path(split_dir), device)
    prepared = prepare(study)
    if setting.startswith("saved:"):
        return _scored_saved(experiment, seed, setting[6:], prepared, started)
    curve: list[dict[str, Any]] = []

    def scored(r: int, scores: dict[str, dict[str, float]]) -> None:
        f1 = {p: round(v["f1"], 4) for p, v in scores.items()}
        curve.append({"round": r, "f1": f1, "seconds": time.perf_counter() - started})
        print(f"{experiment} seed {seed} {setting} round {r}: F1 {f1}", flush=True)

    every = {**preset, **preset.get(experiment, {})}.get("score_every", 0)
    result = run_setting(study, prepared, setting, on_scores=scored, score_every=every)
    if save_dir and result.models:
        save_models(study, prepared, result.models, Path(save_dir) / f"{experiment}-{seed}")
    return {
        "experiment": experiment,
        "seed": seed,
        "setting": setting,
        "scores": result.scores,
        "curve": curve,
        "round_seconds": result.round_seconds,
        "mlm_loss": result.mlm_loss,
        # the local step's epochs, when a validation split chose them
        "local_epochs": result.local_epochs if study.validation is not None else {},
        "seconds": time.perf_counter() - started,
        "rows": {
            p.name: len(p.tagging) if p.tagging is not None else 0 for p in prepared.providers
        },
    }


def _scored_saved(
    experiment: str, seed: int, directory: str, prepared: Any, started: float
) -> dict[str, Any]:
    """The ``federated`` setting scored from the taggers a previous run saved
    (``--save-models``) instead of trained again; its round times are not known."""
    from medsilo.study.text import tagging_scores
    from medsilo.tasks.tagger import Tagger

    folder = Path(directory) / f"{experiment}-{seed}"
    scores: dict[str, dict[str, Any]] = {"federated": {}, "federated+local": {}}
    glob = Tagger.load(folder / "federated")
    if glob.labels != prepared.labels:
        raise SystemExit(f"{folder}: saved labels differ from this run's")
    for p in prepared.providers:
        scores["federated"][p.name] = tagging_scores(glob.model, p, prepared.labels)
        own = Tagger.load(folder / "federated+local" / p.name)
        scores["federated+local"][p.name] = tagging_scores(own.model, p, prepared.labels)
    return {
        "experiment": experiment,
        "seed": seed,
        "setting": "federated",
        "scored_from": str(folder),
        "scores": scores,
        "round_seconds": {"pretrain": [], "finetune": []},
        "mlm_loss": [],
        "seconds": time.perf_counter() - started,
        "rows": {p.name: len(p.tagging) for p in prepared.providers},
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
    providers = list(dict.fromkeys(p for rows in per.values() for p in rows))
    # A setting that did not run for every provider (a study split with --settings) shows
    # "-" there and no mean, and enters no goal.
    complete = {s for s in settings if all(p in per[s] for p in providers)}
    rows = []
    for setting in settings:
        cells = [fmt_mean_sd(per[setting][p]) if p in per[setting] else "-" for p in providers]
        means = [mean_sd(per[setting][p])[0] for p in providers if p in per[setting]]
        shown = f"{sum(means) / len(means):.3f}" if setting in complete else "-"
        rows.append([setting, *cells, shown])
    table = md_table(["setting", *providers, "mean"], rows)

    def mean(setting: str, provider: str) -> float:
        return mean_sd(per[setting][provider])[0]

    goals: dict[str, Any] = {}
    if {"federated+local", "local"} <= complete:
        goals["fed+local > local on every provider"] = all(
            mean("federated+local", p) > mean("local", p) for p in providers
        )
        gain = [mean("federated+local", p) - mean("federated", p) for p in providers]
        goals["local step gain (F1 points, mean)"] = round(100 * sum(gain) / len(gain), 2)
        goals["local step >= +1 F1 point"] = 100 * sum(gain) / len(gain) >= 1.0
    if {"central_public", "federated+local"} <= complete:
        goals["fed+local > central_public (mean)"] = sum(
            mean("federated+local", p) for p in providers
        ) > sum(mean("central_public", p) for p in providers)
    if experiment == "deid" and "meddocan" in providers:
        best = max(mean(s, "meddocan") for s in settings if "meddocan" in per[s])
        goals["MEDDOCAN PHI F1 (best setting)"] = round(best, 4)
        goals["MEDDOCAN PHI F1 >= 0.90"] = best >= 0.90
    chosen = _chosen_epochs(runs, experiment)
    data = {"f1": per, "goals": goals, "local_epochs": chosen}
    text = table + "\n\n" + "\n".join(f"- {k}: {v}" for k, v in goals.items())
    if chosen:
        lines = [
            f"- {setting}: " + ", ".join(f"{p} {'/'.join(map(str, e))}" for p, e in rows.items())
            for setting, rows in chosen.items()
        ]
        text += (
            "\n\nLocal-step epochs chosen on each provider's validation split (one number "
            "per seed, in seed order):\n\n" + "\n".join(lines)
        )
    return text, data


def _chosen_epochs(
    runs: Sequence[dict[str, Any]], experiment: str
) -> dict[str, dict[str, list[int]]]:
    """setting -> provider -> the local step's epochs per seed (runs with validation)."""
    chosen: dict[str, dict[str, list[int]]] = {}
    for run in sorted(runs, key=lambda r: r["seed"]):
        if run["experiment"] != experiment:
            continue
        for setting, rows in run.get("local_epochs", {}).items():
            for provider, epochs in rows.items():
                chosen.setdefault(setting, {}).setdefault(provider, []).append(epochs)
    return chosen


def curve_markdown(runs: Sequence[dict[str, Any]]) -> str:
    """Each job's learning curve: the global model's F1 after every scored round, and the
    training wall time of the rounds since the previous point (scoring excluded)."""
    rows = []
    for run in sorted(runs, key=lambda r: (r["experiment"], r["seed"], r["setting"])):
        times, last = run["round_seconds"]["finetune"], 0
        for point in run.get("curve", []):
            r = point["round"]
            f1 = " / ".join(f"{p} {v:.3f}" for p, v in point["f1"].items())
            rows.append(
                [
                    f"{run['experiment']} {run['setting']} seed {run['seed']}",
                    str(r),
                    f1,
                    f"{sum(times[last:r]):.0f}",
                ]
            )
            last = r
    table = md_table(["job", "after round", "F1 (global model)", "train s since last"], rows)
    return (
        "## Learning curves\n\nThe fine-tuning phase's global model (a local-only job: "
        "that provider's model) scored on the full test splits after every scored round, "
        f"before the local step.\n\n{table}"
    )


def _meddocan_local(data: Path, sentences: int, seed: int) -> tuple[Any, Any, list[str], Any]:
    """The single-tagger experiments' data: MEDDOCAN's first ``sentences`` training and
    first 1000 test sentences (PHI types mapped), their IOB2 labels, and the studies'
    public tokenizer."""
    from medsilo.data.text import bio_labels, entity_types
    from medsilo.study.text import CorpusSection, build_tokenizer, read_corpus

    section = CorpusSection(
        train=[data / "meddocan" / "brat" / "train"],
        test=[data / "meddocan" / "brat" / "test"],
        format="brat",
        label_map=PHI_MAP["meddocan"],
    )
    train = read_corpus(section.train, section)[:sentences]
    test = read_corpus(section.test, section)[:1000]
    labels = bio_labels(entity_types([*train, *test]))
    tokenizer = build_tokenizer(_study("deid", seed, PRESETS["adamw"], data, data, "cpu"))
    return train, test, labels, tokenizer


ARGMAX: Final = "argmax"
"""Decoding of the diagnose, plateau and rounds experiments: their results were recorded
before IOB2-constrained Viterbi became the default (session 6), with per-word argmax; they
keep it so that their recorded figures reproduce."""


def diagnose(data: Path, sentences: int, epochs: int, seed: int = 0) -> dict[str, Any]:
    """One local MEDDOCAN tagger (first ``sentences`` training sentences, PHI types mapped),
    trained the same way but for the optimizer: the SGD the first runs used (lr 0.05,
    momentum 0.9, batch 16) vs AdamW (lr 2e-3, warmup 6% + linear decay, batch 32), with
    entity F1 on the first 1000 test sentences after every epoch; and the data checks:
    label alignment round trip, share of O, sub-tokens per word, windowed sentences."""
    import numpy as np
    import torch

    from medsilo.fed.messages import TrainConfig
    from medsilo.fed.training import train_local
    from medsilo.tasks.text import (
        TextModelSpec,
        build_tagger,
        decode_tags,
        encode_tagging,
        entity_scores,
        predict_tags,
        train_adamw,
    )

    torch.set_num_threads(1)
    train, test, labels, tokenizer = _meddocan_local(data, sentences, seed)
    spec = TextModelSpec(**PRESETS["adamw"]["model"])
    kw = {"max_len": spec.max_len, "overlap": spec.overlap}
    tr = encode_tagging(train, tokenizer, labels, **kw)
    te = encode_tagging(test, tokenizer, labels, **kw)
    gold = decode_tags(np.where(te.labels < 0, 0, te.labels), te, labels)
    pieces = [len(p) for s in test for p in tokenizer.encode_words(s.words)]
    checks = {
        "alignment_round_trip": gold == [list(s.tags) for s in test],
        "share_O_of_labelled_tokens": float((tr.labels[tr.labels >= 0] == 0).mean()),
        "subtokens_per_word": float(np.mean(pieces)),
        "rows_per_sentence": len(tr) / len(train),
        "train_rows": len(tr),
    }
    x, y = torch.from_numpy(tr.ids), torch.from_numpy(tr.labels)
    curves: dict[str, list[dict[str, float]]] = {}
    for optimizer in ("sgd", "adamw"):
        model = build_tagger(spec, tokenizer, labels, seed=seed)
        phase = _phase(optimizer, epochs)
        curve = []
        for epoch in range(epochs):
            started = time.perf_counter()
            if optimizer == "sgd":
                loss = train_local(model, x, y, TrainConfig(1, 16, 0.05, 0.9), seed=seed + epoch)
            else:
                schedule = phase.schedule(len(y))
                steps = -(-len(y) // phase.batch_size)
                loss = train_adamw(
                    model,
                    x,
                    y,
                    schedule,
                    epochs=1,
                    batch_size=phase.batch_size,
                    seed=seed + epoch,
                    start_step=epoch * steps,
                )
            seconds = time.perf_counter() - started
            predicted = predict_tags(model, te, labels, ARGMAX)
            scores = entity_scores([s.tags for s in test], predicted)
            curve.append({"epoch": epoch + 1, "loss": loss, "seconds": seconds, **scores})
            print(f"diagnose {optimizer} epoch {epoch + 1}: F1 {scores['f1']:.3f}", flush=True)
        curves[optimizer] = curve
    return {"checks": checks, "curves": curves, "sentences": len(train), "epochs": epochs}


PLATEAU_CONFIGS: list[tuple[float, bool]] = [(0.0, False), (0.0, True), (0.9, False), (0.9, True)]
"""(outside_prior, Adam's moments restarted every epoch) of the plateau experiment."""


def _adamw_epochs(
    model: Any, x: Any, y: Any, epochs: int, seed: int, moments: dict[str, Any] | None
) -> Iterator[tuple[int, float, float]]:
    """Continuous AdamW (lr 2e-3, batch 32, 6 % warmup, linear decay to 0 at the last
    epoch), one epoch at a time: yields (0-based epoch, mean loss, training seconds).
    ``moments``: Adam's state carried across epochs (None restarts it every epoch)."""
    from medsilo.tasks.text import AdamWSchedule, train_adamw

    per = -(-len(y) // 32)
    total = per * epochs
    schedule = AdamWSchedule(lr=2e-3, total_steps=total, warmup_steps=round(0.06 * total))
    for epoch in range(epochs):
        started = time.perf_counter()
        loss = train_adamw(
            model,
            x,
            y,
            schedule,
            batch_size=32,
            seed=seed,
            start_step=epoch * per,
            steps=per,
            moments=moments,
        )
        yield epoch, loss, time.perf_counter() - started


def _plateau_job(args: tuple[int, str, int, int, int]) -> dict[str, Any]:
    """One local MEDDOCAN tagger (first ``sentences`` training sentences, first 1000 test
    sentences), AdamW lr 2e-3 with 6% warmup and linear decay over ``epochs`` epochs,
    batch 32: the classifier's bias at zero (uniform start, ``outside_prior = 0``) or at
    the O prior, Adam's moments kept over the whole run or restarted every epoch. After
    every epoch: mean training loss, test F1, and the gradient norm reaching the encoder
    (everything but the classifier) on a fixed batch of 32 training rows."""
    import numpy as np
    import torch

    from medsilo.tasks.text import (
        TextModelSpec,
        build_tagger,
        encode_tagging,
        entity_scores,
        predict_tags,
    )

    index, data_dir, sentences, epochs, seed = args
    prior, restart = PLATEAU_CONFIGS[index]
    torch.set_num_threads(1)
    train, test, labels, tokenizer = _meddocan_local(Path(data_dir), sentences, seed)
    spec = TextModelSpec(**PRESETS["adamw"]["model"], outside_prior=prior)
    kw = {"max_len": spec.max_len, "overlap": spec.overlap}
    tr = encode_tagging(train, tokenizer, labels, **kw)
    te = encode_tagging(test, tokenizer, labels, **kw)
    x, y = torch.from_numpy(tr.ids), torch.from_numpy(tr.labels)
    model = build_tagger(spec, tokenizer, labels, seed=seed)

    def encoder_grad() -> float:
        model.eval()
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:32]), y[:32]).backward()  # type: ignore[no-untyped-call]
        sq = sum(
            float((p.grad**2).sum())
            for n, p in model.named_parameters()
            if p.grad is not None and "classifier" not in n
        )
        model.zero_grad()
        return sq**0.5

    moments: dict[str, Any] | None = None if restart else {}
    curve = [{"epoch": 0, "encoder_grad": encoder_grad()}]
    for epoch, loss, seconds in _adamw_epochs(model, x, y, epochs, seed, moments):
        f1 = entity_scores([t.tags for t in test], predict_tags(model, te, labels, ARGMAX))["f1"]
        curve.append(
            {
                "epoch": epoch + 1,
                "loss": loss,
                "f1": f1,
                "encoder_grad": encoder_grad(),
                "seconds": seconds,
            }
        )
        print(
            f"plateau {prior} {restart} epoch {epoch + 1}: loss {loss:.3f} F1 {f1:.3f}",
            flush=True,
        )
    return {
        "outside_prior": prior,
        "restart": restart,
        "curve": curve,
        "rows": len(y),
        "label_share_O": float(np.mean(tr.labels[tr.labels >= 0] == 0)),
    }


def plateau_markdown(runs: Sequence[dict[str, Any]], sentences: int, epochs: int) -> str:
    rows = []
    for run in sorted(runs, key=lambda r: (r["outside_prior"], r["restart"])):
        start = "O prior 0.9" if run["outside_prior"] else "uniform (zero bias)"
        adam = "restarted every epoch" if run["restart"] else "kept (one continuous run)"
        c = run["curve"]
        rows.append(
            [
                start,
                adam,
                " / ".join(f"{p['loss']:.3f}" for p in c[1:]),
                " / ".join(f"{p['f1']:.3f}" for p in c[1:]),
                " / ".join(f"{p['encoder_grad']:.3f}" for p in c),
            ]
        )
    table = md_table(
        [
            "classifier bias at start",
            "Adam's moments",
            "train loss per epoch",
            "test F1 per epoch",
            "encoder grad norm (init, then per epoch)",
        ],
        rows,
    )
    return (
        f"## Why uninterrupted AdamW stalled\n\nOne local MEDDOCAN tagger, first {sentences} "
        f"training sentences ({runs[0]['rows']} windows, {100 * runs[0]['label_share_O']:.0f}% of "
        f"labelled tokens O), first 1000 test sentences, 2 x 128 BERT from scratch, AdamW lr "
        f"2e-3 (6% warmup, linear decay over {epochs} epochs), batch 32; encoder gradient "
        f"norm on a fixed batch of 32 training rows, eval mode.\n\n{table}"
    )


SPEED_MODELS: list[tuple[int, int, int, int]] = [
    (2, 128, 2, 512),
    (2, 256, 4, 1024),
    (4, 256, 4, 1024),
    (12, 768, 12, 3072),
]
"""(layers, hidden, heads, intermediate): the base model, two larger ones, BERT-base."""


def speed(data: Path, steps: int, seed: int = 0) -> dict[str, Any]:
    """AdamW training step time (batch 32 windows of 64 sub-tokens of MEDDOCAN, 1 torch
    thread) of each :data:`SPEED_MODELS` size, measured one after the other in one
    process, and what one epoch of the full MEDDOCAN training set (its number of windows
    / 32 steps) would take at that speed."""
    import torch

    from medsilo.study.text import CorpusSection, build_tokenizer, read_corpus
    from medsilo.tasks.text import (
        AdamWSchedule,
        TextModelSpec,
        build_tagger,
        encode_tagging,
        train_adamw,
    )

    torch.set_num_threads(1)
    section = CorpusSection(
        train=[data / "meddocan" / "brat" / "train"],
        format="brat",
        label_map=PHI_MAP["meddocan"],
    )
    from medsilo.data.text import bio_labels, entity_types

    train = read_corpus(section.train, section)
    labels = bio_labels(entity_types(train))
    tokenizer = build_tokenizer(_study("deid", seed, PRESETS["adamw"], data, data, "cpu"))
    base = TextModelSpec(**PRESETS["adamw"]["model"])
    encoded = encode_tagging(train, tokenizer, labels, max_len=base.max_len, overlap=base.overlap)
    x, y = torch.from_numpy(encoded.ids), torch.from_numpy(encoded.labels)
    epoch_steps = -(-len(y) // 32)
    rows = []
    for layers, hidden, heads, intermediate in SPEED_MODELS:
        spec = base.model_copy(
            update={
                "layers": layers,
                "hidden": hidden,
                "heads": heads,
                "intermediate": intermediate,
            }
        )
        model = build_tagger(spec, tokenizer, labels, seed=seed)
        schedule = AdamWSchedule(lr=2e-3, total_steps=steps + 1, warmup_steps=1)
        train_adamw(model, x, y, schedule, batch_size=32, seed=seed, steps=1)  # warm up
        started = time.perf_counter()
        train_adamw(model, x, y, schedule, batch_size=32, seed=seed, start_step=1, steps=steps)
        step = (time.perf_counter() - started) / steps
        rows.append(
            {
                "layers": layers,
                "hidden": hidden,
                "parameters": sum(p.numel() for p in model.parameters()),
                "seconds_per_step": step,
                "epoch_minutes": step * epoch_steps / 60,
            }
        )
        print(f"speed {layers} x {hidden}: {step:.3f} s/step", flush=True)
    return {"rows": rows, "steps": steps, "epoch_steps": epoch_steps, "windows": len(y)}


def speed_markdown(result: dict[str, Any]) -> str:
    first = result["rows"][0]["seconds_per_step"]
    rows = [
        [
            f"{r['layers']} x {r['hidden']}",
            f"{r['parameters'] / 1e6:.1f} M",
            f"{1000 * r['seconds_per_step']:.0f}",
            f"{r['seconds_per_step'] / first:.1f}",
            f"{r['epoch_minutes']:.0f}",
        ]
        for r in result["rows"]
    ]
    table = md_table(
        ["model", "parameters", "ms / step", "x the 2 x 128", "min / MEDDOCAN epoch"], rows
    )
    return (
        f"## Step time by model size\n\nAdamW steps of 32 MEDDOCAN windows (64 sub-tokens), "
        f"1 torch thread, {result['steps']} steps per size after one warm-up step, the sizes "
        f"one after the other in one process; one epoch of the full training set is "
        f"{result['epoch_steps']} steps ({result['windows']} windows).\n\n{table}"
    )


def _phase(optimizer: str, epochs: int) -> Any:
    from medsilo.study.text import PhaseSection

    return PhaseSection(
        rounds=epochs, optimizer=optimizer, batch_size=32, lr=2e-3, weight_decay=0.01
    )


def diagnose_markdown(result: dict[str, Any]) -> str:
    rows = []
    for optimizer, curve in result["curves"].items():
        for point in curve:
            rows.append(
                [
                    optimizer,
                    str(point["epoch"]),
                    f"{point['loss']:.3f}",
                    f"{point['f1']:.3f}",
                    f"{point['precision']:.3f}",
                    f"{point['recall']:.3f}",
                    f"{point['seconds']:.0f}",
                ]
            )
    table = md_table(["optimizer", "epoch", "train loss", "F1", "P", "R", "s/epoch"], rows)
    checks = "\n".join(f"- {k}: {v}" for k, v in result["checks"].items())
    return (
        f"## Diagnosis: one local MEDDOCAN tagger, SGD vs AdamW\n\n"
        f"{result['sentences']} training sentences, PHI types mapped to the shared scheme, "
        f"first 1000 test sentences; same model (2 x 128 BERT from scratch), same data.\n\n"
        f"{table}\n\nData checks:\n\n{checks}"
    )


# (name, members, lr, steps per round (0: one epoch), keep Adam's moments)
ROUND_CONFIGS: list[tuple[str, str, float, int, bool]] = [
    ("federated, 1-epoch rounds (the collapsed run's setup)", "federated", 2e-3, 0, False),
    ("federated, 5-step rounds", "federated", 2e-3, 5, False),
    ("federated, 5-step rounds, lr 5e-3", "federated", 5e-3, 5, False),
    ("federated, 5-step rounds, moments kept", "federated", 2e-3, 5, True),
    ("pooled, one continuous AdamW run", "pooled", 2e-3, 0, True),
    ("local MEDDOCAN, 1-epoch rounds", "meddocan", 2e-3, 0, False),
    ("local GraSCCo, 1-epoch rounds", "grascco", 2e-3, 0, False),
]


def _rounds_job(args: tuple[int, str, int, int, str]) -> dict[str, Any]:
    """One :data:`ROUND_CONFIGS` entry: the de-identification federation (first
    ``sentences`` training sentences per provider, first 800 test sentences) trained for
    ``epochs`` epochs per site, the global model's F1 on each provider's test at the end
    and the mean training loss of every round."""
    import math

    import torch

    from medsilo.fed.coordinator import Coordinator
    from medsilo.fed.training import get_weights, set_weights
    from medsilo.study.text import TextSite, _pool, _site_data, prepare, tagging_scores
    from medsilo.tasks.text import build_tagger, encode_tagging

    index, data, sentences, epochs, split_dir = args
    name, who, lr, steps, keep = ROUND_CONFIGS[index]
    torch.set_num_threads(1)
    started = time.perf_counter()
    preset = {**PRESETS["adamw"]}
    finetune = {**preset["deid"]["finetune"], "lr": lr, "keep_moments": keep}
    preset["deid"] = {**preset["deid"], "provider_sentences": sentences, "finetune": finetune}
    study = _study("deid", 0, preset, Path(data), Path(split_dir), "cpu")
    prepared = prepare(study)
    providers = prepared.providers
    for p in providers:
        p.test = p.test[:800]
        p.test_encoded = encode_tagging(
            p.test,
            prepared.tokenizer,
            prepared.labels,
            max_len=study.model.max_len,
            overlap=study.model.overlap,
        )
    if who == "federated":
        members = providers
    elif who == "pooled":
        members = [_pool(providers)]
    else:
        members = [p for p in providers if p.name == who]
    per_epoch = max(-(-len(m.tagging or ()) // study.finetune.batch_size) for m in members)
    rounds = epochs if steps == 0 else math.ceil(epochs * per_epoch / steps)
    phase = study.finetune.model_copy(update={"rounds": rounds, "local_steps": steps or None})

    def tagger() -> Any:
        return build_tagger(study.model, prepared.tokenizer, prepared.labels, seed=0)

    sites = {}
    for i, m in enumerate(members):
        assert m.tagging is not None
        rows = len(m.tagging)
        sites[m.name] = TextSite(
            i,
            _site_data(m.name, m.tagging.ids, m.tagging.labels),
            tagger,
            0,
            task="tagging",
            tokenizer=prepared.tokenizer,
            adamw=phase.schedule(rows),
            round_steps=phase.round_steps(rows),
            keep_moments=keep,
        )
    first = next(iter(sites.values())).model
    coordinator = Coordinator(get_weights(first), study.strategy, list(sites), phase.config(), 0)
    losses = []
    for r in range(1, rounds + 1):
        plans = coordinator.plan(r)
        replies = [sites[n].on_plan(plans[n]) for n in sites]
        coordinator.aggregate(r, replies)
        losses.append([float(u.metrics["train_loss"]) for u in replies])  # type: ignore[union-attr]
    set_weights(first, coordinator.weights)
    f1 = {p.name: tagging_scores(first, p, prepared.labels, ARGMAX)["f1"] for p in providers}
    return {
        "config": name,
        "rounds": rounds,
        "loss": losses,
        "f1": f1,
        "seconds": time.perf_counter() - started,
    }


def rounds_markdown(runs: Sequence[dict[str, Any]], sentences: int, epochs: int) -> str:
    rows = []
    for run in sorted(runs, key=lambda r: [c[0] for c in ROUND_CONFIGS].index(r["config"])):
        last = run["loss"][-1]
        rows.append(
            [
                run["config"],
                str(run["rounds"]),
                " / ".join(f"{v:.3f}" for v in last),
                f"{run['f1']['meddocan']:.3f}",
                f"{run['f1']['grascco']:.3f}",
            ]
        )
    table = md_table(
        ["setup", "rounds", "last round's train loss", "F1 MEDDOCAN", "F1 GraSCCo"], rows
    )
    return (
        f"## Why federated de-identification collapsed\n\n"
        f"First {sentences} training sentences per provider, first 800 test sentences, "
        f"{epochs} epochs of AdamW fine-tuning per site (batch 32, 6% warmup, linear decay "
        f"over the phase), 2 x 128 BERT from scratch; the model scored is the global one "
        f"after the last round.\n\n{table}"
    )


# ------------------------------------------------ one MEDDOCAN tagger, many epochs (issue 8)

TOKENIZER_TEXTS = ("pubmed", "multilingual")
"""Public text the byte-level BPE is learnt on: ``pubmed`` = the English PubMed train
splits of NCBI-disease and BC5CDR (the studies' default); ``multilingual`` = those plus
E3C's clinical cases in its 5 languages (train and test; CC BY-NC, benchmark only) and
Faker's es_ES / de_DE locales (word lists, names, addresses, companies, jobs: public data
shipped in an installed package)."""


def _faker_lines(locale: str, count: int, seed: int = 0) -> list[str]:
    """``count`` lines of each kind of Faker's ``locale`` (seeded): its lorem word list,
    person names, addresses, companies, jobs, phone numbers and e-mails."""
    from faker import Faker

    fake = Faker(locale)
    fake.seed_instance(seed)
    kinds = (fake.name, fake.address, fake.company, fake.job, fake.phone_number, fake.email)
    lines = [" ".join(fake.words(12)) for _ in range(count)]
    return lines + [kind().replace("\n", " ") for kind in kinds for _ in range(count)]


def _meddocan_grams(data: Path, n: int = 8) -> set[tuple[str, ...]]:
    """Every word ``n``-gram of MEDDOCAN (train, dev and test): text that must not reach
    the tokenizer."""
    from medsilo.study.text import CorpusSection, read_corpus

    grams: set[tuple[str, ...]] = set()
    for split in ("train", "dev", "test"):
        path = data / "meddocan" / "brat" / split
        for s in read_corpus([path], CorpusSection(train=[path], format="brat")):
            grams.update(tuple(s.words[i : i + n]) for i in range(len(s.words) - n + 1))
    return grams


def public_texts(data: Path, which: str) -> tuple[list[str], dict[str, int]]:
    """The lines of public text of :data:`TOKENIZER_TEXTS` ``which``, and how many lines
    each source gave. E3C's Spanish cases partly come from SPACCC, MEDDOCAN's source
    collection: an E3C sentence sharing any word 8-gram with MEDDOCAN is dropped (the
    count is reported as ``e3c_dropped_overlap``), so no MEDDOCAN text reaches it."""
    from medsilo.data.text import read_conll

    counts: dict[str, int] = {}
    lines: list[str] = []
    for name in ("ncbi_disease", "bc5cdr"):
        got = [" ".join(s.words) for s in read_conll(data / name / "train.tsv").sentences]
        counts[name] = len(got)
        lines += got
    if which == "pubmed":
        return lines, counts
    banned = _meddocan_grams(data)
    dropped = 0
    for lang in LANGUAGES:
        kept = []
        for split in ("train", "test"):
            for s in read_conll(data / "e3c_clinical_entities" / lang / f"{split}.txt").sentences:
                w = s.words
                if any(tuple(w[i : i + 8]) in banned for i in range(len(w) - 7)):
                    dropped += 1
                else:
                    kept.append(" ".join(w))
        counts[f"e3c_{lang.lower()}"] = len(kept)
        lines += kept
    counts["e3c_dropped_overlap"] = dropped
    for locale in ("es_ES", "de_DE"):
        got = _faker_lines(locale, 3000)
        counts[f"faker_{locale}"] = len(got)
        lines += got
    return lines, counts


def _phi_corpora(data: Path) -> dict[str, tuple[list[Any], list[Any]]]:
    """MEDDOCAN (brat train / test) and GraSCCo (80/20 document split), PHI types mapped."""
    from medsilo.study.text import CorpusSection, read_corpus

    out = {}
    section = CorpusSection(
        train=[data / "meddocan" / "brat" / "train"],
        test=[data / "meddocan" / "brat" / "test"],
        format="brat",
        label_map=PHI_MAP["meddocan"],
    )
    out["meddocan"] = (read_corpus(section.train, section), read_corpus(section.test, section))
    with tempfile.TemporaryDirectory() as split_dir:
        _split_grascco(data, Path(split_dir))
        g = CorpusSection(
            train=[Path(split_dir) / "grascco_train.tsv"], label_map=PHI_MAP["grascco"]
        )
        out["grascco"] = (
            read_corpus(g.train, g),
            read_corpus([Path(split_dir) / "grascco_test.tsv"], g),
        )
    return out


def fertility(data: Path, vocab_size: int = 8000) -> dict[str, Any]:
    """Sub-tokens per word (fertility; Rust et al., "How good is your tokenizer?", ACL
    2021) of MEDDOCAN's and GraSCCo's test words, overall and inside PHI entities, with the
    byte-level BPE learnt on each :data:`TOKENIZER_TEXTS` choice."""
    import numpy as np

    from medsilo.tasks.tokenizer import train_public_tokenizer

    corpora = _phi_corpora(data)
    rows: dict[str, Any] = {}
    for which in TOKENIZER_TEXTS:
        started = time.perf_counter()
        texts, counts = public_texts(data, which)
        tokenizer = train_public_tokenizer(texts, vocab_size)
        row: dict[str, Any] = {"sources": counts, "learn_seconds": time.perf_counter() - started}
        for name, (_, test) in corpora.items():
            every, phi = [], []
            for s in test:
                for piece, tag in zip(tokenizer.encode_words(s.words), s.tags, strict=True):
                    every.append(len(piece))
                    if tag != "O":
                        phi.append(len(piece))
            row[name] = {"all": float(np.mean(every)), "phi": float(np.mean(phi))}
        rows[which] = row
        print(f"fertility {which}: {row}", flush=True)
    return {"vocab_size": vocab_size, "rows": rows}


def fertility_markdown(result: dict[str, Any]) -> str:
    rows = [
        [
            which,
            f"{r['meddocan']['all']:.2f}",
            f"{r['meddocan']['phi']:.2f}",
            f"{r['grascco']['all']:.2f}",
            f"{r['grascco']['phi']:.2f}",
            ", ".join(f"{k} {v}" for k, v in r["sources"].items()),
        ]
        for which, r in result["rows"].items()
    ]
    table = md_table(
        [
            "tokenizer learnt on",
            "MEDDOCAN test, all words",
            "MEDDOCAN, PHI words",
            "GraSCCo test, all words",
            "GraSCCo, PHI words",
            "lines of public text",
        ],
        rows,
    )
    return (
        f"## Sub-tokens per word (fertility)\n\nByte-level BPE of {result['vocab_size']} "
        f"tokens learnt on public text only; MEDDOCAN's and GraSCCo's test words (the "
        f"tokenizer never sees them; E3C sentences sharing a word 8-gram with MEDDOCAN are "
        f"dropped first).\n\n{table}"
    )


MODEL_SIZES = {
    f"{layers}x{hidden}": {
        "layers": layers,
        "hidden": hidden,
        "heads": heads,
        "intermediate": intermediate,
    }
    for layers, hidden, heads, intermediate in SPEED_MODELS
}
"""``--size`` of the meddocan experiment: the :data:`SPEED_MODELS` by name."""


def meddocan_epochs(
    data: Path,
    epochs: int,
    which: str,
    save: Path,
    *,
    alignment: str = "first",
    size: str = "2x128",
    seed: int = 0,
) -> dict[str, Any]:
    """One local MEDDOCAN tagger on the whole training set (PHI types mapped): the
    ``full_data`` preset's model (BERT from scratch, classifier at the O prior; ``size``
    one of :data:`MODEL_SIZES`, 2 x 128 by default) and AdamW (lr 2e-3, batch 32, 6%
    warmup then linear decay to 0 over ``epochs`` epochs, Adam's moments kept
    throughout: one continuous run), the tokenizer learnt on
    :func:`public_texts` ``which``. After every epoch: mean training loss, entity F1 on
    the whole test set, and the model saved to ``save`` (a tagger directory,
    :class:`~medsilo.tasks.tagger.Tagger`) with the curve so far in its manifest, so an
    interrupted run leaves its last epoch and every run can be re-scored
    (``--experiment rescore``)."""
    import torch

    from medsilo.data.text import bio_labels, entity_types
    from medsilo.tasks.tagger import Tagger
    from medsilo.tasks.text import (
        TextModelSpec,
        build_tagger,
        decode_log_probs,
        encode_tagging,
        entity_scores,
        word_log_probs,
    )
    from medsilo.tasks.tokenizer import train_public_tokenizer

    torch.set_num_threads(1)
    train, test = _phi_corpora(data)["meddocan"]
    labels = bio_labels(entity_types([*train, *test]))
    texts, counts = public_texts(data, which)
    tokenizer = train_public_tokenizer(texts, 8000)
    spec = TextModelSpec(
        **{**PRESETS["full_data"]["model"], **MODEL_SIZES[size]}, alignment=alignment
    )
    kw = {"max_len": spec.max_len, "overlap": spec.overlap}
    tr = encode_tagging(train, tokenizer, labels, alignment=spec.alignment, **kw)
    te = encode_tagging(test, tokenizer, labels, **kw)
    x, y = torch.from_numpy(tr.ids), torch.from_numpy(tr.labels)
    model = build_tagger(spec, tokenizer, labels, seed=seed)
    curve: list[dict[str, Any]] = []
    for epoch, loss, seconds in _adamw_epochs(model, x, y, epochs, seed, {}):
        scored = time.perf_counter()
        log_probs = word_log_probs(model, te)
        f1 = {
            decoding: entity_scores(
                [s.tags for s in test], decode_log_probs(log_probs, labels, decoding)
            )["f1"]
            for decoding in ("argmax", "viterbi")
        }
        curve.append(
            {
                "epoch": epoch + 1,
                "loss": loss,
                "train_seconds": seconds,
                "f1": f1["argmax"],
                "f1_viterbi": f1["viterbi"],
                "score_seconds": time.perf_counter() - scored,
            }
        )
        extra = {
            "benchmark": "ner.py meddocan",
            "tokenizer_text": which,
            "curve": curve,
            "epochs_planned": epochs,
            "seed": seed,
        }
        Tagger(model, tokenizer, labels, spec).save(save, extra=extra)
        print(
            f"meddocan {which} epoch {epoch + 1}/{epochs}: loss {loss:.4f} F1 "
            f"{f1} ({seconds:.0f} s train)",
            flush=True,
        )
    return {
        "tokenizer_text": which,
        "sources": counts,
        "alignment": alignment,
        "size": size,
        "epochs": epochs,
        "steps_per_epoch": -(-len(y) // 32),
        "train_windows": len(y),
        "curve": curve,
        "saved": str(save),
        "seed": seed,
    }


def meddocan_markdown(result: dict[str, Any]) -> str:
    rows = [
        [
            str(p["epoch"]),
            f"{p['loss']:.4f}",
            f"{p['f1']:.3f}",
            f"{p['f1_viterbi']:.3f}" if "f1_viterbi" in p else "not scored",
            f"{p['train_seconds'] / 60:.1f}",
        ]
        for p in result["curve"]
    ]
    table = md_table(
        ["epoch", "train loss", "test F1 (argmax)", "test F1 (Viterbi)", "train min"], rows
    )
    return (
        f"## One local MEDDOCAN tagger, {result['epochs']} epochs\n\nWhole training set "
        f"({result['train_windows']} windows, {result['steps_per_epoch']} steps an epoch), "
        f"whole test set, PHI types mapped; {result.get('size', '2x128')} BERT from scratch, "
        f"classifier at the O "
        f"prior, continuous AdamW (lr 2e-3, batch 32, 6% warmup, linear decay to 0 at the "
        f"last epoch), alignment {result['alignment']!r}, seed {result['seed']}; byte-level "
        f"BPE of 8,000 tokens learnt on public text {result['tokenizer_text']!r} "
        f"({result['sources']}). Model saved to {result['saved']}.\n\n{table}"
    )


def _invalid_iob2(tags: Sequence[Sequence[str]]) -> int:
    """Number of ``I-X`` tags that follow neither ``B-X`` nor ``I-X``."""
    bad = 0
    for sentence in tags:
        previous = "O"
        for tag in sentence:
            if tag.startswith("I-") and previous[2:] != tag[2:]:
                bad += 1
            previous = tag
    return bad


def rescore(data: Path, directories: Sequence[Path]) -> dict[str, Any]:
    """Each saved MEDDOCAN tagger (``--experiment meddocan``) scored on the whole test set
    with per-word argmax and with IOB2-constrained Viterbi decoding (one forward pass,
    both decodings of the same log-probabilities): micro and per-type P/R/F1 and the
    number of invalid IOB2 tags argmax emits."""
    import torch

    from medsilo.tasks.tagger import Tagger
    from medsilo.tasks.text import decode_log_probs, entity_scores, word_log_probs

    torch.set_num_threads(1)
    test = _phi_corpora(data)["meddocan"][1]
    truth = [s.tags for s in test]
    models = []
    for directory in directories:
        tagger = Tagger.load(directory)
        manifest = json.loads((directory / "manifest.json").read_text("utf-8"))
        encoded = tagger.encode(test)
        started = time.perf_counter()
        log_probs = word_log_probs(tagger.model, encoded)
        forward = time.perf_counter() - started
        row: dict[str, Any] = {
            "model": str(directory),
            "tokenizer_text": manifest.get("tokenizer_text"),
            "alignment": tagger.spec.alignment,
            "size": f"{tagger.spec.layers}x{tagger.spec.hidden}",
            "epochs": len(manifest.get("curve", [])),
            "epochs_planned": manifest.get("epochs_planned"),
            "seed": manifest.get("seed"),
            "forward_seconds": forward,
        }
        for decoding in ("argmax", "viterbi"):
            started = time.perf_counter()
            predicted = decode_log_probs(log_probs, tagger.labels, decoding)
            row[decoding] = {
                **entity_scores(truth, predicted),
                "invalid_iob2_tags": _invalid_iob2(predicted),
                "decode_seconds": time.perf_counter() - started,
            }
        print(
            f"rescore {directory}: F1 argmax {row['argmax']['f1']:.4f} "
            f"viterbi {row['viterbi']['f1']:.4f}",
            flush=True,
        )
        models.append(row)
    return {"models": models, "test_sentences": len(test)}


def _model_name(r: dict[str, Any]) -> str:
    return (
        f"{r['tokenizer_text']}, {r['size']}, {r['alignment']}, "
        f"{r['epochs']}/{r['epochs_planned']} ep, seed {r['seed']}"
    )


def rescore_markdown(result: dict[str, Any]) -> str:
    rows = []
    for r in result["models"]:
        a, v = r["argmax"], r["viterbi"]
        rows.append(
            [
                _model_name(r),
                f"{a['precision']:.3f} / {a['recall']:.3f} / **{a['f1']:.3f}**",
                f"{v['precision']:.3f} / {v['recall']:.3f} / **{v['f1']:.3f}**",
                f"{100 * (v['f1'] - a['f1']):+.2f}",
                str(a["invalid_iob2_tags"]),
                "yes" if v["f1"] >= 0.90 else "no",
            ]
        )
    table = md_table(
        [
            "model (tokenizer text, size, alignment, epochs done / planned, seed)",
            "argmax P / R / F1",
            "Viterbi P / R / F1",
            "Viterbi gain (F1 points)",
            "invalid IOB2 tags (argmax)",
            ">= 0.90",
        ],
        rows,
    )
    types = sorted({k[3:] for r in result["models"] for k in r["viterbi"] if k.startswith("f1/")})
    per_type = md_table(
        ["type", "support", *(f"{_model_name(r)}: argmax / Viterbi" for r in result["models"])],
        [
            [
                t,
                f"{result['models'][0]['viterbi'].get(f'support/{t}', 0):.0f}",
                *(
                    f"{r['argmax'].get(f'f1/{t}', 0):.3f} / {r['viterbi'].get(f'f1/{t}', 0):.3f}"
                    for r in result["models"]
                ),
            ]
            for t in types
        ],
    )
    return (
        f"## MEDDOCAN PHI F1: argmax vs IOB2-constrained Viterbi decoding\n\nEach saved "
        f"tagger on the whole MEDDOCAN test set ({result['test_sentences']} sentences, PHI "
        f"types mapped), entity-level seqeval strict IOB2; both decodings read the same "
        f"log-probabilities. Goal (issue 8): F1 >= 0.90.\n\n{table}\n\n"
        f"### F1 per PHI type\n\n{per_type}"
    )


def _write_public(args: argparse.Namespace, directory: Path) -> Path:
    """:func:`public_texts` ``--tokenizer-text`` as a CoNLL file (every tag O), the form
    a study's ``[tokenizer] public`` reads."""
    from medsilo.data.text import Sentence, write_conll

    lines, _ = public_texts(args.data, args.tokenizer_text)
    path = directory / f"public_{args.tokenizer_text}.tsv"
    words = [line.split() for line in lines]
    write_conll(path, [Sentence(tuple(w), ("O",) * len(w)) for w in words if w])
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--experiment",
        choices=[
            "e3c",
            "deid",
            "all",
            "diagnose",
            "rounds",
            "plateau",
            "speed",
            "fertility",
            "meddocan",
            "rescore",
        ],
        default="all",
    )
    parser.add_argument("--sentences", type=int, default=2000, help="diagnose: training sentences")
    parser.add_argument(
        "--epochs",
        type=int,
        default=3,
        help="diagnose/rounds/plateau: epochs; speed: timed steps per model size",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="e3c/deid/all: run seeds FIRST .. FIRST+SEEDS-1 (split a study across sessions)",
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        default=[],
        metavar="SETTING",
        help="e3c/deid: train only these settings (e.g. local:meddocan); the rest of the "
        "seed can run in another session and be joined with --merge",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=[],
        metavar="NAME",
        help="summarize the runs of these results files (benchmarks/results/NAME.json, "
        "same preset, distinct seeds) as one result instead of training",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny model and data: a smoke run")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--name", default="ner")
    parser.add_argument(
        "--reuse-models",
        default="",
        help="score the federated setting from the taggers a previous --save-models run "
        "saved in this directory instead of training it again",
    )
    parser.add_argument(
        "--save-models", default="", help="save the federated taggers under this directory"
    )
    parser.add_argument(
        "--tokenizer-text",
        choices=TOKENIZER_TEXTS,
        default="pubmed",
        help="meddocan, deid: the public text the tokenizer is learnt on",
    )
    parser.add_argument(
        "--alignment", choices=["first", "all"], default="first", help="meddocan: labels"
    )
    parser.add_argument("--seed", type=int, default=0, help="meddocan: the seed")
    parser.add_argument(
        "--size", choices=sorted(MODEL_SIZES), default="2x128", help="meddocan: model size"
    )
    parser.add_argument(
        "--models", type=Path, nargs="+", default=[], help="rescore: saved tagger directories"
    )
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
    if args.experiment == "diagnose":
        result = diagnose(args.data, args.sentences, args.epochs)
        text = diagnose_markdown(result)
        write_results(
            args.name, "Clinical NER: why the first runs did not learn", text, result, started
        )
        print(text)
        return 0
    if args.experiment == "fertility":
        result = fertility(args.data)
        text = fertility_markdown(result)
        write_results(args.name, "Clinical NER: sub-tokens per word", text, result, started)
        print(text)
        return 0
    if args.experiment == "meddocan":
        if not args.save_models:
            parser.error("--experiment meddocan needs --save-models DIR (the tagger's directory)")
        result = meddocan_epochs(
            args.data,
            args.epochs,
            args.tokenizer_text,
            Path(args.save_models),
            alignment=args.alignment,
            size=args.size,
            seed=args.seed,
        )
        text = meddocan_markdown(result)
        write_results(args.name, "Clinical NER: one MEDDOCAN tagger", text, result, started)
        print(text)
        return 0
    if args.experiment == "rescore":
        if not args.models:
            parser.error("--experiment rescore needs --models DIR [DIR ...]")
        result = rescore(args.data, args.models)
        text = rescore_markdown(result)
        write_results(args.name, "Clinical NER: MEDDOCAN decoding", text, result, started)
        print(text)
        return 0
    if args.experiment == "speed":
        result = speed(args.data, args.epochs)
        text = speed_markdown(result)
        write_results(args.name, "Clinical NER: step time by model size", text, result, started)
        print(text)
        return 0
    if args.experiment == "plateau":
        jobs_p = [
            (i, str(args.data), args.sentences, args.epochs, 0) for i in range(len(PLATEAU_CONFIGS))
        ]
        with mp.get_context("spawn").Pool(args.workers) as pool:
            runs = list(pool.imap_unordered(_plateau_job, jobs_p))
        text = plateau_markdown(runs, args.sentences, args.epochs)
        result = {"runs": runs, "sentences": args.sentences, "epochs": args.epochs}
        write_results(args.name, "Clinical NER: the all-O plateau", text, result, started)
        print(text)
        return 0
    if args.experiment == "rounds":
        with tempfile.TemporaryDirectory() as split_dir:
            _split_grascco(args.data, Path(split_dir))
            jobs = [
                (i, str(args.data), args.sentences, args.epochs, split_dir)
                for i in range(len(ROUND_CONFIGS))
            ]
            with mp.get_context("spawn").Pool(args.workers) as pool:
                runs = []
                for run in pool.imap_unordered(_rounds_job, jobs):
                    runs.append(run)
                    print(f"{run['config']}: F1 {run['f1']} ({run['seconds']:.0f} s)", flush=True)
        text = rounds_markdown(runs, args.sentences, args.epochs)
        result = {"runs": runs, "sentences": args.sentences, "epochs": args.epochs}
        write_results(args.name, "Clinical NER: federated rounds", text, result, started)
        print(text)
        return 0
    if args.merge:
        return _merge(args.merge, args.name, started)
    preset = PRESETS[args.preset or ("quick" if args.quick else "full")]
    experiments = ["e3c", "deid"] if args.experiment == "all" else [args.experiment]
    if args.tokenizer_text != "pubmed" and "e3c" in experiments:
        parser.error("--tokenizer-text multilingual holds E3C's test text: deid only")
    available = [s for e in experiments for s in SETTINGS[e]]
    unknown = sorted(set(args.settings) - set(available))
    if unknown:
        parser.error(f"--settings: {', '.join(unknown)} not among {', '.join(available)}")
    with tempfile.TemporaryDirectory() as split_dir:
        _split_grascco(args.data, Path(split_dir))
        if args.tokenizer_text != "pubmed":
            preset = {**preset, "tokenizer_public": [_write_public(args, Path(split_dir))]}
        jobs = [
            (e, seed, s, preset, str(args.data), split_dir, args.device, args.save_models)
            for seed in range(args.first_seed, args.first_seed + args.seeds)
            for e in experiments
            for s in SETTINGS[e]
            if not args.settings or s in args.settings
        ]
        if args.reuse_models:
            jobs = [
                (*j[:2], f"saved:{args.reuse_models}" if j[2] == "federated" else j[2], *j[3:])
                for j in jobs
            ]
        # Longest first: the federated and pooled jobs train on every provider's rows.
        jobs.sort(key=lambda j: (j[0] != "deid", j[2] not in ("federated", "local:meddocan")))
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
    data = {
        "runs": runs,
        "preset": preset,
        "device": args.device,
        "workers": args.workers,
        "wall_seconds": wall,
    }
    return _report(args.name, experiments, data, started)


def _report(name: str, experiments: Sequence[str], data: dict[str, Any], started: datetime) -> int:
    """Summarize ``data["runs"]`` per experiment (F1 per provider and setting, the goals,
    learning curves, round times) into ``benchmarks/results/NAME.{md,json}``."""
    runs = data["runs"]
    body = []
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
            f"mean ± sd over {_seeds_line(runs, e)}.\n\n{text}"
        )
    if any(r.get("curve") for r in runs):
        body.append(curve_markdown(runs))
    rounds = [
        t for r in runs if r["setting"] == "federated" for t in r["round_seconds"]["finetune"]
    ]
    pre = [t for r in runs if r["setting"] == "federated" for t in r["round_seconds"]["pretrain"]]

    def shown(values: list[float]) -> str:
        return f"{fmt_mean_sd(values, 1)} s" if values else "not run (or not measured)"

    timing = (
        f"Wall time per federated round (all providers, one process, 1 thread, "
        f"device {data['device']}, {data['workers']} jobs in parallel): MLM pretraining "
        f"{shown(pre)}, fine-tuning {shown(rounds)}."
    )
    body.append(f"## Cost\n\n{timing}")
    if "merged" in data:
        body.append("Merged from: " + ", ".join(f"`{n}`" for n in data["merged"]) + ".")
    write_results(
        name,
        "Clinical entity tagging across providers (issue 8)",
        "\n\n".join(body),
        data,
        started,
    )
    print("\n\n".join(body))
    return 0


def _seeds_line(runs: Sequence[dict[str, Any]], experiment: str) -> str:
    """Which seeds the table's means are over: one list when every setting ran the same
    seeds, else the seeds of each setting (a study split with ``--settings``)."""
    per: dict[str, list[int]] = {}
    for r in runs:
        if r["experiment"] == experiment:
            per.setdefault(r["setting"], []).append(r["seed"])
    shown = {setting: ", ".join(map(str, sorted(seeds))) for setting, seeds in per.items()}
    if len(set(shown.values())) == 1:
        seeds = next(iter(shown.values()))
        return f"{len(next(iter(per.values())))} seed(s) ({seeds})"
    return "the seeds each setting ran: " + "; ".join(f"{k} {v}" for k, v in shown.items())


def _comparable(value: Any) -> Any:
    """A preset as two runs of one configuration share it: the public tokenizer text is
    written to a fresh temporary directory per run, so only its file names count."""
    if isinstance(value, dict) and "tokenizer_public" in value:
        return {**value, "tokenizer_public": [Path(p).name for p in value["tokenizer_public"]]}
    return value


def _merge(names: Sequence[str], name: str, started: datetime) -> int:
    """One result from the runs of several results files (a study split across sessions
    with ``--first-seed``). Refused, exit 2, unless every file ran the same preset on the
    same device and no (experiment, seed, setting) appears twice."""
    parts = []
    for part in names:
        path = RESULTS / f"{part}.json"
        if not path.is_file():
            print(f"ner --merge: {path} does not exist", file=sys.stderr)
            return 2
        parts.append(json.loads(path.read_text(encoding="utf-8")))
    for part, other in zip(names[1:], parts[1:], strict=True):
        for key in ("preset", "device"):
            if _comparable(other[key]) != _comparable(parts[0][key]):
                print(
                    f"ner --merge: {part} ran a different {key} from {names[0]}; "
                    "only runs of one configuration can be merged",
                    file=sys.stderr,
                )
                return 2
    runs = [r for part in parts for r in part["runs"]]
    keys = [(r["experiment"], r["seed"], r["setting"]) for r in runs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        print(f"ner --merge: runs appear twice: {twice}", file=sys.stderr)
        return 2
    experiments = [e for e in ("e3c", "deid") if any(r["experiment"] == e for r in runs)]
    data = {
        "runs": runs,
        "preset": parts[0]["preset"],
        "device": parts[0]["device"],
        "workers": " or ".join(map(str, sorted({p["workers"] for p in parts}))),
        "wall_seconds": sum(p["wall_seconds"] for p in parts),
        "merged": list(names),
    }
    return _report(name, experiments, data, started)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
