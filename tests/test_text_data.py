"""Text readers: round-trips, validation errors with file:line, windows."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medsilo.data.text import (
    Document,
    Sentence,
    Span,
    best_window,
    bio_labels,
    document_sentences,
    read_brat,
    read_brat_dir,
    read_conll,
    windows,
    write_brat,
    write_conll,
)
from medsilo.errors import DataError

CONLL = """-DOCSTART-\tO

Paciente\tO
Ernesto\tB-NOMBRE
Rivera\tI-NOMBRE
.\tO

Madrid\tB-TERRITORIO

-DOCSTART-\tO

Fecha\tO
03/03/1946\tB-FECHAS
"""


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_conll_reads_documents_and_round_trips(tmp_path: Path) -> None:
    corpus = read_conll(_write(tmp_path, "a.tsv", CONLL))
    assert [s.words for s in corpus.sentences] == [
        ("Paciente", "Ernesto", "Rivera", "."),
        ("Madrid",),
        ("Fecha", "03/03/1946"),
    ]
    assert corpus.sentences[0].tags == ("O", "B-NOMBRE", "I-NOMBRE", "O")
    assert [s.line for s in corpus.sentences] == [3, 8, 12]
    assert corpus.sentences[0].document == corpus.sentences[1].document
    assert corpus.sentences[2].document != corpus.sentences[0].document
    assert corpus.labels == ("FECHAS", "NOMBRE", "TERRITORIO")
    out = tmp_path / "b.tsv"
    write_conll(out, corpus.sentences, docstart=True)
    again = read_conll(out)
    assert [(s.words, s.tags) for s in again.sentences] == [
        (s.words, s.tags) for s in corpus.sentences
    ]
    assert out.read_text(encoding="utf-8") == CONLL + "\n"  # a blank line ends each sentence


def test_conll_space_separated_and_bom(tmp_path: Path) -> None:
    path = _write(tmp_path, "e3c.txt", "\ufeffA O\nfever B-ety\n\n")
    assert read_conll(path).sentences[0].tags == ("O", "B-ety")


@given(
    st.lists(
        st.lists(
            st.tuples(
                st.text(
                    st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")),
                    min_size=1,
                    max_size=5,
                ),
                st.sampled_from(["O", "B-A", "B-B"]),
            ),
            min_size=1,
            max_size=6,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_conll_round_trip_property(rows: list[list[tuple[str, str]]]) -> None:
    import tempfile

    sentences = [Sentence(tuple(w for w, _ in r), tuple(t for _, t in r)) for r in rows]
    sentences = [s for s in sentences if all(w.strip() == w and w != "-DOCSTART-" for w in s.words)]
    if not sentences:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.tsv"
        write_conll(path, sentences)
        back = read_conll(path).sentences
    assert [(s.words, s.tags) for s in back] == [(s.words, s.tags) for s in sentences]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a\tO\nb\tI-X\n", r"a\.tsv:2: 'I-X' does not continue an entity"),
        ("a\tB-X\nb\tI-Y\n", r"a\.tsv:2: 'I-Y' does not continue"),
        ("a\tO\n\nb\tI-X\n", r"a\.tsv:3: 'I-X'"),
        ("a\tO\nb\tE-X\n", r"a\.tsv:2: tag 'E-X' is not IOB2"),
        ("a\tO\nb\n", r"a\.tsv:2: expected 'token<TAB>tag'"),
        ("", r"a\.tsv: no sentences"),
        ("\n\n", r"a\.tsv: no sentences"),
        ("-DOCSTART-\tO\n\n-DOCSTART-\tO\n\na\tO\n", r"a\.tsv:1: empty document"),
        ("-DOCSTART-\tO\n\na\tO\n-DOCSTART-\tO\n", r"a\.tsv:4: empty document"),
    ],
)
def test_conll_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_conll(_write(tmp_path, "a.tsv", text))


def test_conll_repair_and_unknown_labels(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.tsv", "a\tO\nb\tI-X\nc\tI-X\n\nd\tB-Y\n")
    corpus = read_conll(path, repair=True)
    assert corpus.sentences[0].tags == ("O", "B-X", "I-X")
    assert corpus.repairs == 1
    with pytest.raises(DataError, match=r"a\.tsv:5: unknown label 'B-Y'"):
        read_conll(path, labels=bio_labels(["X"]), repair=True)


def test_mixed_encoding_is_located(tmp_path: Path) -> None:
    data = "a\tO\nniño\tO\n".encode() + "año\tO\n".encode("latin-1")
    with pytest.raises(DataError, match=r"a\.tsv:3:2: byte 0xf1 is not valid UTF-8"):
        read_conll(_write(tmp_path, "a.tsv", data))


TEXT = "\ufeffNombre: Ernesto Rivera.\nVive en Madrid. Fecha: 03/03/1946.\n"


def _doc() -> Document:
    def span(i: int, label: str, value: str) -> Span:
        start = TEXT.index(value)
        return Span(f"T{i}", label, start, start + len(value), value)

    return Document(
        "doc1",
        TEXT,
        (
            span(1, "NOMBRE", "Ernesto Rivera"),
            span(2, "TERRITORIO", "Madrid"),
            span(3, "FECHAS", "03/03/1946"),
        ),
    )


def test_brat_round_trip_and_sentences(tmp_path: Path) -> None:
    write_brat(tmp_path, _doc())
    doc = read_brat(tmp_path / "doc1.txt")
    assert doc == _doc()
    assert read_brat_dir(tmp_path) == (doc,)
    sentences = document_sentences(doc)
    assert [s.words for s in sentences] == [
        ("Nombre", ":", "Ernesto", "Rivera", "."),
        ("Vive", "en", "Madrid", "."),
        ("Fecha", ":", "03", "/", "03", "/", "1946", "."),
    ]
    assert sentences[0].tags == ("O", "O", "B-NOMBRE", "I-NOMBRE", "O")
    assert sentences[2].tags[2:7] == ("B-FECHAS",) + ("I-FECHAS",) * 4
    assert [s.line for s in sentences] == [1, 2, 2]


@pytest.mark.parametrize(
    ("ann", "message"),
    [
        ("T1\tX 200 210\tabc\n", r"doc1\.ann:1: offsets 200-210 are off the text"),
        ("#1\tnote\nT1\tX 1 7\tNombrE\n", r"doc1\.ann:2: span text 'NombrE' does not match"),
        ("T1\tX 1 3;4 6\tNo mb\n", r"doc1\.ann:1: discontinuous span"),
        ("T1\tX 1 7\tNombre\nT2\tY 3 9\tmbre: \n", r"doc1\.ann:2: span T2 \(3-9\) overlaps T1"),
        ("T1\tX one 7\tNombre\n", r"doc1\.ann:1: expected 'TYPE START END'"),
    ],
)
def test_brat_errors(tmp_path: Path, ann: str, message: str) -> None:
    _write(tmp_path, "doc1.txt", TEXT)
    _write(tmp_path, "doc1.ann", ann)
    with pytest.raises(DataError, match=message):
        read_brat(tmp_path / "doc1.txt")


def test_brat_empty_document_and_missing_ann(tmp_path: Path) -> None:
    _write(tmp_path, "e.txt", " \n")
    _write(tmp_path, "e.ann", "")
    with pytest.raises(DataError, match=r"e\.txt: empty document"):
        read_brat(tmp_path / "e.txt")
    _write(tmp_path, "f.txt", "text")
    with pytest.raises(DataError, match=r"f\.ann: cannot read"):
        read_brat(tmp_path / "f.txt")
    with pytest.raises(DataError, match=r"no \.txt files"):
        read_brat_dir(tmp_path / "nowhere")


@given(st.integers(0, 60), st.integers(1, 12), st.data())
def test_windows_cover_everything_with_overlap(length: int, size: int, data: st.DataObject) -> None:
    overlap = data.draw(st.integers(0, size - 1))
    spans = windows(length, size, overlap)
    covered = {i for start, end in spans for i in range(start, end)}
    assert covered == set(range(length))
    assert all(0 < end - start <= size or length == 0 for start, end in spans)
    for (_, end_a), (start_b, _) in itertools.pairwise(spans):
        assert end_a - start_b == overlap
    for position in range(length):
        start, end = spans[best_window(position, spans)]
        assert start <= position < end
