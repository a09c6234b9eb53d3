"""Token classification (entity tagging) and masked-language modelling with Hugging Face
``transformers`` encoders.

Models. :class:`TextModelSpec` names either a pretrained model (``source``: any hub name,
e.g. ``xlm-roberta-base`` for a user with a network, or a local directory) or, offline, a
small BERT / XLM-R configuration trained from scratch (Devlin et al., NAACL 2019; Conneau
et al., ACL 2020). :class:`TextModel` wraps it so that ``model(ids)`` returns logits
shaped ``(batch, classes, tokens)``: ``F.cross_entropy(model(x), y)`` with ``y`` =
:data:`IGNORE` at positions without a label is then exactly the token-level loss, and the
federated training loop, DP-SGD (Opacus) and the final local step are the same code as for
tables and images. It passes ``position_ids`` explicitly, contiguous and shaped
``(batch, tokens)``, which Opacus needs with transformers 5.x (../shared/ENVIRONMENT.md).

Label alignment (sub-words). A word of several sub-tokens carries its tag on its first
sub-token; the others are either ignored in the loss (``alignment = "first"``, as in
BERT's CoNLL-2003 experiments) or labelled too (``"all"``, continuation sub-tokens of a
``B-X`` word get ``I-X``). Predictions are always read from each word's first sub-token,
so scores are per word, as seqeval expects.

Decoding. :func:`predict_tags` takes the model's log-probabilities at each word's label
position and finds the most likely tag sequence that is valid IOB2 (:func:`viterbi` with
the transitions IOB2 forbids at ``-inf``, :func:`iob2_transitions`); a per-word argmax
(``decoding = "argmax"``) can emit ``I-X`` after ``O`` or after ``B-Y``, which strict
seqeval counts as a wrong entity.

Long sentences. A sentence longer than ``max_len - 2`` sub-tokens is cut into overlapping
windows (:func:`medsilo.data.text.windows`), each ``[CLS] ... [SEP]``; each word's
prediction comes from the window where it has most context (:func:`best_window`). Nothing
is truncated.

Masked-language modelling: BERT's scheme, 15% of the non-special tokens are chosen; of
those 80% become ``[MASK]``, 10% a random token and 10% stay (:func:`mask_tokens`).

Scores: entity-level precision, recall and F1 (an entity counts only if type and both
boundaries match: CoNLL-2000 / conlleval) with ``seqeval`` in strict IOB2 mode, micro-
averaged over types and per type (:func:`entity_scores`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from medsilo.data.text import Sentence, best_window, windows
from medsilo.tasks.tokenizer import WordTokenizer

IGNORE = -100
"""Label of positions without a loss (``F.cross_entropy``'s default ``ignore_index``)."""
Alignment = Literal["first", "all"]
Task = Literal["tagging", "mlm"]


@dataclass(frozen=True)
class Encoded:
    """Windows of sub-token ids ready for a model, and where each word's prediction is."""

    ids: np.ndarray
    """``(rows, max_len)`` int64, ``[CLS] ... [SEP]`` then padding."""
    labels: np.ndarray
    """``(rows, max_len)`` int64 label ids, :data:`IGNORE` where no loss is taken."""
    words: tuple[tuple[tuple[int, int], ...], ...]
    """For each sentence, for each word: the ``(row, column)`` its prediction is read at."""

    def __len__(self) -> int:
        return len(self.ids)


def _rows(
    pieces: list[list[int]], tokenizer: WordTokenizer, max_len: int, overlap: int
) -> tuple[list[int], list[tuple[int, int]], list[int]]:
    """Flatten a sentence's sub-tokens; returns (flat ids, windows, the sub-token that
    carries each word's label).

    That is the word's first sub-token, except a bare word-boundary token (byte-level
    BPE's ``Ġ``, the prefix space, when the vocabulary has no merge of it with the word's
    first characters): it is the same for every such word, so the label goes on the next
    sub-token, the first that says something about the word."""
    boundary = getattr(tokenizer, "boundary_id", None)
    flat: list[int] = []
    starts: list[int] = []
    for p in pieces:
        starts.append(len(flat) + int(len(p) > 1 and p[0] == boundary))
        flat += p
    return flat, windows(len(flat), max_len - 2, overlap), starts


def encode_tagging(
    sentences: Sequence[Sentence],
    tokenizer: WordTokenizer,
    labels: Sequence[str],
    *,
    max_len: int = 128,
    overlap: int = 32,
    alignment: Alignment = "first",
) -> Encoded:
    """Sub-tokenize, align tags (see the module docstring) and cut into windows.

    ``labels`` is the IOB2 label list (index = class id); a tag outside it is an error.
    """
    index = {label: i for i, label in enumerate(labels)}
    ids: list[list[int]] = []
    targets: list[list[int]] = []
    words: list[tuple[tuple[int, int], ...]] = []
    for s in sentences:
        pieces = tokenizer.encode_words(s.words)
        flat, spans, starts = _rows(pieces, tokenizer, max_len, overlap)
        tag_of = np.full(len(flat), IGNORE, dtype=np.int64)
        end = 0
        for start, piece, tag in zip(starts, pieces, s.tags, strict=True):
            if tag not in index:
                raise ValueError(
                    f"{s.source}:{s.line}: label {tag!r} is not in the label set {list(labels)}"
                )
            end += len(piece)
            tag_of[start] = index[tag]
            if alignment == "all" and end > start + 1:
                inside = "I-" + tag[2:] if tag.startswith("B-") else tag
                tag_of[start + 1 : end] = index[inside]
        first_row = len(ids)
        for a, b in spans:
            row = [tokenizer.cls_id, *flat[a:b], tokenizer.sep_id]
            target = [IGNORE, *tag_of[a:b].tolist(), IGNORE]
            pad = max_len - len(row)
            ids.append(row + [tokenizer.pad_id] * pad)
            targets.append(target + [IGNORE] * pad)
        where = []
        for start in starts:
            k = best_window(start, spans)
            where.append((first_row + k, start - spans[k][0] + 1))
        words.append(tuple(where))
    return Encoded(
        np.asarray(ids, dtype=np.int64).reshape(-1, max_len),
        np.asarray(targets, dtype=np.int64).reshape(-1, max_len),
        tuple(words),
    )


def encode_text(
    sentences: Sequence[Sentence], tokenizer: WordTokenizer, *, max_len: int = 128
) -> np.ndarray:
    """Rows of sub-token ids for masked-language modelling (no overlap needed: every token
    is in exactly one row)."""
    rows: list[list[int]] = []
    for s in sentences:
        flat, spans, _ = _rows(tokenizer.encode_words(s.words), tokenizer, max_len, 0)
        for a, b in spans:
            row = [tokenizer.cls_id, *flat[a:b], tokenizer.sep_id]
            rows.append(row + [tokenizer.pad_id] * (max_len - len(row)))
    return np.asarray(rows, dtype=np.int64).reshape(-1, max_len)


def mask_tokens(
    ids: np.ndarray,
    tokenizer: WordTokenizer,
    rng: np.random.Generator,
    probability: float = 0.15,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masking (Devlin et al. 2019, section 3.1): returns ``(inputs, labels)``,
    labels = the original id at chosen positions and :data:`IGNORE` elsewhere."""
    special = np.isin(ids, [tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id])
    chosen = (rng.random(ids.shape) < probability) & ~special
    labels = np.where(chosen, ids, IGNORE)
    draw = rng.random(ids.shape)
    inputs = ids.copy()
    inputs[chosen & (draw < 0.8)] = tokenizer.mask_id
    swap = chosen & (draw >= 0.8) & (draw < 0.9)
    inputs[swap] = rng.integers(0, tokenizer.vocab_size, size=int(swap.sum()))
    return inputs, labels


def decode_tags(
    predictions: np.ndarray, encoded: Encoded, labels: Sequence[str]
) -> list[list[str]]:
    """Each word's predicted tag, read at its first sub-token in its best window."""
    return [[labels[int(predictions[r, c])] for r, c in sentence] for sentence in encoded.words]


def entity_scores(
    truth: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Entity-level micro precision/recall/F1 (strict IOB2) and per type
    (``f1/TYPE`` ...), with ``support`` = number of true entities.

    >>> entity_scores([["B-A", "I-A", "O", "B-B"]], [["B-A", "I-A", "O", "O"]])["f1"]
    0.6666666666666666
    """
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    if len(truth) != len(predicted) or any(
        len(t) != len(p) for t, p in zip(truth, predicted, strict=True)
    ):
        raise ValueError("truth and predictions must have the same sentences and lengths")
    report: dict[str, dict[str, Any]] = classification_report(
        [list(t) for t in truth],
        [list(p) for p in predicted],
        mode="strict",
        scheme=IOB2,
        output_dict=True,
        zero_division=0,
    )
    micro = report.get("micro avg", {})
    out = {
        "precision": float(micro.get("precision", 0.0)),
        "recall": float(micro.get("recall", 0.0)),
        "f1": float(micro.get("f1-score", 0.0)),
        "support": float(micro.get("support", 0)),
    }
    for name, row in report.items():
        if name.endswith(" avg"):
            continue
        out[f"precision/{name}"] = float(row["precision"])
        out[f"recall/{name}"] = float(row["recall"])
        out[f"f1/{name}"] = float(row["f1-score"])
        out[f"support/{name}"] = float(row["support"])
    return out


class TextModelSpec(BaseModel):
    """``[model]`` of a text study: a pretrained ``source`` or a small configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str | None = None
    """Hub name (e.g. ``xlm-roberta-base``; needs a network) or local directory of a
    pretrained encoder; None: the small configuration below, trained from scratch."""
    architecture: Literal["bert", "xlm-roberta"] = "bert"
    layers: int = Field(default=2, ge=1)
    hidden: int = Field(default=128, ge=8)
    heads: int = Field(default=2, ge=1)
    intermediate: int = Field(default=512, ge=8)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    max_len: int = Field(default=128, ge=8)
    """Tokens per window, ``[CLS]`` and ``[SEP]`` included."""
    overlap: int = Field(default=32, ge=0)
    """Sub-tokens shared by consecutive windows of a long sentence."""
    alignment: Alignment = "first"
    outside_prior: float = Field(default=0.9, ge=0, lt=1)
    """Tagging: the probability of ``O`` the untrained classifier predicts everywhere
    (its bias starts at ``log pi`` for ``O`` and ``log((1 - pi) / (K - 1))`` for the other
    ``K - 1`` labels; Lin et al., "Focal loss for dense object detection", ICCV 2017,
    section 4.1, "Initialization"). 0: the transformers default (zero bias, uniform
    predictions), which leaves a from-scratch tagger on the all-``O`` plateau under
    continuous AdamW (docs/text.md, "Why uninterrupted AdamW stalled")."""

    @model_validator(mode="after")
    def _shape(self) -> TextModelSpec:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.overlap >= self.max_len - 2:
            raise ValueError(f"overlap ({self.overlap}) must be < max_len - 2")
        return self


class TextModel(nn.Module):
    """A transformers encoder with a tagging or MLM head; ``forward(ids)`` returns logits
    ``(batch, classes, tokens)``. Padding (``pad_id``) is masked out of attention."""

    def __init__(self, net: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.net = net
        self.pad_id = pad_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Runs on the encoder's device (a GPU if the model was moved there) and returns
        the logits on ``ids``' device, so CPU training loops work unchanged."""
        batch, tokens = ids.shape
        home = ids.device
        ids = ids.to(next(self.net.parameters()).device)
        # Contiguous (batch, tokens) position ids: Opacus needs them explicit.
        positions = torch.arange(tokens, device=ids.device).unsqueeze(0).repeat(batch, 1)
        out = self.net(
            input_ids=ids,
            attention_mask=(ids != self.pad_id).long(),
            position_ids=positions,
        )
        logits: torch.Tensor = out.logits
        return logits.transpose(1, 2).to(home)


def build_model(
    spec: TextModelSpec,
    task: Task,
    *,
    vocab_size: int,
    pad_id: int,
    num_labels: int = 2,
    outside: int | None = 0,
    seed: int = 0,
    device: str = "cpu",
) -> TextModel:
    """A tagging (``num_labels`` classes) or MLM model, pretrained or from scratch
    (initialized from ``seed``), on ``device`` (``"cuda"``: non-private runs only, the
    DP-SGD noise generator is on the CPU). Word embeddings and the MLM decoder are untied, so every
    Opacus mode applies and averaging treats them as separate weights.

    Tagging: the new classifier's bias starts at ``spec.outside_prior`` for class
    ``outside`` (the ``O`` label; None: no such class, bias left at zero), see
    :func:`outside_prior_bias`."""
    from transformers import (
        AutoModelForMaskedLM,
        AutoModelForTokenClassification,
        BertConfig,
        XLMRobertaConfig,
    )

    torch.manual_seed(seed)
    if spec.source is not None:
        if task == "mlm":
            net = AutoModelForMaskedLM.from_pretrained(spec.source)
        else:
            net = AutoModelForTokenClassification.from_pretrained(
                spec.source, num_labels=num_labels
            )
            _init_outside_bias(net, spec.outside_prior, outside)
        return TextModel(net.to(device), pad_id)
    config_class = BertConfig if spec.architecture == "bert" else XLMRobertaConfig
    settings: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        intermediate_size=spec.intermediate,
        hidden_dropout_prob=spec.dropout,
        attention_probs_dropout_prob=spec.dropout,
        # XLM-R offsets positions past padding_idx; explicit position_ids start at 0.
        max_position_embeddings=spec.max_len + 2,
        pad_token_id=pad_id,
        num_labels=num_labels,
        tie_word_embeddings=False,
    )
    config = config_class(**settings)
    model_class = AutoModelForMaskedLM if task == "mlm" else AutoModelForTokenClassification
    net = model_class.from_config(config)  # type: ignore[no-untyped-call]
    if task == "tagging":
        _init_outside_bias(net, spec.outside_prior, outside)
    return TextModel(net.to(device), pad_id)


def outside_prior_bias(num_labels: int, outside: int, prior: float) -> torch.Tensor:
    """Classifier bias whose softmax (with zero input) is ``prior`` on class ``outside``
    and ``(1 - prior) / (num_labels - 1)`` on each other class.

    Why (measured on MEDDOCAN, docs/text.md): from the default zero bias the untrained
    tagger predicts 1/K for each of K labels, a loss of ``ln K`` (3.0 for 21 labels)
    against 0.62 for the label prior; the first ~10 AdamW steps are spent fitting that
    prior through every weight, the gradient reaching the encoder then falls 100-fold and
    continuous AdamW stays there (the all-``O`` plateau). Starting at the prior removes
    that transient (Lin et al., ICCV 2017, section 4.1).

    >>> torch.softmax(outside_prior_bias(3, 0, 0.8), 0).tolist()  # doctest: +ELLIPSIS
    [0.8..., 0.1..., 0.1...]
    """
    if num_labels < 2 or not 0 <= outside < num_labels or not 0 < prior < 1:
        raise ValueError(
            f"need 2+ labels, 0 <= outside < labels, 0 < prior < 1: got "
            f"{num_labels}, {outside}, {prior}"
        )
    bias = torch.full((num_labels,), float(np.log((1 - prior) / (num_labels - 1))))
    bias[outside] = float(np.log(prior))
    return bias


def _init_outside_bias(net: nn.Module, prior: float, outside: int | None) -> None:
    """Set the token classifier's bias (``net.classifier``, as in transformers' BERT,
    XLM-R and most ``*ForTokenClassification`` models) to :func:`outside_prior_bias`."""
    if prior == 0 or outside is None:
        return
    head = getattr(net, "classifier", None)
    if not isinstance(head, nn.Linear) or head.bias is None:
        raise ValueError(
            f"{type(net).__name__} has no linear 'classifier' with a bias to start at the "
            "O prior: set [model] outside_prior = 0"
        )
    with torch.no_grad():
        head.bias.copy_(outside_prior_bias(head.out_features, outside, prior))


def build_tagger(
    spec: TextModelSpec,
    tokenizer: WordTokenizer,
    labels: Sequence[str],
    *,
    seed: int = 0,
    device: str = "cpu",
) -> TextModel:
    """:func:`build_model` for tagging ``labels`` over ``tokenizer``'s vocabulary (the
    classifier starting at the ``O`` prior if ``"O"`` is one of them)."""
    return build_model(
        spec,
        "tagging",
        vocab_size=tokenizer.vocab_size,
        pad_id=tokenizer.pad_id,
        num_labels=len(labels),
        outside=list(labels).index("O") if "O" in labels else None,
        seed=seed,
        device=device,
    )


def shared_weights(source: Mapping[str, np.ndarray], target: nn.Module) -> dict[str, np.ndarray]:
    """The entries of ``source`` (e.g. an MLM model's weights) that ``target`` has, with
    the same shape: the encoder, not the heads. Raises if nothing matches."""
    state = target.state_dict()
    out = {k: v for k, v in source.items() if k in state and tuple(state[k].shape) == v.shape}
    if not out:
        raise ValueError("the two models share no weights (different architectures?)")
    return out


Decoding = Literal["viterbi", "argmax"]
"""How word tags are read from the model: :func:`viterbi` under the IOB2 constraints
(the default everywhere) or each word's own most likely label (``argmax``, which can
emit an ``I-X`` that continues nothing)."""


@torch.no_grad()
def word_log_probs(model: nn.Module, encoded: Encoded, batch_size: int = 64) -> list[np.ndarray]:
    """For each sentence, the ``(words, classes)`` log-probabilities (log-softmax of the
    logits) at each word's label position, read in its best window
    (:attr:`Encoded.words`). Only those positions are kept, batch by batch."""
    model.eval()
    lengths = [len(s) for s in encoded.words]
    where = np.asarray([rc for s in encoded.words for rc in s], dtype=np.int64).reshape(-1, 2)
    rows, cols = where[:, 0], where[:, 1]
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    out: np.ndarray | None = None
    x = torch.from_numpy(encoded.ids)
    for i in range(0, len(x), batch_size):
        lo, hi = np.searchsorted(ordered, [i, i + batch_size])
        if lo == hi:
            continue
        log_p = torch.log_softmax(model(x[i : i + batch_size]).double(), dim=1).numpy()
        if out is None:
            out = np.empty((len(rows), log_p.shape[1]), dtype=np.float64)
        picked = order[lo:hi]
        out[picked] = log_p[rows[picked] - i, :, cols[picked]]
    if out is None:
        out = np.zeros((0, 0), dtype=np.float64)
    return np.split(out, np.cumsum(lengths)[:-1]) if lengths else []


def iob2_transitions(labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(start, transitions)``: 0 where IOB2 allows the label first in a sentence / label
    ``j`` after label ``i``, ``-inf`` where it forbids it: ``I-X`` may only follow ``B-X``
    or ``I-X``, so it never starts a sentence and never follows ``O``, ``B-Y`` or ``I-Y``
    (Y != X); everything else is allowed. These are the BIO constraints of Lample et al.,
    "Neural architectures for named entity recognition", NAACL 2016 (section 2.2, the
    CRF's forbidden transitions) and AllenNLP's ``allowed_transitions("BIO", ...)``, here
    as fixed masks: nothing learnt, nothing read from data.

    >>> start, trans = iob2_transitions(["O", "B-A", "I-A"])
    >>> start.tolist(), trans[:, 2].tolist()
    ([0.0, 0.0, -inf], [-inf, 0.0, 0.0])
    """
    inside = [label[2:] if label.startswith("I-") else None for label in labels]
    kind = [label[2:] if label[:2] in ("B-", "I-") else None for label in labels]
    start = np.where([t is None for t in inside], 0.0, -np.inf)
    transitions = np.zeros((len(labels), len(labels)))
    for j, entity in enumerate(inside):
        if entity is not None:
            transitions[:, j] = [0.0 if k == entity else -np.inf for k in kind]
    return start, transitions


def viterbi(log_probs: np.ndarray, start: np.ndarray, transitions: np.ndarray) -> list[int]:
    """The label sequence maximizing ``sum_t log_probs[t, y_t] + start[y_0] +
    sum_t transitions[y_{t-1}, y_t]`` (Viterbi, IEEE Trans. Inf. Theory 1967; with
    :func:`iob2_transitions`: the most likely valid IOB2 sequence under the model's
    per-word distributions). Ties go to the lower label id.

    >>> lp = np.log([[0.1, 0.3, 0.6], [0.2, 0.1, 0.7]])  # argmax: I-A, I-A (invalid)
    >>> viterbi(lp, *iob2_transitions(["O", "B-A", "I-A"]))  # B-A, I-A
    [1, 2]
    """
    if len(log_probs) == 0:
        return []
    score = start + log_probs[0]
    back = np.zeros(log_probs.shape, dtype=np.int64)
    for t in range(1, len(log_probs)):
        candidates = score[:, None] + transitions
        back[t] = candidates.argmax(axis=0)
        score = candidates[back[t], np.arange(len(score))] + log_probs[t]
    path = [int(score.argmax())]
    for t in range(len(log_probs) - 1, 0, -1):
        path.append(int(back[t, path[-1]]))
    return path[::-1]


def decode_log_probs(
    log_probs: Sequence[np.ndarray], labels: Sequence[str], decoding: Decoding = "viterbi"
) -> list[list[str]]:
    """Tags of each sentence from its ``(words, classes)`` log-probabilities
    (:func:`word_log_probs`), by :data:`Decoding` ``decoding``."""
    if decoding == "argmax":
        return [[labels[int(k)] for k in lp.argmax(axis=1)] if len(lp) else [] for lp in log_probs]
    start, transitions = iob2_transitions(labels)
    return [[labels[k] for k in viterbi(lp, start, transitions)] for lp in log_probs]


def predict_tags(
    model: nn.Module,
    encoded: Encoded,
    labels: Sequence[str],
    decoding: Decoding = "viterbi",
    batch_size: int = 64,
) -> list[list[str]]:
    """Each word's predicted tag, :data:`Decoding` ``decoding`` of the model's
    log-probabilities: the one helper every tagger of the package predicts with."""
    return decode_log_probs(word_log_probs(model, encoded, batch_size), labels, decoding)


@torch.no_grad()
def masked_lm_loss(model: nn.Module, inputs: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy over the masked positions (``exp`` of it is the perplexity)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(inputs), 64):
        logits = model(torch.from_numpy(inputs[i : i + 64]))
        y = torch.from_numpy(labels[i : i + 64])
        loss = nn.functional.cross_entropy(logits, y, reduction="sum")
        total += float(loss)
        count += int((y != IGNORE).sum())
    return total / max(count, 1)


@dataclass(frozen=True)
class AdamWSchedule:
    """AdamW (Loshchilov & Hutter, "Decoupled weight decay regularization", ICLR 2019)
    with BERT's learning-rate schedule: linear warmup over ``warmup_steps`` to ``lr``, then
    linear decay to 0 at ``total_steps`` (Devlin et al. 2019, appendix A.2), and gradient
    norm clipping at ``clip_norm`` (0: none). Steps count on across federated rounds.

    >>> s = AdamWSchedule(lr=1.0, total_steps=10, warmup_steps=2)
    >>> [s.factor(k) for k in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    """

    lr: float
    total_steps: int
    warmup_steps: int
    weight_decay: float = 0.01
    clip_norm: float = 1.0

    def factor(self, step: int) -> float:
        """Multiplier of ``lr`` at (0-based) ``step``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay = max(self.total_steps - self.warmup_steps, 1)
        return max(0.0, (self.total_steps - step) / decay)


def train_adamw(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    schedule: AdamWSchedule,
    *,
    epochs: int = 1,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    steps: int | None = None,
    moments: dict[str, Any] | None = None,
    anchor: Mapping[str, torch.Tensor] | None = None,
    proximal_mu: float = 0.0,
) -> float:
    """Mini-batch AdamW on ``(x, y)`` with ``F.cross_entropy`` (positions labelled
    :data:`IGNORE` take no loss): steps ``start_step .. start_step + steps - 1`` of
    ``schedule`` (``steps`` defaults to ``epochs`` epochs); only parameters with
    ``requires_grad`` train. Returns the mean training loss.

    Step ``k`` takes its batch from epoch ``k // ceil(rows / batch_size)``, whose order is
    a permutation drawn from ``(seed, epoch)``: a caller that runs a phase in pieces (a
    federated round of a few steps) with the same ``seed`` sees every row once per epoch,
    as in one uninterrupted run. Dropout is drawn from ``(seed, start_step)``.

    ``moments``: Adam's first and second moments (and step count) carried from the
    previous call, updated in place; None starts them from zero at every call (the text
    studies' ``keep_moments = false``; docs/text.md, "Why uninterrupted AdamW stalled").
    ``anchor``/``proximal_mu``: FedProx's term ``mu/2 ||w - anchor||^2``."""
    from medsilo.tasks.models import seeded_cpu_rng

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(
        params.values(), lr=schedule.lr, weight_decay=schedule.weight_decay
    )
    if moments:
        optimizer.load_state_dict(moments)
    per_epoch = max(1, -(-len(y) // batch_size))
    count = epochs * per_epoch if steps is None else steps
    order, epoch_of = torch.empty(0, dtype=torch.long), -1
    model.train()
    total = 0.0
    dropout_seed = int(np.random.SeedSequence([seed, start_step]).generate_state(1)[0])
    with seeded_cpu_rng(dropout_seed):
        for step in range(start_step, start_step + count):
            epoch, slot = divmod(step, per_epoch)
            if epoch != epoch_of:
                draw = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
                order = torch.randperm(len(y), generator=torch.Generator().manual_seed(draw))
                epoch_of = epoch
            idx = order[slot * batch_size : (slot + 1) * batch_size]
            for group in optimizer.param_groups:
                group["lr"] = schedule.lr * schedule.factor(step)
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            if proximal_mu > 0 and anchor is not None:
                prox = sum(((params[k] - a) ** 2).sum() for k, a in anchor.items() if k in params)
                loss = loss + 0.5 * proximal_mu * prox
            loss.backward()  # type: ignore[no-untyped-call]
            if schedule.clip_norm > 0:
                nn.utils.clip_grad_norm_(list(params.values()), schedule.clip_norm)
            optimizer.step()
            total += float(loss.detach())
    if moments is not None:
        moments.clear()
        moments.update(optimizer.state_dict())
    return total / max(count, 1)
