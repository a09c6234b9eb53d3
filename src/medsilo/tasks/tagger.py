"""A trained token classifier saved as one directory, and tagging raw text with it.

Directory layout (format ``medsilo-tagger/1``)::

    manifest.json      format, labels, model spec, tokenizer kind, versions, file hashes
    model/             the transformers encoder + tagging head (save_pretrained:
                       config.json + model.safetensors; no pickle)
    tokenizer/         the public tokenizer (tokenizer.json) or a pretrained one

:meth:`Tagger.save` writes it into a temporary sibling directory and renames it into place
(nothing half-written); :meth:`Tagger.load` checks the manifest and every file's SHA-256
and raises a :class:`~medsilo.errors.DataError` naming the directory and the problem.

Raw text is split into sentences and words exactly as brat corpora are
(:func:`medsilo.data.text.text_words`), tagged with long sentences cut into overlapping
windows (:func:`medsilo.tasks.text.encode_tagging`), and IOB2 tags are turned back into
character spans (:func:`tags_to_spans`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from medsilo.data.text import Sentence, text_words
from medsilo.errors import DataError
from medsilo.tasks.text import (
    Decoding,
    Encoded,
    TextModel,
    TextModelSpec,
    encode_tagging,
    predict_tags,
)
from medsilo.tasks.tokenizer import PretrainedTokenizer, PublicTokenizer, WordTokenizer

FORMAT = "medsilo-tagger/1"


@dataclass(frozen=True)
class EntitySpan:
    """A tagged entity in raw text: ``text == source[start:end]``."""

    start: int
    end: int
    label: str
    text: str


def tags_to_spans(
    text: str, words: Sequence[tuple[int, int]], tags: Sequence[str]
) -> list[EntitySpan]:
    """Character spans of the entities of one sentence: a ``B-X`` and the ``I-X`` after
    it; an ``I-X`` that continues nothing starts an entity (conlleval's reading: for
    de-identification a missed start must not hide the rest of a name).

    >>> text = "Ana Pi, 45"
    >>> tags_to_spans(text, [(0, 3), (4, 6), (6, 7), (8, 10)], ["B-N", "I-N", "O", "I-A"])
    [EntitySpan(start=0, end=6, label='N', text='Ana Pi'), EntitySpan(start=8, end=10, \
label='A', text='45')]
    """
    spans: list[EntitySpan] = []
    current: tuple[int, int, str] | None = None
    for (start, end), tag in zip(words, tags, strict=True):
        if tag.startswith("I-") and current is not None and current[2] == tag[2:]:
            current = (current[0], end, current[2])
            continue
        if current is not None:
            spans.append(
                EntitySpan(current[0], current[1], current[2], text[current[0] : current[1]])
            )
            current = None
        if tag != "O":
            current = (start, end, tag[2:])
    if current is not None:
        spans.append(EntitySpan(current[0], current[1], current[2], text[current[0] : current[1]]))
    return spans


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    import medsilo

    return {
        "medsilo": medsilo.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


@dataclass
class Tagger:
    """A token classifier with its tokenizer and IOB2 label list (index = class id)."""

    model: TextModel
    tokenizer: WordTokenizer
    labels: tuple[str, ...]
    spec: TextModelSpec

    def tag_sentences(
        self, sentences: Sequence[Sequence[str]], decoding: Decoding = "viterbi"
    ) -> list[list[str]]:
        """Predicted IOB2 tag of each word of each sentence (words already split), valid
        IOB2 with the default Viterbi decoding (:func:`medsilo.tasks.text.predict_tags`)."""
        if not sentences:
            return []
        rows = [Sentence(tuple(w), ("O",) * len(w)) for w in sentences]
        return predict_tags(self.model, self.encode(rows), self.labels, decoding)

    def encode(self, sentences: Sequence[Sentence]) -> Encoded:
        """``sentences`` windowed for this tagger (its tokenizer, labels, max_len and
        overlap)."""
        return encode_tagging(
            sentences,
            self.tokenizer,
            self.labels,
            max_len=self.spec.max_len,
            overlap=self.spec.overlap,
        )

    def tag_text(self, text: str) -> list[EntitySpan]:
        """Entities found in raw text, in order, as character spans of ``text``."""
        sentences = text_words(text)
        tags = self.tag_sentences([[text[a:b] for a, b in s] for s in sentences])
        return [
            span for s, t in zip(sentences, tags, strict=True) for span in tags_to_spans(text, s, t)
        ]

    def save(
        self, directory: str | os.PathLike[str], extra: Mapping[str, Any] | None = None
    ) -> Path:
        """Write the directory (see the module docstring); ``extra`` goes into the
        manifest (e.g. the label map and the corpora it was trained on). A directory
        already there is replaced only if it is a saved tagger."""
        target = Path(directory)
        foreign = target.exists() and not (target / "manifest.json").is_file()
        if foreign and (not target.is_dir() or any(target.iterdir())):
            raise DataError(f"{target}: exists and is not a saved tagger; choose a new directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            net: Any = self.model.net
            net.save_pretrained(str(staging / "model"))
            self.tokenizer.save(staging / "tokenizer")
            files = sorted(p for p in staging.rglob("*") if p.is_file())
            manifest = {
                "format": FORMAT,
                "task": "tagging",
                "labels": list(self.labels),
                "spec": self.spec.model_dump(),
                "tokenizer": "public"
                if isinstance(self.tokenizer, PublicTokenizer)
                else "pretrained",
                "versions": _versions(),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "files": {p.relative_to(staging).as_posix(): _sha256(p) for p in files},
                **dict(extra or {}),
            }
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=1), "utf-8")
            if target.exists():
                old = target.with_name(f".{target.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                target.rename(old)
                staging.rename(target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Tagger:
        """Load a saved tagger; a missing, incomplete, altered or foreign directory is a
        :class:`DataError`."""
        folder = Path(directory)
        manifest_path = folder / "manifest.json"
        if not folder.is_dir():
            raise DataError(f"{folder}: no such model directory; give a saved tagger's directory")
        if not manifest_path.is_file():
            raise DataError(
                f"{folder}: no manifest.json, so not a saved medsilo tagger "
                "(save one with Tagger.save or 'medsilo text run' with save_model = true)"
            )
        try:
            manifest = json.loads(manifest_path.read_text("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(f"{manifest_path}: not valid JSON ({error})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            got = manifest.get("format") if isinstance(manifest, dict) else None
            raise DataError(f"{manifest_path}: format {got!r}, expected {FORMAT!r}")
        for name, digest in manifest.get("files", {}).items():
            path = folder / name
            if not path.is_file():
                raise DataError(f"{folder}: {name} is missing; the directory is incomplete")
            if _sha256(path) != digest:
                raise DataError(
                    f"{folder}: {name} does not match its SHA-256 in manifest.json "
                    "(altered or corrupted); save the model again"
                )
        from transformers import AutoModelForTokenClassification

        tokenizer: WordTokenizer = (
            PublicTokenizer.load(folder / "tokenizer")
            if manifest["tokenizer"] == "public"
            else PretrainedTokenizer(str(folder / "tokenizer"))
        )
        net = AutoModelForTokenClassification.from_pretrained(str(folder / "model"))
        labels = tuple(str(label) for label in manifest["labels"])
        if int(net.config.num_labels) != len(labels):
            raise DataError(
                f"{manifest_path}: {len(labels)} labels but the model has "
                f"{net.config.num_labels} outputs"
            )
        model = TextModel(net, tokenizer.pad_id)
        model.eval()
        return cls(model, tokenizer, labels, TextModelSpec.model_validate(manifest["spec"]))


def tagger_from_weights(
    model: TextModel,
    weights: Mapping[str, np.ndarray],
    tokenizer: WordTokenizer,
    labels: Sequence[str],
    spec: TextModelSpec,
) -> Tagger:
    """A :class:`Tagger` of ``model`` with ``weights`` (a ``state_dict`` as arrays, e.g.
    a federated run's global model) loaded into it."""
    import torch

    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    return Tagger(model, tokenizer, tuple(labels), spec)
