"""How good and how private a text clone is.

Utility: the cloning seed's test (Baumel et al. 2024). The same entity tagger (the
feature-based :class:`~medsilo.clone.text.linear_tagger.LinearTagger`, or a small BERT of
:mod:`medsilo.tasks.text` on the public tokenizer trained for a fixed number of steps) is
trained on (a) the clone, (b) the de-identified real notes (traditional anonymization:
each PHI span replaced by ``[TYPE]``), (c) the real notes, and each is scored on real
held-out notes: entity-level F1 (strict, seqeval's via :func:`~medsilo.tasks.text.entity_scores`),
micro and per type.

Fidelity: note length (words), entity-type frequencies (per 100 words, and the total
variation distance between the two type distributions), vocabulary overlap (the share of
the clone's word types and tokens that occur in the real notes).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from medsilo.clone.text.generator import CausalLM, NoteTokenizer
from medsilo.clone.text.leaks import chance_exposure, exposure, membership_auc
from medsilo.clone.text.linear_tagger import LinearTagger
from medsilo.clone.text.linearize import mask
from medsilo.data.text import WORD, Document, Sentence, bio_labels, document_sentences
from medsilo.tasks.text import (
    AdamWSchedule,
    TextModelSpec,
    build_tagger,
    encode_tagging,
    entity_scores,
    predict_tags,
    train_adamw,
)
from medsilo.tasks.tokenizer import WordTokenizer

Progress = Callable[[str, float], None]


def sentences_of(documents: Sequence[Document]) -> list[Sentence]:
    return [s for d in documents for s in document_sentences(d)]


def deidentify_gold(documents: Sequence[Document], phi: Sequence[str]) -> list[Document]:
    """Traditional anonymization with the *gold* PHI spans: each replaced by ``[TYPE]``.
    An upper bound of what a de-identification model achieves (it finds every span)."""
    return [mask(d, phi, token="[{label}]") for d in documents]


def train_tagger(
    sentences: Sequence[Sentence],
    labels: Sequence[str],
    tokenizer: WordTokenizer,
    spec: TextModelSpec,
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    progress: Progress | None = None,
) -> torch.nn.Module:
    """A tagger trained non-privately for ``steps`` minibatches with
    :func:`~medsilo.tasks.text.train_adamw`: AdamW with BERT's schedule (6% warmup, linear
    decay to 0 at ``steps``, gradient norm clipped at 1), one uninterrupted run whose data
    order is a fresh permutation every epoch; ``progress`` is told after each twentieth."""
    model = build_tagger(spec, tokenizer, labels, seed=seed)
    encoded = encode_tagging(
        sentences, tokenizer, labels, max_len=spec.max_len, overlap=spec.overlap
    )
    x, y = torch.from_numpy(encoded.ids), torch.from_numpy(encoded.labels)
    schedule = AdamWSchedule(lr=lr, total_steps=steps, warmup_steps=max(1, round(0.06 * steps)))
    moments: dict[str, Any] = {}
    piece = max(1, -(-steps // 20))
    for start in range(0, steps, piece):
        train_adamw(
            model,
            x,
            y,
            schedule,
            batch_size=batch_size,
            seed=seed,
            start_step=start,
            steps=min(piece, steps - start),
            moments=moments,
        )
        if progress is not None:
            progress("tagger", min(start + piece, steps) / steps)
    return model


def score_tagger(
    model: torch.nn.Module,
    sentences: Sequence[Sentence],
    labels: Sequence[str],
    tokenizer: WordTokenizer,
    spec: TextModelSpec,
) -> dict[str, float]:
    encoded = encode_tagging(
        sentences, tokenizer, labels, max_len=spec.max_len, overlap=spec.overlap
    )
    predicted = predict_tags(model, encoded, labels)
    return entity_scores([s.tags for s in sentences], predicted)


Predictor = Callable[[Sequence[Sentence]], list[list[str]]]
TaggerKind = Literal["linear", "bert"]


def fit_tagger(
    kind: TaggerKind,
    sentences: Sequence[Sentence],
    labels: Sequence[str],
    tokenizer: WordTokenizer,
    spec: TextModelSpec,
    *,
    steps: int,
    seed: int = 0,
    progress: Progress | None = None,
) -> Predictor:
    """A trained tagger as a function from sentences to IOB2 tags: the feature-based
    :class:`~medsilo.clone.text.linear_tagger.LinearTagger` (seconds on a CPU) or the
    small BERT of :func:`train_tagger` (``steps`` minibatches)."""
    if kind == "linear":
        return LinearTagger(seed).fit(sentences).predict
    model = train_tagger(
        sentences, labels, tokenizer, spec, steps=steps, seed=seed, progress=progress
    )

    def run(batch: Sequence[Sentence]) -> list[list[str]]:
        encoded = encode_tagging(
            batch, tokenizer, labels, max_len=spec.max_len, overlap=spec.overlap
        )
        return predict_tags(model, encoded, labels)

    return run


def utility(
    train: Sequence[Document],
    clone: Sequence[Document],
    test: Sequence[Document],
    phi: Sequence[str],
    tokenizer: WordTokenizer,
    spec: TextModelSpec,
    *,
    steps: int,
    seed: int = 0,
    kind: TaggerKind = "linear",
    settings: Sequence[str] = ("clone", "deidentified", "real"),
    progress: Progress | None = None,
) -> dict[str, dict[str, float]]:
    """Entity scores on ``test`` of taggers trained on each of ``settings``; with
    ``"real"``, also ``"scan"``: :func:`unlabelled_phi` of the real tagger on the clone."""
    types = sorted({s.label for d in (*train, *test) for s in d.spans})
    labels = bio_labels(types)
    test_sentences = sentences_of(test)
    sources: dict[str, Callable[[], Sequence[Document]]] = {
        "clone": lambda: clone,
        "deidentified": lambda: deidentify_gold(train, phi),
        "real": lambda: train,
    }
    out: dict[str, dict[str, float]] = {}
    for setting in settings:
        sentences = [
            s
            for s in sentences_of(sources[setting]())
            if all(t == "O" or t[2:] in types for t in s.tags)
        ]
        if len({t for s in sentences for t in s.tags}) < 2:  # nothing to learn from
            out[setting] = {"f1": 0.0, "precision": 0.0, "recall": 0.0, "support": 0.0}
            continue
        tagger = fit_tagger(
            kind,
            sentences,
            labels,
            tokenizer,
            spec,
            steps=steps,
            seed=seed,
            progress=_named(progress, f"tagger on {setting}"),
        )
        out[setting] = entity_scores([s.tags for s in test_sentences], tagger(test_sentences))
        if setting == "real" and clone:
            out["scan"] = unlabelled_phi(tagger, sentences_of(clone), labels)
    return out


def unlabelled_phi(
    tagger: Predictor, sentences: Sequence[Sentence], labels: Sequence[str]
) -> dict[str, float]:
    """De-identification model as a leak scanner: entities the tagger trained on the real
    notes finds in the clone where the clone's own labels say ``O`` (PHI the generator
    wrote without a placeholder, e.g. a name the annotators missed in a training note)."""
    known = set(labels)
    kept = [s for s in sentences if all(t in known for t in s.tags)]
    if not kept:
        return {"found_outside_labels": 0.0, "words": 0.0}
    found = sum(
        p.startswith("B-") and t == "O"
        for s, tags in zip(kept, tagger(kept), strict=True)
        for t, p in zip(s.tags, tags, strict=True)
    )
    return {"found_outside_labels": float(found), "words": float(sum(len(s.words) for s in kept))}


def _named(progress: Progress | None, stage: str) -> Progress | None:
    if progress is None:
        return None
    report = progress
    return lambda _, fraction: report(stage, fraction)


def distribution(real: Sequence[Document], clone: Sequence[Document]) -> dict[str, Any]:
    """Length, entity-type and vocabulary statistics of ``real`` vs ``clone`` notes."""

    def stats(documents: Sequence[Document]) -> dict[str, Any]:
        words = [WORD.findall(d.text) for d in documents]
        lengths = np.array([len(w) for w in words]) if words else np.zeros(1)
        total = max(1, int(lengths.sum()))
        counts = Counter(s.label for d in documents for s in d.spans)
        return {
            "notes": len(documents),
            "words_mean": float(lengths.mean()),
            "words_median": float(np.median(lengths)),
            "words_p90": float(np.percentile(lengths, 90)),
            "entities_per_100_words": {k: 100 * v / total for k, v in sorted(counts.items())},
            "vocabulary": {w for ws in words for w in ws},
            "tokens": [w for ws in words for w in ws],
        }

    a, b = stats(real), stats(clone)
    types = sorted(set(a["entities_per_100_words"]) | set(b["entities_per_100_words"]))

    def share(s: dict[str, Any]) -> np.ndarray:
        v = np.array([s["entities_per_100_words"].get(t, 0.0) for t in types])
        return v / v.sum() if v.sum() else v

    tvd = 0.5 * float(np.abs(share(a) - share(b)).sum()) if types else 0.0
    known = a["vocabulary"]
    clone_tokens = b["tokens"]
    overlap = {
        "clone_types_in_real": len(b["vocabulary"] & known) / max(1, len(b["vocabulary"])),
        "clone_tokens_in_real": sum(w in known for w in clone_tokens) / max(1, len(clone_tokens)),
        "jaccard": len(b["vocabulary"] & known) / max(1, len(b["vocabulary"] | known)),
    }
    for s in (a, b):
        s.pop("vocabulary")
        s.pop("tokens")
    return {"real": a, "clone": b, "entity_type_tvd": tvd, "vocabulary": overlap}


def privacy_checks(
    model: CausalLM,
    tokenizer: NoteTokenizer,
    canaries: Sequence[dict[str, str]],
    members: Sequence[np.ndarray],
    non_members: Sequence[np.ndarray],
    *,
    context: int,
    candidates: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Canary exposure (each planted canary among ``candidates`` secrets) and the loss
    membership attack's AUC (as many members as non-members, drawn at random)."""
    rng = np.random.default_rng(seed)
    exposures = [
        exposure(
            model,
            tokenizer,
            c["note"],
            c["secret"],
            candidates=candidates,
            rng=rng,
            context=context,
        )
        for c in canaries
    ]
    k = min(len(members), len(non_members))
    pick_in = rng.choice(len(members), size=k, replace=False).tolist() if k else []
    pick_out = rng.choice(len(non_members), size=k, replace=False).tolist() if k else []
    return {
        "canaries": len(canaries),
        "candidates": candidates,
        "exposure": exposures,
        "exposure_mean": float(np.mean(exposures)) if exposures else None,
        "exposure_chance": chance_exposure(candidates),
        "exposure_max": math.log2(candidates),
        "membership_auc": membership_auc(
            model, [members[i] for i in pick_in], [non_members[i] for i in pick_out]
        ),
        "membership_notes": k,
    }


def evaluate_text_clone(
    clone: Sequence[Document],
    train: Sequence[Document],
    test: Sequence[Document],
    manifest: dict[str, Any],
    *,
    model: CausalLM,
    tokenizer: NoteTokenizer,
    canaries: Sequence[dict[str, str]],
    public: Sequence[str] = (),
    tagger_steps: int = 300,
    tagger: TaggerKind = "linear",
    candidates: int = 1000,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Utility, fidelity, leakage and memorization of a clone, as one JSON-able dict."""
    from medsilo.clone.text.leaks import NgramIndex
    from medsilo.clone.text.linearize import Scheme, segments
    from medsilo.clone.text.pipeline import note_rows
    from medsilo.tasks.tokenizer import train_public_tokenizer

    notify = progress or (lambda stage, fraction: None)
    phi = manifest["phi"]
    words = train_public_tokenizer(public, vocab_size=4000 if public else 261)
    spec = TextModelSpec(layers=2, hidden=128, heads=2, intermediate=256, max_len=128)
    scores = utility(
        train,
        clone,
        test,
        phi,
        words,
        spec,
        steps=tagger_steps,
        seed=seed,
        kind=tagger,
        progress=notify,
    )
    real_segments = [s for d in train for s in segments(d, manifest["max_words"])]
    notify("leaks and memorization", 0.0)
    leaks = NgramIndex(train, 8, 5, public).scan(clone)
    scheme = Scheme(tuple(manifest["types"]), frozenset(phi))
    shape = (manifest["max_words"], manifest["context"])
    members = note_rows(train, scheme, manifest["language"], tokenizer, *shape)
    others = note_rows(test, scheme, manifest["language"], tokenizer, *shape, drop_unknown=True)
    checks = privacy_checks(
        model,
        tokenizer,
        canaries,
        members,
        others,
        context=manifest["context"],
        candidates=candidates,
        seed=seed,
    )
    phi_types = [t for t in manifest["types"] if t in set(phi)]
    return {
        "manifest": manifest,
        "tagger": tagger,
        "deid_scan": scores.pop("scan", {}),
        "utility": scores,
        "phi_types": phi_types,
        "distribution": distribution(real_segments, clone),
        "leaks_with_public": leaks.to_dict(),
        "privacy": checks,
        "sizes": {"train": len(train), "test": len(test), "clone": len(clone)},
    }
