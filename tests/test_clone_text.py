"""Text clones, the fast parts: linearization round trips (hypothesis), the strict parser
refusing malformed notes, segments, surrogates, the n-gram leak scanner and its
definition of common phrases, exposure and AUC arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medsilo.clone.text.leaks import NgramIndex, auc, chance_exposure
from medsilo.clone.text.linearize import (
    MalformedNote,
    Scheme,
    linearize,
    mask,
    parse,
    placeholder,
    segments,
)
from medsilo.clone.text.surrogates import Surrogates
from medsilo.data.text import Document, Span
from medsilo.errors import DataError

SCHEME = Scheme(("DATE", "DISEASE", "NAME"), frozenset({"DATE", "NAME"}))
INLINE = Scheme(("DATE", "DISEASE", "NAME"), frozenset())


def doc(parts: list[tuple[str, str | None]], name: str = "d") -> Document:
    text, spans = "", []
    for piece, label in parts:
        if label:
            spans.append(
                Span(f"T{len(spans) + 1}", label, len(text), len(text) + len(piece), piece)
            )
        text += piece
    return Document(name, text, tuple(spans))


NOTE = doc(
    [
        ("Paciente ", None),
        ("Ana Ruiz", "NAME"),
        (" ingresó el ", None),
        ("03/03/1946", "DATE"),
        (" con ", None),
        ("neumonía", "DISEASE"),
        (".\nAlta.", None),
    ]
)

_text = st.text(
    alphabet=st.characters(blacklist_characters="⟦⟧", blacklist_categories=("Cs",)), max_size=12
)


@st.composite
def documents(draw: st.DrawFn) -> Document:
    parts: list[tuple[str, str | None]] = []
    for _ in range(draw(st.integers(0, 5))):
        parts.append((draw(_text), None))
        parts.append((draw(_text.filter(bool)), draw(st.sampled_from(SCHEME.types))))
    parts.append((draw(_text), None))
    return doc(parts)


@settings(max_examples=150, deadline=None)
@given(documents())
def test_linearization_round_trip_is_exact(document: Document) -> None:
    assert parse(linearize(document, INLINE, "es"), INLINE, "d").document == mask(document, ())
    assert mask(document, ()) == Document("d", document.text, document.spans)
    parsed = parse(linearize(document, SCHEME, "es"), SCHEME, "d")
    assert parsed.document == mask(document, SCHEME.phi)
    assert parsed.declared == tuple(sorted({s.label for s in document.spans}))
    for span in parsed.document.spans:
        assert parsed.document.text[span.start : span.end] == span.text


def test_placeholders_hide_phi_and_inline_entities_keep_words() -> None:
    text = linearize(NOTE, SCHEME, "es")
    assert "Ana" not in text and "1946" not in text
    assert placeholder("NAME") in text and "⟦+DISEASE⟧neumonía⟦-DISEASE⟧" in text
    assert text.startswith("⟦lang:es⟧⟦len:S⟧⟦has:DATE⟧⟦has:DISEASE⟧⟦has:NAME⟧⟦text⟧")
    assert text.endswith(".\nAlta.⟦end⟧")


def test_reserved_brackets_in_source_are_refused() -> None:
    with pytest.raises(DataError, match="reserved"):
        linearize(doc([("a ⟦ b", None)]), SCHEME, "es")


GOOD = "⟦lang:es⟧⟦len:S⟧⟦has:DISEASE⟧⟦text⟧Tiene ⟦+DISEASE⟧gripe⟦-DISEASE⟧.⟦end⟧"


@pytest.mark.parametrize(
    "text",
    [
        "⟦lang:es⟧⟦len:S⟧⟦text⟧Tiene ⟦+DISEASE⟧gripe.⟦end⟧",  # entity left open
        "⟦lang:es⟧⟦len:S⟧⟦text⟧Tiene gripe⟦-DISEASE⟧.⟦end⟧",  # closed, never opened
        "⟦lang:es⟧⟦len:S⟧⟦text⟧Tiene ⟦+DISEASE⟧gripe⟦-NAME⟧.⟦end⟧",  # wrong close
        "⟦lang:es⟧⟦len:S⟧⟦text⟧⟦+DISEASE⟧a ⟦+DISEASE⟧b⟦-DISEASE⟧⟦-DISEASE⟧⟦end⟧",  # nested
        "⟦lang:es⟧⟦len:S⟧⟦text⟧Tiene ⟦+DISEASE⟧⟦-DISEASE⟧.⟦end⟧",  # empty entity
        "⟦lang:es⟧⟦len:S⟧⟦text⟧Tiene ⟦@DISEASE⟧.⟦end⟧",  # placeholder of a non-PHI type
        "⟦lang:es⟧⟦len:S⟧⟦text⟧Vino ⟦+NAME⟧Ana⟦-NAME⟧.⟦end⟧",  # PHI written in clear
        "⟦lang:es⟧⟦len:S⟧⟦text⟧Tiene ⟦@ALLERGY⟧.⟦end⟧",  # unknown type
        "⟦lang:es⟧⟦len:S⟧⟦text⟧Tiene ⟦foo⟧.⟦end⟧",  # unknown marker
        "⟦lang:es⟧⟦len:S⟧⟦text⟧Tiene gripe ⟦ y ⟧.⟦end⟧",  # stray brackets
        "⟦lang:es⟧⟦len:S⟧⟦text⟧Tiene gripe.",  # no end (truncated)
        "⟦lang:es⟧⟦len:S⟧⟦text⟧Tiene gripe.⟦end⟧ y más",  # text after the end
        "⟦lang:es⟧⟦len:S⟧⟦text⟧Tiene gripe.⟦end⟧⟦end⟧",  # two ends
        "⟦lang:es⟧⟦len:S⟧Tiene gripe.⟦end⟧",  # prefix without ⟦text⟧
        "⟦lang:xx⟧⟦len:S⟧⟦text⟧Tiene gripe.⟦end⟧",  # unknown language
        "⟦lang:es⟧⟦len:Q⟧⟦text⟧Tiene gripe.⟦end⟧",  # unknown length bucket
        "⟦lang:es⟧⟦len:S⟧⟦has:NAME⟧⟦has:DATE⟧⟦text⟧x.⟦end⟧",  # unsorted type list
    ],
)
def test_malformed_generated_notes_are_rejected(text: str) -> None:
    parse(GOOD, SCHEME)  # the well-formed note parses
    with pytest.raises(MalformedNote):
        parse(text, SCHEME)


def test_segments_cut_at_lines_and_keep_every_span() -> None:
    long = doc(
        [("Uno dos tres.\nCuatro ", None), ("Ana Ruiz Gil", "NAME"), (" cinco seis.\n", None)] * 4
    )
    pieces = segments(long, 6)
    assert len(pieces) > 1
    kept = [(s.label, s.text) for p in pieces for s in p.spans]
    assert kept == [(s.label, s.text) for s in long.spans]
    for p in pieces:
        assert p.text == p.text.strip()
        for s in p.spans:
            assert p.text[s.start : s.end] == s.text


def test_surrogates_fill_placeholders_and_keep_offsets() -> None:
    parsed = parse(linearize(NOTE, SCHEME, "es"), SCHEME, "clone").document
    filled = Surrogates("es", seed=1).fill(parsed)
    assert "⟦" not in filled.text and "neumonía" in filled.text
    assert [s.label for s in filled.spans] == ["NAME", "DATE", "DISEASE"]
    for s in filled.spans:
        assert filled.text[s.start : s.end] == s.text
    again = Surrogates("es", seed=1).fill(parsed)
    assert again == filled


def test_ngram_leaks_outside_common_phrases_are_counted() -> None:
    template = "se remite a consultas externas de medicina interna para seguimiento"
    train = [Document(f"t{i}", f"{template} caso {i}", ()) for i in range(5)]
    train.append(
        Document("rare", "el paciente vive con su hermana en una casa azul junto al río", ())
    )
    index = NgramIndex(train, n=8, common_docs=5)
    clean = Document("c1", f"Hoy {template} y nada más", ())
    leak = Document("c2", "dice que vive con su hermana en una casa azul grande", ())
    report = index.scan([clean, leak])
    assert report.common > 0  # the template occurs in 5 notes: a common phrase
    assert report.leaked == 1 and report.notes_with_leak == 1  # 8 copied words: one 8-gram
    strict = NgramIndex(train, n=8, common_docs=6).scan([clean])
    assert strict.leaked > 0  # in only 5 notes: not common under a threshold of 6
    public = NgramIndex(train, n=8, common_docs=6, public=[template]).scan([clean])
    assert public.leaked == 0  # ... unless public text has it
    assert index.scan([Document("c3", "vive con su hermana en una casa", ())]).checked == 0


def test_exposure_and_auc_arithmetic() -> None:
    assert chance_exposure(1) == 0.0
    assert abs(chance_exposure(10**5) - math.log2(math.e)) < 0.01
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auc(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.5
    assert auc(np.array([1.0]), np.array([2.0])) == 0.0


def test_linear_tagger_learns_templated_phi_and_reads_tags_as_conlleval() -> None:
    from medsilo.clone.text.evaluate import sentences_of, utility
    from medsilo.clone.text.linear_tagger import LinearTagger, conlleval_tags, shape
    from medsilo.tasks.text import TextModelSpec, entity_scores
    from medsilo.tasks.tokenizer import train_public_tokenizer

    assert shape("Ana") == "Xx" and shape("03/03/1946") == "d/d/d"
    assert conlleval_tags(["O", "I-A", "I-A", "I-B"]) == ["O", "B-A", "I-A", "B-B"]
    rng = np.random.default_rng(0)
    names = ["Ana Ruiz", "Luis Gil", "Eva Sanz", "Juan Mora", "Rosa Vidal", "Pedro Sol"]

    def notes(n: int, offset: int) -> list[Document]:
        out = []
        for i in range(n):
            name = names[(i + offset) % len(names)]
            date = f"{rng.integers(1, 28):02d}/{rng.integers(1, 12):02d}/{rng.integers(1930, 2020)}"
            out.append(
                doc(
                    [
                        *(("Paciente ", None), (name, "NAME")),
                        *((" visto el ", None), (date, "DATE"), (".", None)),
                    ],
                    name=f"n{offset}-{i}",
                )
            )
        return out

    train, test = notes(40, 0), notes(10, 3)
    tagger = LinearTagger(seed=0).fit(sentences_of(train))
    truth = sentences_of(test)
    assert entity_scores([s.tags for s in truth], tagger.predict(truth))["f1"] > 0.9
    words = train_public_tokenizer([], vocab_size=261)
    scores = utility(train, train, test, ["NAME", "DATE"], words, TextModelSpec(), steps=0)
    assert scores["real"]["f1"] > 0.9 and scores["clone"]["f1"] == scores["real"]["f1"]
    assert scores["deidentified"]["f1"] < 0.5  # [NAME] teaches nothing about real names
    assert scores["scan"]["found_outside_labels"] == 0


def test_bert_tagger_trains_with_the_shared_adamw_loop() -> None:
    """fit_tagger("bert") trains through tasks.text.train_adamw (warmup + decay over
    ``steps``): it learns templated PHI, reports progress up to 1, and is deterministic."""
    from medsilo.clone.text.evaluate import fit_tagger, sentences_of
    from medsilo.data.text import bio_labels
    from medsilo.tasks.text import TextModelSpec, entity_scores
    from medsilo.tasks.tokenizer import train_public_tokenizer

    names = ["Ana Ruiz", "Luis Gil", "Eva Sanz", "Juan Mora", "Rosa Vidal", "Pedro Sol"]
    notes = [
        doc([("Paciente ", None), (names[i % 6], "NAME"), (" visto hoy.", None)], name=f"n{i}")
        for i in range(60)
    ]
    truth = sentences_of(notes[:12])
    labels = bio_labels(["NAME"])
    words = train_public_tokenizer(["Paciente visto hoy"], vocab_size=300)
    spec = TextModelSpec(layers=1, hidden=32, heads=2, intermediate=64, max_len=24, overlap=4)
    seen: list[float] = []

    def fit() -> list[list[str]]:
        predictor = fit_tagger(
            "bert",
            sentences_of(notes),
            labels,
            words,
            spec,
            steps=60,
            progress=lambda _, f: seen.append(f),
        )
        return predictor(truth)

    first = fit()
    assert entity_scores([s.tags for s in truth], first)["f1"] > 0.9
    assert seen[-1] == 1.0 and seen == sorted(seen) and len(seen) == 20
    assert fit() == first
