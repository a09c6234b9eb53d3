"""The multilingual clinical-entity pipeline of Manoel et al. ("Federated multilingual
models for medical transcript analysis", CHIL 2023, PMLR 209) as one study file.

1. federated masked-language-model pretraining across the language providers, each on
   its own text (heterogeneous sizes: FedAvg weights by rows);
2. federated fine-tuning of the pretrained encoder for entity tagging;
3. a final local training step at each provider (:func:`medsilo.fed.personalization.
   fine_tune`), evaluated on its own test split; with ``[validation]`` its length is
   chosen on a split held out of the provider's own training data
   (:class:`ValidationSection`).

Baselines in the same run, each with the same phases and epochs: ``local`` (each provider
alone: its own MLM pretraining, fine-tuning and the local step's epochs), ``central_public``
(one model trained centrally on public corpora only, e.g. English PubMed abstracts, label
types mapped onto the providers' scheme) and ``pooled`` (all providers' training data in
one place: the upper bound federation approximates).

Rounds reuse medsilo's machinery unchanged: a :class:`~medsilo.fed.coordinator.
Coordinator` with the ``[strategy]`` (FedAvg by default) driven by the
:class:`~medsilo.engines.local.LocalEngine`, and :class:`TextSite`, a
:class:`~medsilo.fed.site.Site` whose arrays are token ids and per-token labels. With
``[privacy]`` every provider trains with DP-SGD and records every step, pretraining,
fine-tuning and local step, in its own ledger (rounds numbered on across the phases).
The unit of privacy is one training row: a window of at most ``max_len`` sub-tokens of one
sentence; a patient or document with many rows is protected only by group privacy.
"""

from __future__ import annotations

import os
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medsilo.data.text import (
    Sentence,
    bio_labels,
    document_sentences,
    entity_types,
    read_brat_dir,
    read_conll,
)
from medsilo.data.types import SiteData
from medsilo.engines.local import LocalEngine, RoundResult
from medsilo.errors import ConfigError, DataError
from medsilo.fed.coordinator import Coordinator
from medsilo.fed.dp import LocalDp
from medsilo.fed.messages import (
    EvaluateRequest,
    Evaluation,
    Refusal,
    RoundPlan,
    TrainConfig,
    Update,
)
from medsilo.fed.personalization import (
    PersonalizationSpec,
    fine_tune,
    frozen_except,
    trainable_keys,
)
from medsilo.fed.site import Site, derive_seed
from medsilo.fed.strategies import StrategySpec
from medsilo.fed.training import get_weights, set_weights
from medsilo.privacy.dpsgd import steps_per_epoch
from medsilo.privacy.ledger import Budget, Ledger
from medsilo.report.rundir import atomic_write_json
from medsilo.tasks.tagger import Tagger
from medsilo.tasks.text import (
    AdamWSchedule,
    Decoding,
    Encoded,
    TextModelSpec,
    build_model,
    build_tagger,
    encode_tagging,
    encode_text,
    entity_scores,
    mask_tokens,
    masked_lm_loss,
    predict_tags,
    shared_weights,
    train_adamw,
)
from medsilo.tasks.tokenizer import PretrainedTokenizer, WordTokenizer, train_public_tokenizer

Setting = Literal["local", "central_public", "pooled"]
SETTINGS: tuple[Setting, ...] = ("local", "central_public", "pooled")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CorpusSection(_Section):
    """One provider's (or the public) corpus: CoNLL/TSV files or brat directories."""

    train: list[Path] = Field(min_length=1)
    test: list[Path] = Field(default_factory=list)
    format: Literal["conll", "brat"] = "conll"
    repair: bool = False
    """Turn an ``I-X`` that does not continue an entity into ``B-X`` instead of failing."""
    label_map: dict[str, str] = Field(default_factory=dict)
    """Entity type -> type of the study's scheme; ``"O"`` drops the type."""
    max_sentences: int | None = Field(default=None, ge=1)
    """Keep only the first N training sentences (tiny runs)."""


class PhaseSection(_Section):
    rounds: int = Field(default=1, ge=0)
    local_epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    """``sgd`` (the federated default, and DP-SGD's) or ``adamw``: AdamW with BERT's
    linear warmup and decay over the phase's steps, counted on across rounds
    (:class:`~medsilo.tasks.text.AdamWSchedule`; ``momentum`` is then unused). Non-private
    runs only."""
    warmup: float = Field(default=0.06, ge=0, lt=1)
    """AdamW: fraction of the phase's steps spent warming the learning rate up."""
    clip_norm: float = Field(default=1.0, ge=0)
    """AdamW: gradient-norm clipping (0: none)."""
    local_steps: int | None = Field(default=None, ge=1)
    """AdamW: optimizer steps per round instead of ``local_epochs`` full epochs (more,
    shorter rounds: less client drift between providers); the site's data order runs on
    across rounds, so every row is still seen once per epoch."""
    keep_moments: bool = False
    """AdamW: each site keeps its Adam moments between rounds (they never leave it);
    false restarts them every round. Restarting was needed while the tagger started from
    uniform predictions (continuous AdamW then stayed on the all-``O`` plateau); with the
    classifier starting at the ``O`` prior (``[model] outside_prior``) both learn and
    keeping them is slightly better (docs/text.md, "Why uninterrupted AdamW stalled")."""

    def round_steps(self, rows: int) -> int:
        """Optimizer steps a site with ``rows`` rows takes per round."""
        if self.local_steps is not None:
            return self.local_steps
        return self.local_epochs * -(-rows // self.batch_size)

    def schedule(
        self, rows: int, epochs: int | None = None, lr: float | None = None
    ) -> AdamWSchedule:
        """The AdamW schedule of a site with ``rows`` rows over the whole phase (or over
        ``epochs`` epochs, for the local step)."""
        per_epoch = -(-rows // self.batch_size)
        total = self.rounds * self.round_steps(rows) if epochs is None else per_epoch * epochs
        return AdamWSchedule(
            lr=self.lr if lr is None else lr,
            total_steps=max(total, 1),
            warmup_steps=max(1, round(self.warmup * total)),
            weight_decay=self.weight_decay,
            clip_norm=self.clip_norm,
        )

    def config(self) -> TrainConfig:
        return TrainConfig(
            self.local_epochs, self.batch_size, self.lr, self.momentum, self.weight_decay
        )


class ValidationSection(_Section):
    """A validation split at every provider, carved from its own training data, that
    chooses how long its local step runs.

    Each provider holds out ``fraction`` of its training documents (of its sentences when
    the corpus marks no documents: ``-DOCSTART-`` lines, brat files), drawn from the study
    seed; they are never trained on, in any setting. The local step (federated + local and
    each local-only baseline) then runs its ``fine_tune_epochs`` one epoch at a time and
    keeps the model of the epoch count ``0 .. fine_tune_epochs`` (0: the model it started
    from) with the best entity F1 on that split: early stopping on the provider's own data,
    never on the test split. Non-private studies only: the choice reads the held-out rows
    without noise, which DP-SGD's accounting does not cover."""

    fraction: float = Field(default=0.15, gt=0, lt=1)


class TokenizerSection(_Section):
    source: str | None = None
    """Hub name or local directory of a pretrained tokenizer; None: learn a byte-level BPE
    on ``public`` files only (see :mod:`medsilo.tasks.tokenizer`)."""
    public: list[Path] = Field(default_factory=list)
    """Public corpora (CoNLL/TSV) the BPE is learnt on; empty: the [public] corpus."""
    vocab_size: int = Field(default=8000, ge=261)


class PrivacySection(_Section):
    """Record-level DP-SGD at every provider, every phase, one ledger per provider."""

    epsilon: float = Field(gt=0)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    noise_multiplier: float = Field(gt=0)
    clip: float = Field(default=1.0, gt=0)
    accountant: Literal["rdp", "pld"] = "rdp"


class StudyMeta(_Section):
    name: str = Field(default="text", pattern=r"^[A-Za-z0-9._-]+$")
    seed: int = Field(default=0, ge=0)
    threads: int = Field(default=1, ge=1)
    device: Literal["cpu", "cuda"] = "cpu"
    """Where the encoder runs; ``cuda`` is for non-private runs (data stay on the CPU)."""
    save_model: bool = False
    """Save the federated tagger (``models/federated``) and each provider's model after
    the local step (``models/federated+local/<provider>``) as tagger directories
    (:class:`medsilo.tasks.tagger.Tagger`), e.g. for ``medsilo deid``."""


class TextStudy(_Section):
    """A text study file."""

    study: StudyMeta = Field(default_factory=StudyMeta)
    model: TextModelSpec = Field(default_factory=TextModelSpec)
    tokenizer: TokenizerSection = Field(default_factory=TokenizerSection)
    providers: dict[str, CorpusSection] = Field(min_length=1)
    public: CorpusSection | None = None
    pretrain: PhaseSection = Field(default_factory=lambda: PhaseSection(rounds=0))
    finetune: PhaseSection = Field(default_factory=PhaseSection)
    local_step: PersonalizationSpec = Field(
        default_factory=lambda: PersonalizationSpec(fine_tune_epochs=1)
    )
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    baselines: list[Setting] = Field(default_factory=lambda: list(SETTINGS))
    privacy: PrivacySection | None = None
    validation: ValidationSection | None = None

    @model_validator(mode="after")
    def _fits(self) -> TextStudy:
        if "central_public" in self.baselines and self.public is None:
            raise ValueError("baselines: 'central_public' needs a [public] corpus")
        if self.tokenizer.source is None and not (self.tokenizer.public or self.public):
            raise ValueError(
                "tokenizer: give a pretrained 'source', or public corpora to learn it on "
                "([tokenizer] public = [...] or a [public] section); never private text"
            )
        for name, corpus in self.providers.items():
            if not corpus.test:
                raise ValueError(f"providers.{name}.test: every provider needs a test split")
        if self.privacy is not None and self.study.device != "cpu":
            raise ValueError("study.device: DP-SGD runs on the CPU; set device = 'cpu'")
        if self.privacy is not None and "adamw" in (
            self.pretrain.optimizer,
            self.finetune.optimizer,
        ):
            raise ValueError(
                "optimizer: DP-SGD runs with SGD (its accounting is for the noisy SGD "
                "step); set optimizer = 'sgd' in [pretrain] and [finetune] with [privacy]"
            )
        for phase in ("pretrain", "finetune"):
            if getattr(self, phase).local_steps is not None and (
                getattr(self, phase).optimizer != "adamw"
            ):
                raise ValueError(
                    f"{phase}.local_steps: steps per round are for optimizer = 'adamw'; "
                    "with SGD set local_epochs"
                )
        if self.validation is not None and self.privacy is not None:
            raise ValueError(
                "validation: choosing the local step's length on held-out rows is not "
                "covered by the DP accounting; remove [validation] from a [privacy] study"
            )
        if self.validation is not None and not self.local_step.enabled:
            raise ValueError(
                "validation: it chooses the local step's length; set [local_step] "
                "fine_tune_epochs >= 1 (the most epochs it may choose)"
            )
        if self.strategy.name == "fedltn":
            raise ValueError("strategy.name: 'fedltn' is not available for text studies")
        return self


def parse_text_study(text: str, source: str = "<study>", base_dir: Path | None = None) -> TextStudy:
    """Parse and validate a text study file; relative paths are resolved from ``base_dir``."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from None
    try:
        study = TextStudy.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format(source, error)) from None
    if base_dir is None:
        return study
    return _resolve(study, base_dir)


def _format(source: str, error: ValidationError) -> str:
    """``file: field.path: rule (got value)``, one line per problem."""
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"] if not str(p).startswith("function-"))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        value = item.get("input")
        shown = (
            ""
            if isinstance(value, dict) or item["type"] == "extra_forbidden"
            else f" (got {value!r})"
        )
        lines.append(f"{source}: {where or '(top level)'}: {message}{shown}")
    return "\n".join(lines)


def _resolve(study: TextStudy, base: Path) -> TextStudy:
    def corpus(c: CorpusSection) -> CorpusSection:
        return c.model_copy(
            update={"train": [base / p for p in c.train], "test": [base / p for p in c.test]}
        )

    return study.model_copy(
        update={
            "providers": {n: corpus(c) for n, c in study.providers.items()},
            "public": corpus(study.public) if study.public is not None else None,
            "tokenizer": study.tokenizer.model_copy(
                update={"public": [base / p for p in study.tokenizer.public]}
            ),
        }
    )


def load_text_study(path: Path) -> TextStudy:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the study file ({error.strerror})") from None
    return parse_text_study(text, str(path), path.parent)


# ------------------------------------------------------------------------------- data


def read_corpus(paths: Sequence[Path], section: CorpusSection) -> list[Sentence]:
    """Sentences of every file (CoNLL) or brat directory, with the label map applied."""
    out: list[Sentence] = []
    for path in paths:
        if section.format == "brat":
            out += [s for d in read_brat_dir(path) for s in document_sentences(d)]
        else:
            out += read_conll(path, repair=section.repair).sentences
    return [_map_labels(s, section.label_map) for s in out]


def _map_labels(sentence: Sentence, mapping: Mapping[str, str]) -> Sentence:
    if not mapping:
        return sentence
    tags = []
    for tag in sentence.tags:
        target = mapping.get(tag[2:], tag[2:]) if tag != "O" else "O"
        tags.append("O" if target == "O" else f"{tag[:2]}{target}")
    # Dropping a type can leave an I- of the next type orphaned only if types were
    # adjacent without B-; IOB2 input guarantees B- at every entity start.
    return Sentence(sentence.words, tuple(tags), sentence.source, sentence.line, sentence.document)


@dataclass
class Corpus:
    """One group's data, encoded with the study's tokenizer and labels."""

    name: str
    train: list[Sentence]
    test: list[Sentence]
    mlm: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    tagging: Encoded | None = None
    test_encoded: Encoded | None = None
    validation: list[Sentence] = field(default_factory=list)
    """Held out of ``train`` by ``[validation]`` (empty without it)."""
    validation_encoded: Encoded | None = None


def hold_out(
    sentences: Sequence[Sentence], fraction: float, seed: int, where: str
) -> tuple[list[Sentence], list[Sentence]]:
    """Split ``sentences`` into (train, validation) by whole documents, a random
    ``fraction`` of them (at least one) held out; a sentence with no document is its own
    group. Order within each part is kept."""
    keys = [s.document or f"#{i}" for i, s in enumerate(sentences)]
    groups = list(dict.fromkeys(keys))
    if len(groups) < 2:
        raise DataError(
            f"{where}: a validation split needs at least 2 documents or sentences, found "
            f"{len(groups)}; add training data or remove [validation]"
        )
    count = min(len(groups) - 1, max(1, round(fraction * len(groups))))
    rng = np.random.default_rng(seed)
    held = {groups[i] for i in rng.choice(len(groups), size=count, replace=False)}
    train = [s for s, k in zip(sentences, keys, strict=True) if k not in held]
    validation = [s for s, k in zip(sentences, keys, strict=True) if k in held]
    return train, validation


def _encode(
    corpus: Corpus, tokenizer: WordTokenizer, labels: Sequence[str], spec: TextModelSpec
) -> Corpus:
    kw: dict[str, Any] = {"max_len": spec.max_len, "overlap": spec.overlap}
    corpus.mlm = encode_text(corpus.train, tokenizer, max_len=spec.max_len)
    corpus.tagging = encode_tagging(corpus.train, tokenizer, labels, alignment=spec.alignment, **kw)
    if corpus.test:
        corpus.test_encoded = encode_tagging(corpus.test, tokenizer, labels, **kw)
    if corpus.validation:
        corpus.validation_encoded = encode_tagging(corpus.validation, tokenizer, labels, **kw)
    return corpus


def _site_data(name: str, x: np.ndarray, y: np.ndarray) -> SiteData:
    empty = np.zeros((0, x.shape[1]), dtype=np.int64)
    return SiteData(name, x, y, empty, empty, empty, empty)


# -------------------------------------------------------------------------- sites


class TextSite(Site):
    """A provider: a :class:`Site` whose rows are token windows. For MLM it draws a fresh
    BERT masking of its text every round (dynamic masking, Liu et al. 2019), from its own
    seed, before the usual round logic (SGD or DP-SGD, ledger)."""

    def __init__(
        self,
        index: int,
        data: SiteData,
        model_factory: Callable[[], torch.nn.Module],
        seed: int,
        *,
        task: Literal["tagging", "mlm"],
        tokenizer: WordTokenizer,
        dp: LocalDp | None = None,
        adamw: AdamWSchedule | None = None,
        first_round: int = 1,
        round_steps: int | None = None,
        keep_moments: bool = False,
    ) -> None:
        super().__init__(index, data, model_factory, frozenset(), seed, dp=dp)
        self.task = task
        self.tokenizer = tokenizer
        self.adamw = adamw
        """AdamW instead of SGD (non-private only); its steps count from ``first_round``."""
        self.first_round = first_round
        self.round_steps = round_steps
        """AdamW steps per round (None: the plan's ``local_epochs`` epochs)."""
        self.moments: dict[str, Any] | None = {} if keep_moments else None
        """Adam's moments, kept here between rounds (never sent)."""

    def on_plan(self, plan: RoundPlan) -> Update | Refusal:
        if self.task == "mlm":
            rng = np.random.default_rng(derive_seed(self.seed, self.index, plan.round, 3))
            inputs, labels = mask_tokens(self.data.x_train, self.tokenizer, rng)
            self._tensors["train"] = (torch.from_numpy(inputs), torch.from_numpy(labels))
        if self.adamw is None or self.dp is not None:
            return super().on_plan(plan)
        if plan.secagg is not None:
            raise ConfigError("optimizer 'adamw' does not run with secure aggregation")
        return self._adamw_round(plan, self.adamw)

    def _adamw_round(self, plan: RoundPlan, schedule: AdamWSchedule) -> Update:
        """The round of :meth:`Site.on_plan` with AdamW: train from the global weights,
        return the delta."""
        self._load_global(plan.weights)
        anchor = self._proximal_anchor(plan)
        x, y = self._tensors["train"]
        per_round = self.round_steps or plan.config.local_epochs * -(
            -len(y) // plan.config.batch_size
        )
        loss = train_adamw(
            self.model,
            x,
            y,
            schedule,
            batch_size=plan.config.batch_size,
            seed=derive_seed(self.seed, self.index, self.first_round),
            start_step=(plan.round - self.first_round) * per_round,
            steps=per_round,
            moments=self.moments,
            anchor=anchor,
            proximal_mu=plan.config.proximal_mu,
        )
        trained = get_weights(self.model)
        delta = {k: trained[k] - np.asarray(v) for k, v in plan.weights.items()}
        return Update(
            site=self.name,
            round=plan.round,
            delta=delta,
            num_samples=self.data.num_train,
            metrics={"train_loss": loss},
        )

    def on_evaluate(self, request: EvaluateRequest) -> Evaluation:
        """MLM: masked-token loss on a fixed masking of the training text (the sites keep
        it; nothing is released but the number)."""
        self._load_global(request.weights)
        rng = np.random.default_rng(derive_seed(self.seed, self.index, 0, 4))
        inputs, labels = mask_tokens(self.data.x_train, self.tokenizer, rng)
        return Evaluation(
            self.name,
            request.round,
            request.split,
            len(inputs),
            {"mlm_loss": masked_lm_loss(self.model, inputs, labels)},
        )


def tagging_scores(
    model: torch.nn.Module,
    corpus: Corpus,
    labels: Sequence[str],
    decoding: Decoding = "viterbi",
    split: Literal["test", "validation"] = "test",
) -> dict[str, float]:
    """Entity-level scores of ``model`` on ``corpus``'s test (or validation) split (tags
    decoded as :func:`~medsilo.tasks.text.predict_tags` does)."""
    sentences, encoded = (
        (corpus.test, corpus.test_encoded)
        if split == "test"
        else (corpus.validation, corpus.validation_encoded)
    )
    assert encoded is not None
    predicted = predict_tags(model, encoded, labels, decoding)
    return entity_scores([s.tags for s in sentences], predicted)


# ------------------------------------------------------------------------ pipeline


@dataclass
class PipelineResult:
    weights: dict[str, np.ndarray]
    """The global tagging model after federated fine-tuning."""
    personalized: dict[str, dict[str, np.ndarray]]
    """Each member's model after the local step (empty when it is off)."""
    round_seconds: dict[str, list[float]]
    mlm_loss: list[float]
    local_epochs: dict[str, int] = field(default_factory=dict)
    """Each member's local-step epochs (chosen on its validation split with
    ``[validation]``)."""


def open_ledgers(
    names: Sequence[str], privacy: PrivacySection, directory: Path
) -> dict[str, tuple[Ledger, bytes]]:
    """One ledger and one 32-byte secret per provider under ``directory/<name>/``."""
    out = {}
    for name in names:
        folder = directory / name
        folder.mkdir(parents=True, exist_ok=True)
        ledger = Ledger.open(
            folder,
            site=name,
            budget=Budget(privacy.epsilon, privacy.delta),
            accountant=privacy.accountant,
        )
        out[name] = (ledger, os.urandom(32))
    return out


def _dp(
    rows: int,
    phase: PhaseSection | TrainConfig,
    privacy: PrivacySection,
    owned: tuple[Ledger, bytes],
) -> LocalDp:
    q = min(1.0, phase.batch_size / max(rows, 1))
    return LocalDp(
        sample_rate=q,
        noise_multiplier=privacy.noise_multiplier,
        clip=privacy.clip,
        steps_per_round=phase.local_epochs * steps_per_epoch(q),
        secret=owned[1],
        ledger=owned[0],
    )


def _adamw(phase: PhaseSection, rows: int) -> AdamWSchedule | None:
    return phase.schedule(rows) if phase.optimizer == "adamw" else None


def _local_step(
    study: TextStudy,
    site: TextSite,
    member: Corpus,
    labels: Sequence[str],
    round_: int,
) -> tuple[dict[str, np.ndarray], int]:
    """The local step at one provider, from the model in ``site.model``: its weights and
    the epochs they took.

    AdamW sites (non-private) train with their own warmup and decay over
    ``fine_tune_epochs``; SGD and DP-SGD sites use :func:`~medsilo.fed.personalization.
    fine_tune` (DP steps recorded in the site's ledger as release ``round_``). With
    ``[validation]`` the epochs run one at a time and the epoch count ``0 ..
    fine_tune_epochs`` with the best entity F1 on the provider's validation split is kept
    (ties: fewer epochs); AdamW's schedule still spans every epoch, so stopping after
    ``k`` is the prefix of the full run, and SGD's momentum restarts each epoch."""
    spec = study.local_step
    x, y = site._tensors["train"]
    seed = derive_seed(study.study.seed, site.index, round_, 9)
    if site.adamw is not None and site.dp is None:
        schedule = study.finetune.schedule(len(y), spec.fine_tune_epochs, spec.fine_tune_lr)
        per_epoch = -(-len(y) // study.finetune.batch_size)
        moments: dict[str, Any] = {}

        def train(epochs: int, done: int) -> None:
            with frozen_except(site.model, trainable_keys(site.model, spec.layers)):
                train_adamw(
                    site.model,
                    x,
                    y,
                    schedule,
                    batch_size=study.finetune.batch_size,
                    seed=seed,
                    start_step=done * per_epoch,
                    steps=epochs * per_epoch,
                    moments=moments,
                )

    else:

        def train(epochs: int, done: int) -> None:
            result = fine_tune(
                site.model,
                x,
                y,
                spec.model_copy(update={"fine_tune_epochs": epochs}),
                study.finetune.config(),
                seed=seed if done == 0 else derive_seed(seed, done),
                round=round_,
                dp=site.dp if isinstance(site.dp, LocalDp) else None,
            )
            if result.refused is not None:
                raise ConfigError(f"provider {member.name}: local step refused: {result.refused}")

    if study.validation is None or member.validation_encoded is None:
        train(spec.fine_tune_epochs, 0)
        return get_weights(site.model), spec.fine_tune_epochs

    def f1() -> float:
        return tagging_scores(site.model, member, labels, split="validation")["f1"]

    best, best_f1, best_epochs = get_weights(site.model), f1(), 0
    for done in range(spec.fine_tune_epochs):
        train(1, done)
        score = f1()
        if score > best_f1:
            best, best_f1, best_epochs = get_weights(site.model), score, done + 1
    set_weights(site.model, best)
    return best, best_epochs


def run_pipeline(
    study: TextStudy,
    members: Sequence[Corpus],
    tokenizer: WordTokenizer,
    labels: Sequence[str],
    *,
    local_step: bool,
    ledgers: Mapping[str, tuple[Ledger, bytes]] | None = None,
    on_finetune_round: Callable[[int, Mapping[str, np.ndarray]], None] | None = None,
) -> PipelineResult:
    """MLM pretraining (``pretrain.rounds``, 0 to skip) -> fine-tuning for tagging ->
    optionally the local step, all federated over ``members`` (one member: that group
    alone). ``on_finetune_round(r, weights)`` sees the global weights after each
    fine-tuning round ``r`` (1-based)."""
    spec, seed = study.model, study.study.seed
    names = [m.name for m in members]
    seconds: dict[str, list[float]] = {"pretrain": [], "finetune": []}
    privacy = study.privacy if ledgers is not None else None

    def engine_run(
        sites: Mapping[str, TextSite],
        init: Mapping[str, np.ndarray],
        phase: PhaseSection,
        offset: int,
        key: str,
        on_round: Callable[[RoundResult], None] | None = None,
        on_weights: Callable[[int, Mapping[str, np.ndarray]], None] | None = None,
    ) -> dict[str, np.ndarray]:
        coordinator = Coordinator(init, study.strategy, names, phase.config(), seed)
        coordinator.rounds_done = offset  # ledger rounds number on across the phases

        def record(result: RoundResult) -> None:
            seconds[key].append(result.seconds)
            if on_round is not None:
                on_round(result)
            if on_weights is not None:
                on_weights(result.round - offset, coordinator.weights)

        LocalEngine().run(
            coordinator,
            sites,
            offset + phase.rounds,
            on_round=record,
            evaluate_every=0,
            splits=("val",) if key == "pretrain" else (),
        )
        return dict(coordinator.weights)

    mlm_loss: list[float] = []
    encoder: dict[str, np.ndarray] | None = None
    if study.pretrain.rounds > 0:

        def mlm_model() -> torch.nn.Module:
            return build_model(
                spec,
                "mlm",
                vocab_size=tokenizer.vocab_size,
                pad_id=tokenizer.pad_id,
                seed=seed,
                device=study.study.device,
            )

        sites = {
            m.name: TextSite(
                i,
                _site_data(m.name, m.mlm, m.mlm),
                mlm_model,
                seed,
                task="mlm",
                tokenizer=tokenizer,
                dp=_dp(len(m.mlm), study.pretrain, privacy, ledgers[m.name])
                if privacy and ledgers
                else None,
                adamw=_adamw(study.pretrain, len(m.mlm)),
                round_steps=study.pretrain.round_steps(len(m.mlm)),
                keep_moments=study.pretrain.keep_moments,
            )
            for i, m in enumerate(members)
        }
        start = get_weights(next(iter(sites.values())).model)

        def losses(result: RoundResult) -> None:
            evals = [e for e in result.evaluations]
            if evals:
                total = sum(e.num_samples for e in evals)
                mlm_loss.append(sum(e.metrics["mlm_loss"] * e.num_samples for e in evals) / total)

        encoder = engine_run(sites, start, study.pretrain, 0, "pretrain", losses)

    def tagger() -> torch.nn.Module:
        return build_tagger(spec, tokenizer, labels, seed=seed, device=study.study.device)

    offset = study.pretrain.rounds
    sites = {}
    for i, m in enumerate(members):
        assert m.tagging is not None
        sites[m.name] = TextSite(
            i,
            _site_data(m.name, m.tagging.ids, m.tagging.labels),
            tagger,
            seed,
            task="tagging",
            tokenizer=tokenizer,
            dp=_dp(len(m.tagging), study.finetune, privacy, ledgers[m.name])
            if privacy and ledgers
            else None,
            adamw=_adamw(study.finetune, len(m.tagging)),
            round_steps=study.finetune.round_steps(len(m.tagging)),
            keep_moments=study.finetune.keep_moments,
            first_round=offset + 1,
        )
    first = next(iter(sites.values())).model
    if encoder is not None:
        set_weights(first, shared_weights(encoder, first))
    weights = engine_run(
        sites,
        get_weights(first),
        study.finetune,
        offset,
        "finetune",
        on_weights=on_finetune_round,
    )
    personalized: dict[str, dict[str, np.ndarray]] = {}
    local_epochs: dict[str, int] = {}
    if local_step and study.local_step.enabled:
        round_ = offset + study.finetune.rounds + 1
        for member in members:
            site = sites[member.name]
            set_weights(site.model, weights)
            personalized[member.name], local_epochs[member.name] = _local_step(
                study, site, member, labels, round_
            )
    return PipelineResult(weights, personalized, seconds, mlm_loss, local_epochs)


# ----------------------------------------------------------------------------- study


@dataclass
class TextStudyResult:
    """Entity-level test scores per setting and provider, and what the run cost."""

    scores: dict[str, dict[str, dict[str, float]]]
    """setting -> provider -> scores (``f1``, ``precision``, ``recall``, ``f1/TYPE`` ...)."""
    labels: tuple[str, ...]
    round_seconds: dict[str, dict[str, list[float]]]
    epsilon: dict[str, float]
    """Each provider's epsilon spent (federated pipeline, DP only)."""
    mlm_loss: list[float]
    seconds: float
    local_epochs: dict[str, dict[str, int]] = field(default_factory=dict)
    """setting -> provider -> the local step's epochs (chosen on validation with
    ``[validation]``)."""

    def mean_f1(self, setting: str) -> float:
        rows = self.scores[setting]
        return float(np.mean([r["f1"] for r in rows.values()]))

    def to_json(self) -> dict[str, Any]:
        return {
            "labels": list(self.labels),
            "scores": self.scores,
            "mean_f1": {s: self.mean_f1(s) for s in self.scores},
            "round_seconds": self.round_seconds,
            "epsilon": self.epsilon,
            "mlm_loss": self.mlm_loss,
            "seconds": self.seconds,
            "local_epochs": self.local_epochs,
        }


def build_tokenizer(study: TextStudy) -> WordTokenizer:
    if study.tokenizer.source is not None:
        return PretrainedTokenizer(study.tokenizer.source)
    if study.tokenizer.public:
        sentences = read_corpus(study.tokenizer.public, CorpusSection(train=study.tokenizer.public))
    else:
        assert study.public is not None
        sentences = read_corpus(study.public.train, study.public)
    return train_public_tokenizer(
        (" ".join(s.words) for s in sentences), study.tokenizer.vocab_size
    )


def load_corpora(study: TextStudy) -> tuple[list[Corpus], Corpus | None]:
    """The providers' corpora (each with its validation split under ``[validation]``,
    drawn from the study seed and the provider's position) and the public one."""

    def one(name: str, section: CorpusSection) -> Corpus:
        train = read_corpus(section.train, section)[: section.max_sentences]
        test = read_corpus(section.test, section) if section.test else []
        return Corpus(name, train, test)

    providers = [one(n, s) for n, s in study.providers.items()]
    if study.validation is not None:
        for index, corpus in enumerate(providers):
            corpus.train, corpus.validation = hold_out(
                corpus.train,
                study.validation.fraction,
                derive_seed(study.study.seed, index, 11),
                f"providers.{corpus.name}",
            )
    public = one("public", study.public) if study.public is not None else None
    return providers, public


@dataclass
class Prepared:
    """A study's corpora encoded with its tokenizer and label scheme."""

    providers: list[Corpus]
    public: Corpus | None
    labels: tuple[str, ...]
    tokenizer: WordTokenizer


def prepare(study: TextStudy) -> Prepared:
    providers, public = load_corpora(study)
    types = entity_types(s for p in providers for s in (*p.train, *p.test))
    if not types:
        raise DataError("the providers' corpora have no entity annotation (every tag is O)")
    labels = bio_labels(types)
    tokenizer = build_tokenizer(study)
    for corpus in (*providers, *([public] if public is not None else [])):
        _encode(corpus, tokenizer, labels, study.model)
    return Prepared(providers, public, labels, tokenizer)


@dataclass
class SettingResult:
    scores: dict[str, dict[str, dict[str, float]]]
    """setting -> provider -> scores."""
    round_seconds: dict[str, list[float]]
    mlm_loss: list[float] = field(default_factory=list)
    models: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """``federated`` and ``federated+local/<provider>``: the trained weights."""
    local_epochs: dict[str, dict[str, int]] = field(default_factory=dict)
    """setting (``federated+local``, ``local``) -> provider -> local-step epochs."""


def settings_of(study: TextStudy) -> list[str]:
    """``federated`` (with ``federated+local``), then ``local:<provider>`` for each
    provider, ``central_public`` and ``pooled`` as the study asks."""
    out = ["federated"]
    if "local" in study.baselines:
        out += [f"local:{name}" for name in study.providers]
    out += [s for s in ("central_public", "pooled") if s in study.baselines]
    return out


def run_setting(
    study: TextStudy,
    data: Prepared,
    setting: str,
    ledgers: Mapping[str, tuple[Ledger, bytes]] | None = None,
    *,
    on_scores: Callable[[int, dict[str, dict[str, float]]], None] | None = None,
    score_every: int = 0,
) -> SettingResult:
    """Train one setting (see :func:`settings_of`) and score it on the providers' tests.

    ``score_every = k > 0``: also score the global model of the fine-tuning phase after
    every ``k``-th round and the last (the learning curve; the round times exclude it) and
    pass ``(round, {provider: scores})`` to ``on_scores``."""
    model = build_tagger(
        study.model, data.tokenizer, data.labels, seed=study.study.seed, device=study.study.device
    )

    def score(weights: Mapping[str, np.ndarray], corpus: Corpus) -> dict[str, float]:
        set_weights(model, weights)
        return tagging_scores(model, corpus, data.labels)

    def curve(
        targets: Sequence[Corpus],
    ) -> Callable[[int, Mapping[str, np.ndarray]], None] | None:
        if on_scores is None or score_every <= 0:
            return None

        def scored(r: int, weights: Mapping[str, np.ndarray]) -> None:
            if r % score_every == 0 or r == study.finetune.rounds:
                on_scores(r, {p.name: score(weights, p) for p in targets})

        return scored

    providers, labels, tokenizer = data.providers, data.labels, data.tokenizer
    if setting == "federated":
        fed = run_pipeline(
            study,
            providers,
            tokenizer,
            labels,
            local_step=True,
            ledgers=ledgers,
            on_finetune_round=curve(providers),
        )
        scores = {"federated": {p.name: score(fed.weights, p) for p in providers}}
        if fed.personalized:
            scores["federated+local"] = {
                p.name: score(fed.personalized[p.name], p) for p in providers
            }
        models = {"federated": fed.weights}
        models.update({f"federated+local/{n}": w for n, w in fed.personalized.items()})
        epochs = {"federated+local": fed.local_epochs} if fed.local_epochs else {}
        return SettingResult(scores, fed.round_seconds, fed.mlm_loss, models, epochs)
    if setting.startswith("local:"):
        p = next((c for c in providers if c.name == setting[6:]), None)
        if p is None:
            raise ConfigError(f"setting {setting!r}: no such provider")
        own = {p.name: ledgers[p.name]} if ledgers else None
        alone = run_pipeline(
            study,
            [p],
            tokenizer,
            labels,
            local_step=True,
            ledgers=own,
            on_finetune_round=curve([p]),
        )
        final = alone.personalized.get(p.name, alone.weights)
        return SettingResult(
            {"local": {p.name: score(final, p)}},
            alone.round_seconds,
            local_epochs={"local": alone.local_epochs} if alone.local_epochs else {},
        )
    if setting == "central_public":
        if data.public is None:
            raise ConfigError("central_public needs a [public] corpus")
        central = run_pipeline(
            study,
            [data.public],
            tokenizer,
            labels,
            local_step=False,
            on_finetune_round=curve(providers),
        )
        scores = {"central_public": {p.name: score(central.weights, p) for p in providers}}
        return SettingResult(scores, central.round_seconds)
    if setting == "pooled":
        pooled = run_pipeline(
            pooled_study(study, len(providers)),
            [_pool(providers)],
            tokenizer,
            labels,
            local_step=False,
            on_finetune_round=curve(providers),
        )
        return SettingResult(
            {"pooled": {p.name: score(pooled.weights, p) for p in providers}},
            pooled.round_seconds,
        )
    raise ConfigError(f"unknown setting {setting!r}; expected one of {settings_of(study)}")


def run_text_study(study: TextStudy, out_dir: Path | None = None) -> TextStudyResult:
    """The pipeline and the requested baselines; with ``out_dir``, ``results.json`` (and
    the providers' ledgers under ``ledgers/``, the local-only baselines' under
    ``baselines/ledgers/``) are written there."""
    started = time.perf_counter()
    torch.set_num_threads(study.study.threads)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    data = prepare(study)
    names = [p.name for p in data.providers]
    ledgers = baseline_ledgers = None
    if study.privacy is not None:
        if out_dir is None:
            raise ConfigError("privacy: a DP study needs an output directory for its ledgers")
        ledgers = open_ledgers(names, study.privacy, out_dir / "ledgers")
        baseline_ledgers = open_ledgers(names, study.privacy, out_dir / "baselines" / "ledgers")
    scores: dict[str, dict[str, dict[str, float]]] = {}
    times: dict[str, dict[str, list[float]]] = {}
    mlm_loss: list[float] = []
    local_epochs: dict[str, dict[str, int]] = {}
    try:
        for setting in settings_of(study):
            owned = ledgers if setting == "federated" else baseline_ledgers
            result = run_setting(study, data, setting, owned)
            for name, rows in result.scores.items():
                scores.setdefault(name, {}).update(rows)
            times[setting] = result.round_seconds
            mlm_loss += result.mlm_loss
            for name, chosen in result.local_epochs.items():
                local_epochs.setdefault(name, {}).update(chosen)
            if study.study.save_model and out_dir is not None:
                save_models(study, data, result.models, out_dir / "models")
        epsilon = {n: float(led.epsilon_spent()) for n, (led, _) in (ledgers or {}).items()}
    finally:
        for pair in (*(ledgers or {}).values(), *(baseline_ledgers or {}).values()):
            pair[0].close()
    out = TextStudyResult(
        scores, data.labels, times, epsilon, mlm_loss, time.perf_counter() - started, local_epochs
    )
    if out_dir is not None:
        atomic_write_json(out_dir / "results.json", out.to_json())
    return out


def save_models(
    study: TextStudy,
    data: Prepared,
    models: Mapping[str, Mapping[str, np.ndarray]],
    directory: Path,
) -> None:
    """Each model as a tagger directory under ``directory`` (``federated``,
    ``federated+local/<provider>``), with the study's providers and label maps in the
    manifest."""
    extra = {
        "study": study.study.name,
        "providers": {n: {"label_map": c.label_map} for n, c in study.providers.items()},
    }
    for name, weights in models.items():
        model = build_tagger(study.model, data.tokenizer, data.labels, seed=study.study.seed)
        set_weights(model, weights)
        Tagger(model, data.tokenizer, data.labels, study.model).save(directory / name, extra)


def pooled_study(study: TextStudy, providers: int) -> TextStudy:
    """The study as the pooled baseline trains it: as many optimizer steps per round as
    the whole federation takes.

    A federated round with ``local_steps = s`` costs ``s`` steps at each of the ``n``
    providers, ``n * s`` batches in all; the pooled baseline holds every provider's rows
    at one site, so its round takes ``n * s`` steps (and its AdamW schedule counts them).
    Without this it would see a ``1/n`` share of the federation's batches and be
    undertrained (a phase counted in ``local_epochs`` needs nothing: an epoch over the
    pooled rows is already the providers' epochs together)."""
    update = {}
    for phase in ("pretrain", "finetune"):
        section: PhaseSection = getattr(study, phase)
        if section.local_steps is not None:
            update[phase] = section.model_copy(
                update={"local_steps": section.local_steps * providers}
            )
    return study.model_copy(update=update)


def _pool(providers: Sequence[Corpus]) -> Corpus:
    """All providers' training rows in one place (the pooled baseline)."""
    tagging = [p.tagging for p in providers if p.tagging is not None]
    pooled = Corpus("pooled", [s for p in providers for s in p.train], [])
    pooled.mlm = np.concatenate([p.mlm for p in providers])
    pooled.tagging = Encoded(
        np.concatenate([t.ids for t in tagging]),
        np.concatenate([t.labels for t in tagging]),
        tuple(w for t in tagging for w in t.words),
    )
    return pooled
