"""Tokenizer, sub-word label alignment, windows of long sentences, seqeval scores, models."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from medsilo.data.text import Sentence, bio_labels
from medsilo.tasks.text import (
    IGNORE,
    TextModelSpec,
    build_model,
    build_tagger,
    decode_tags,
    encode_tagging,
    encode_text,
    entity_scores,
    mask_tokens,
    predict_tags,
    shared_weights,
)
from medsilo.tasks.tokenizer import PretrainedTokenizer, PublicTokenizer, train_public_tokenizer

LABELS = bio_labels(["DIS", "DRUG"])  # O B-DIS I-DIS B-DRUG I-DRUG


class FakeTokenizer:
    """Every word splits into as many sub-tokens as it has characters (ids 10+)."""

    vocab_size, pad_id, cls_id, sep_id, mask_id, unk_id = 100, 0, 2, 3, 4, 1

    def encode_words(self, words: Sequence[str]) -> list[list[int]]:
        return [[10 + (ord(c) % 80) for c in w] for w in words]

    def save(self, directory: object) -> None:
        raise NotImplementedError


SENT = Sentence(("a", "bcd", "ef", "g"), ("O", "B-DIS", "I-DIS", "B-DRUG"))


def test_first_subtoken_alignment_by_hand() -> None:
    enc = encode_tagging([SENT], FakeTokenizer(), LABELS, max_len=16, overlap=2)
    # [CLS] a b c d e f g [SEP] pad...
    assert enc.ids[0, :9].tolist() == [2, 27, 28, 29, 30, 31, 32, 33, 3]
    assert enc.ids[0, 9:].tolist() == [0] * 7
    assert enc.labels[0, :9].tolist() == [IGNORE, 0, 1, IGNORE, IGNORE, 2, IGNORE, 3, IGNORE]
    assert enc.words == (((0, 1), (0, 2), (0, 5), (0, 7)),)


def test_all_subtoken_alignment_by_hand() -> None:
    enc = encode_tagging([SENT], FakeTokenizer(), LABELS, max_len=16, overlap=2, alignment="all")
    # bcd: B-DIS I-DIS I-DIS; ef: I-DIS I-DIS
    assert enc.labels[0, :9].tolist() == [IGNORE, 0, 1, 2, 2, 2, 2, 3, IGNORE]


def test_long_sentence_is_windowed_not_truncated() -> None:
    words = tuple(f"w{i}" for i in range(30))  # 80 sub-tokens (one per character)
    tags = tuple("B-DIS" if i % 5 == 0 else "O" for i in range(30))
    sent = Sentence(words, tags)
    enc = encode_tagging([sent], FakeTokenizer(), LABELS, max_len=12, overlap=4)
    assert len(enc) > 1
    # every word is read in a window that holds its first sub-token
    for i, (row, col) in enumerate(enc.words[0]):
        assert enc.labels[row, col] == LABELS.index(tags[i])
    # decoding the gold labels back through the windows gives the tags exactly
    assert decode_tags(np.where(enc.labels < 0, 0, enc.labels), enc, LABELS) == [list(tags)]
    rows = encode_text([sent], FakeTokenizer(), max_len=12)
    kept = rows[(rows != 0) & (rows != 2) & (rows != 3)]
    assert len(kept) == 80  # every sub-token in exactly one MLM row


def test_unknown_label_names_the_sentence() -> None:
    bad = Sentence(("x",), ("B-FOO",), "f.tsv", 7)
    with pytest.raises(ValueError, match=r"f\.tsv:7: label 'B-FOO'"):
        encode_tagging([bad], FakeTokenizer(), LABELS)


def test_seqeval_scores_hand_checked() -> None:
    truth = [["B-DIS", "I-DIS", "O", "B-DRUG"], ["B-DIS", "O", "B-DIS", "I-DIS"]]
    pred = [["B-DIS", "I-DIS", "O", "O"], ["B-DIS", "O", "B-DIS", "O"]]
    s = entity_scores(truth, pred)
    # true: DIS x3, DRUG x1; predicted: DIS x3 (2 exact, 1 wrong boundary)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 4)
    assert s["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert s["f1/DIS"] == pytest.approx(2 / 3)
    assert s["recall/DRUG"] == 0.0
    assert s["support/DIS"] == 3
    # strict IOB2: an orphan I- is not an entity
    assert entity_scores([["B-DIS"]], [["I-DIS"]])["f1"] == 0.0


def test_masking_follows_bert() -> None:
    tok = FakeTokenizer()
    ids = np.full((200, 50), 50, dtype=np.int64)
    ids[:, 0], ids[:, -1] = tok.cls_id, tok.sep_id
    inputs, labels = mask_tokens(ids, tok, np.random.default_rng(0))
    chosen = labels != IGNORE
    assert not chosen[:, 0].any() and not chosen[:, -1].any()
    assert chosen.mean() == pytest.approx(0.15 * 48 / 50, abs=0.01)
    assert (inputs[chosen] == tok.mask_id).mean() == pytest.approx(0.8, abs=0.03)
    assert (inputs[~chosen] == ids[~chosen]).all()


def test_public_tokenizer_saves_and_loads_as_a_pretrained_one(tmp_path: Path) -> None:
    tok = train_public_tokenizer(["fever and cough", "the patient has fever"] * 20, 300)
    words = ["Fiebre", "y", "tos", "fever", "añadido"]
    tok.save(tmp_path / "tok")
    again = PublicTokenizer.load(tmp_path / "tok")
    hub = PretrainedTokenizer(str(tmp_path / "tok"))  # the hub/local-path loader
    assert tok.encode_words(words) == again.encode_words(words) == hub.encode_words(words)
    assert (hub.pad_id, hub.mask_id, hub.vocab_size) == (tok.pad_id, tok.mask_id, tok.vocab_size)
    assert all(p and tok.unk_id not in p for p in tok.encode_words(words))  # bytes: no unk


def test_model_logits_layout_and_encoder_transfer() -> None:
    spec = TextModelSpec(layers=1, hidden=16, heads=2, intermediate=32, max_len=16, overlap=4)
    tok = FakeTokenizer()
    tagger = build_model(spec, "tagging", vocab_size=100, pad_id=0, num_labels=5, seed=1)
    mlm = build_model(spec, "mlm", vocab_size=100, pad_id=0, seed=2)
    enc = encode_tagging([SENT], tok, LABELS, max_len=16, overlap=2)
    x = torch.from_numpy(enc.ids)
    assert tagger(x).shape == (1, 5, 16)
    assert mlm(x).shape == (1, 100, 16)
    loss = F.cross_entropy(tagger(x), torch.from_numpy(enc.labels))
    assert torch.isfinite(loss)
    moved = shared_weights({k: v.numpy() for k, v in mlm.state_dict().items()}, tagger)
    assert any("embeddings.word_embeddings" in k for k in moved)
    assert not any("classifier" in k or "cls." in k for k in moved)
    assert [len(t) for t in predict_tags(tagger, enc, LABELS)] == [len(SENT.tags)]


@pytest.mark.parametrize("order", [LABELS, [*LABELS[1:], "O"]])
def test_untrained_tagger_predicts_the_outside_prior(order: list[str]) -> None:
    """Regression (docs/text.md, "Why uninterrupted AdamW stalled"): an untrained tagger
    must start at P(O) = outside_prior, not at 1/K per label, whose ln K loss transient
    left continuous AdamW on the all-O plateau (MEDDOCAN F1 0 after 4 epochs)."""
    spec = TextModelSpec(layers=1, hidden=16, heads=2, intermediate=32, max_len=16, overlap=4)
    enc = encode_tagging([SENT], FakeTokenizer(), order, max_len=16, overlap=2)
    x, y = torch.from_numpy(enc.ids), torch.from_numpy(enc.labels)
    outside = order.index("O")
    for prior, expected in ((0.9, 0.9), (0.0, 1 / len(order))):
        model = build_tagger(
            spec.model_copy(update={"outside_prior": prior}), FakeTokenizer(), order
        )
        model.eval()
        with torch.no_grad():
            p_o = torch.softmax(model(x), dim=1)[:, outside][y != IGNORE]
        assert abs(float(p_o.mean()) - expected) < 0.03
    # all-O labels: the first loss is -ln 0.9, not ln K
    with torch.no_grad():
        loss = F.cross_entropy(model_at(spec, order)(x), torch.where(y == IGNORE, y, outside))
    assert float(loss) < 0.2 < np.log(len(order))


def model_at(spec: TextModelSpec, labels: list[str]) -> torch.nn.Module:
    model = build_tagger(spec, FakeTokenizer(), labels)
    model.eval()
    return model


def test_outside_prior_needs_a_classifier_bias() -> None:
    from medsilo.tasks.text import _init_outside_bias

    with pytest.raises(ValueError, match="outside_prior = 0"):
        _init_outside_bias(torch.nn.Sequential(), 0.9, 0)
    _init_outside_bias(torch.nn.Sequential(), 0.0, 0)  # disabled: nothing to set


@pytest.mark.parametrize(
    "name", ["medsilo.data.text", "medsilo.tasks.text", "medsilo.tasks.tokenizer"]
)
def test_docstring_examples(name: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0 and result.attempted > 0
