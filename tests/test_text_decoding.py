"""IOB2-constrained Viterbi decoding: hand-made cases where argmax is invalid, brute
force over every path on tiny cases, always-valid output, windows of long sentences."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medsilo.data.text import Sentence, bio_labels
from medsilo.tasks.text import (
    TextModelSpec,
    decode_log_probs,
    decode_tags,
    encode_tagging,
    iob2_transitions,
    predict_tags,
    viterbi,
    word_log_probs,
)
from test_text_tasks import FakeTokenizer

LABELS = bio_labels(["A", "B"])  # O B-A I-A B-B I-B


def valid_iob2(tags: Sequence[str]) -> bool:
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return False
        previous = tag
    return True


def brute_force(log_probs: np.ndarray, labels: Sequence[str]) -> tuple[float, list[int]]:
    """Best valid IOB2 path by enumerating all K^n paths (ties: the first in order)."""
    best: tuple[float, list[int]] = (-np.inf, [])
    for path in itertools.product(range(len(labels)), repeat=len(log_probs)):
        if valid_iob2([labels[k] for k in path]):
            score = float(sum(log_probs[t, k] for t, k in enumerate(path)))
            if score > best[0]:
                best = (score, list(path))
    return best


def path_score(log_probs: np.ndarray, path: Sequence[int]) -> float:
    return float(sum(log_probs[t, k] for t, k in enumerate(path)))


def test_transitions_by_hand() -> None:
    start, trans = iob2_transitions(LABELS)
    assert start.tolist() == [0, 0, -np.inf, 0, -np.inf]
    # I-A only after B-A / I-A; I-B only after B-B / I-B; O, B-* after anything
    allowed = np.isfinite(trans)
    assert allowed[:, 2].tolist() == [False, True, True, False, False]
    assert allowed[:, 4].tolist() == [False, False, False, True, True]
    assert allowed[:, [0, 1, 3]].all()


def test_argmax_invalid_viterbi_repairs_by_hand() -> None:
    # word 1: O slightly below I-A; word 2: I-B best, B-B close; word 3: I-A after I-B
    p = np.array(
        [
            [0.40, 0.05, 0.45, 0.05, 0.05],  # argmax I-A at the start: invalid
            [0.10, 0.05, 0.05, 0.35, 0.45],  # argmax I-B after I-A: invalid
            [0.10, 0.05, 0.50, 0.05, 0.30],  # argmax I-A after I-B: invalid
        ]
    )
    lp = np.log(p)
    argmax = decode_log_probs([lp], LABELS, "argmax")[0]
    assert argmax == ["I-A", "I-B", "I-A"]
    assert not valid_iob2(argmax)
    best = viterbi(lp, *iob2_transitions(LABELS))
    assert [LABELS[k] for k in best] == ["O", "B-B", "I-B"]
    assert best == brute_force(lp, LABELS)[1]
    assert decode_log_probs([lp], LABELS)[0] == ["O", "B-B", "I-B"]


def test_a_valid_argmax_is_kept() -> None:
    lp = np.log(np.array([[0.1, 0.6, 0.1, 0.1, 0.1], [0.1, 0.1, 0.6, 0.1, 0.1]]))
    assert decode_log_probs([lp], LABELS) == decode_log_probs([lp], LABELS, "argmax")


def test_empty_sentences_and_corpus() -> None:
    start, trans = iob2_transitions(LABELS)
    assert viterbi(np.zeros((0, 5)), start, trans) == []
    assert decode_log_probs([np.zeros((0, 5))], LABELS) == [[]]
    assert decode_log_probs([np.zeros((0, 5))], LABELS, "argmax") == [[]]
    assert decode_log_probs([], LABELS) == []


log_prob_rows = st.integers(1, 4).flatmap(
    lambda n: st.lists(
        st.lists(st.floats(-20, 0, allow_nan=False), min_size=5, max_size=5),
        min_size=n,
        max_size=n,
    )
)


@settings(max_examples=150, deadline=None)
@given(rows=log_prob_rows, order=st.permutations(LABELS))
def test_viterbi_matches_brute_force(rows: list[list[float]], order: list[str]) -> None:
    """Any label order (O need not be first): Viterbi's path is valid and scores as high
    as the best valid path found by enumerating all of them."""
    lp = np.asarray(rows)
    path = viterbi(lp, *iob2_transitions(order))
    assert valid_iob2([order[k] for k in path])
    best_score, _ = brute_force(lp, order)
    assert path_score(lp, path) == pytest.approx(best_score, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(
    types=st.integers(1, 3),
    n=st.integers(0, 30),
    seed=st.integers(0, 2**31 - 1),
)
def test_viterbi_output_always_valid_iob2(types: int, n: int, seed: int) -> None:
    labels = bio_labels([f"T{i}" for i in range(types)])
    rng = np.random.default_rng(seed)
    # peaked distributions that favour I- tags, so argmax is often invalid
    logits = rng.normal(size=(n, len(labels))) * 4
    logits[:, 2::2] += 2.0
    lp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    tags = decode_log_probs([lp], labels)[0]
    assert len(tags) == n
    assert valid_iob2(tags)


class TableModel(torch.nn.Module):
    """Logits from a fixed table of token id and position: position-dependent, so a
    word read from the wrong window or column gets other log-probabilities."""

    def __init__(self, classes: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.nn.Parameter(torch.randn(100, classes, generator=g) * 3)
        self.positions = torch.nn.Parameter(torch.randn(64, classes, generator=g))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.tokens[ids] + self.positions[: ids.shape[1]]
        return logits.transpose(1, 2)


def test_word_log_probs_read_each_word_in_its_window() -> None:
    words = tuple("abcdefghijklmnopqrstuvwxyz"[i % 26] * (1 + i % 3) for i in range(40))
    sentences = [
        Sentence(("x", "yz"), ("O", "O")),
        Sentence(words, ("O",) * len(words)),  # ~80 sub-tokens: several windows
        Sentence(("q",), ("O",)),
    ]
    enc = encode_tagging(sentences, FakeTokenizer(), LABELS, max_len=16, overlap=4)
    assert len({r for r, _ in enc.words[1]}) > 3  # the long sentence spans windows
    model = TableModel(len(LABELS))
    got = word_log_probs(model, enc, batch_size=3)  # batches cut across sentences
    with torch.no_grad():
        full = torch.log_softmax(model(torch.from_numpy(enc.ids)).double(), dim=1).numpy()
    assert [len(g) for g in got] == [2, 40, 1]
    for sentence, where in zip(got, enc.words, strict=True):
        expected = np.stack([full[r, :, c] for r, c in where])
        np.testing.assert_allclose(sentence, expected, rtol=0, atol=1e-12)
    # argmax decoding is exactly the old per-position argmax read at each word
    argmax = predict_tags(model, enc, LABELS, "argmax", batch_size=3)
    assert argmax == decode_tags(full.argmax(axis=1), enc, LABELS)
    decoded = predict_tags(model, enc, LABELS)
    assert all(valid_iob2(t) for t in decoded)


def test_tagger_decodes_with_viterbi_by_default() -> None:
    from medsilo.tasks.tagger import Tagger

    class Inside(torch.nn.Module):
        """Always prefers I-A, then B-A: argmax gives I-A everywhere."""

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            logits = torch.tensor([0.0, 1.0, 2.0, 0.0, 0.0]).view(1, 5, 1)
            return logits.expand(ids.shape[0], 5, ids.shape[1])

    tagger = Tagger(Inside(), FakeTokenizer(), LABELS, TextModelSpec(max_len=16, overlap=4))
    assert tagger.tag_sentences([["a", "b", "c"]], "argmax") == [["I-A", "I-A", "I-A"]]
    assert tagger.tag_sentences([["a", "b", "c"]]) == [["B-A", "I-A", "I-A"]]
