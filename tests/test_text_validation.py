"""``[validation]``: each provider holds out part of its own training documents, and its
local step keeps the epoch count with the best entity F1 on them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import medsilo.study.text as text_study
from medsilo.data.text import Sentence
from medsilo.errors import ConfigError, DataError
from medsilo.fed.training import get_weights
from medsilo.study.text import hold_out, load_text_study, parse_text_study
from test_text_pipeline import _fixture

VALIDATION = "\n[validation]\nfraction = 0.25\n"


def _documents(sizes: list[int]) -> list[Sentence]:
    return [
        Sentence((f"w{d}", str(i)), ("O", "O"), document=f"doc{d}" if d >= 0 else "")
        for d, size in enumerate(sizes)
        for i in range(size)
    ]


def test_hold_out_keeps_documents_whole_and_is_seeded() -> None:
    sentences = _documents([3, 1, 4, 2, 5, 2, 3, 1, 2, 2])
    train, validation = hold_out(sentences, 0.2, seed=5, where="providers.x")
    held = {s.document for s in validation}
    assert len(held) == 2  # 20% of 10 documents
    assert not held & {s.document for s in train}  # no document is split
    assert len(train) + len(validation) == len(sentences)
    assert train == [s for s in sentences if s.document not in held]  # order kept
    assert hold_out(sentences, 0.2, seed=5, where="x") == (train, validation)
    others = {
        frozenset(s.document for s in hold_out(sentences, 0.2, seed, "x")[1]) for seed in range(8)
    }
    assert len(others) > 1  # the seed draws the documents


def test_hold_out_treats_sentences_without_a_document_as_groups() -> None:
    sentences = [Sentence(("a", str(i)), ("O", "O")) for i in range(20)]
    train, validation = hold_out(sentences, 0.15, seed=0, where="x")
    assert (len(train), len(validation)) == (17, 3)
    assert set(train).isdisjoint(validation)
    # a tiny fraction still holds out one group, and one group always stays to train on
    assert len(hold_out(sentences[:2], 0.01, 0, "x")[1]) == 1
    assert len(hold_out(sentences[:2], 0.99, 0, "x")[0]) == 1


def test_hold_out_needs_two_groups() -> None:
    one_document = _documents([4])
    with pytest.raises(DataError, match=r"providers\.x: a validation split needs at least 2"):
        hold_out(one_document, 0.5, seed=0, where="providers.x")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "[privacy]\nepsilon = 1.0\nnoise_multiplier = 1.0\n[validation]\n",
            "not covered by the DP accounting",
        ),
        ("[local_step]\nfine_tune_epochs = 0\n[validation]\n", "fine_tune_epochs >= 1"),
        ("[validation]\nfraction = 1.0\n", r"validation\.fraction"),
    ],
)
def test_validation_study_errors(extra: str, message: str) -> None:
    base = "[providers.x]\ntrain = ['x.tsv']\ntest = ['y.tsv']\n[public]\ntrain = ['p.tsv']\n"
    with pytest.raises(ConfigError, match=message):
        parse_text_study(base + extra, "s.toml")


def test_validation_rows_are_never_trained_on(tmp_path: Path) -> None:
    """The held-out sentences leave the training rows of every setting (pooled too)."""
    study = load_text_study(_fixture(tmp_path, VALIDATION))
    data = text_study.prepare(study)
    for corpus in data.providers:
        assert (len(corpus.train), len(corpus.validation)) == (18, 6)  # 24 sentences, 25%
        lines = [s.line for s in corpus.train]
        assert set(lines).isdisjoint(s.line for s in corpus.validation)
        assert corpus.tagging is not None and corpus.validation_encoded is not None
        assert len(corpus.tagging.words) == 18  # the encoded rows are the train sentences'
        assert len(corpus.validation_encoded.words) == 6
    pooled = text_study._pool(data.providers)
    assert len(pooled.train) == 36 and not pooled.validation
    assert data.public is not None and not data.public.validation


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_local_step_keeps_the_epoch_with_the_best_validation_f1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, optimizer: str
) -> None:
    """Validation F1 after 0, 1, 2, 3 epochs is scripted: ``en`` peaks after 1 epoch (tied
    after 3: fewer wins), ``es`` before any. The kept weights are those scored then."""
    path = _fixture(tmp_path, VALIDATION)
    text = path.read_text().replace("fine_tune_epochs = 1", "fine_tune_epochs = 3")
    if optimizer == "adamw":
        text = text.replace("lr = 0.05", "lr = 0.01\noptimizer = 'adamw'")
    path.write_text(text)
    study = load_text_study(path)
    data = text_study.prepare(study)
    script: dict[str, Iterator[float]] = {
        "en": iter([0.2, 0.5, 0.1, 0.5]),
        "es": iter([0.9, 0.1, 0.2, 0.3]),
    }
    seen: dict[str, list[dict[str, np.ndarray]]] = {"en": [], "es": []}
    real = text_study.tagging_scores

    def scripted(model, corpus, labels, decoding="viterbi", split="test"):  # type: ignore[no-untyped-def]
        if split != "validation":
            return real(model, corpus, labels, decoding, split)
        seen[corpus.name].append(get_weights(model))
        return {"f1": next(script[corpus.name])}

    monkeypatch.setattr(text_study, "tagging_scores", scripted)
    result = text_study.run_pipeline(
        study, data.providers, data.tokenizer, data.labels, local_step=True
    )
    assert result.local_epochs == {"en": 1, "es": 0}
    assert [len(v) for v in seen.values()] == [4, 4]  # epochs 0..3 scored
    for key, value in result.personalized["en"].items():
        np.testing.assert_array_equal(value, seen["en"][1][key])
    assert any(
        not np.array_equal(seen["en"][1][k], seen["en"][3][k]) for k in seen["en"][1]
    )  # the later epochs did train
    for key, value in result.personalized["es"].items():
        np.testing.assert_array_equal(value, result.weights[key])  # the federated model


def test_text_run_records_and_prints_the_chosen_epochs(tmp_path: Path) -> None:
    """``medsilo text run`` on a study with ``[validation]``: results.json has each
    setting's chosen epochs, and the command prints them."""
    from typer.testing import CliRunner

    from medsilo.cli.main import app

    path = _fixture(tmp_path, VALIDATION)
    text = path.read_text().replace("fine_tune_epochs = 1", "fine_tune_epochs = 2")
    path.write_text("baselines = ['local']\n" + text)
    result = CliRunner().invoke(app, ["text", "run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(saved["local_epochs"]) == {"federated+local", "local"}
    for rows in saved["local_epochs"].values():
        assert set(rows) == {"en", "es"} and all(0 <= e <= 2 for e in rows.values())
    assert "federated+local: local-step epochs chosen on validation (en " in result.output
