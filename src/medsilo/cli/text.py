"""``medsilo text``: check annotated corpora and run text studies (docs/text.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medsilo.cli._common import console, handle_errors

app = typer.Typer(no_args_is_help=True, help="Clinical text: corpora and text studies.")


@app.command()
@handle_errors
def check(
    paths: Annotated[list[Path], typer.Argument(help="CoNLL/TSV files or brat directories")],
    repair: Annotated[
        bool, typer.Option(help="turn orphan I-X into B-X instead of failing")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Validate corpora (exit 2 with file:line on the first problem) and count them."""
    from medsilo.data.text import document_sentences, entity_types, read_brat_dir, read_conll

    out: list[dict[str, object]] = []
    for path in paths:
        if path.is_dir():
            docs = read_brat_dir(path)
            sentences = [s for d in docs for s in document_sentences(d)]
            repairs = 0
        else:
            corpus = read_conll(path, repair=repair)
            sentences, repairs = list(corpus.sentences), corpus.repairs
        out.append(
            {
                "path": str(path),
                "sentences": len(sentences),
                "tokens": sum(len(s.words) for s in sentences),
                "entities": sum(t.startswith("B-") for s in sentences for t in s.tags),
                "types": list(entity_types(sentences)),
                "repairs": repairs,
            }
        )
    if as_json:
        console.print_json(json.dumps(out))
        return
    for row in out:
        types = row["types"]
        assert isinstance(types, list)
        console.print(
            f"{row['path']}: {row['sentences']} sentences, {row['tokens']} tokens, "
            f"{row['entities']} entities of {len(types)} types"
            + (f", {row['repairs']} tags repaired" if row["repairs"] else ""),
            highlight=False,
        )


@app.command()
@handle_errors
def run(
    study: Annotated[Path, typer.Argument(help="text study file (TOML)")],
    out: Annotated[Path, typer.Option(help="output directory (results.json, ledgers)")],
    as_json: Annotated[bool, typer.Option("--json", help="print results.json")] = False,
) -> None:
    """Federated MLM pretraining -> federated fine-tuning -> local step, and baselines."""
    from medsilo.study.text import load_text_study, run_text_study

    spec = load_text_study(study)
    result = run_text_study(spec, out)
    if as_json:
        console.print_json(json.dumps(result.to_json()))
        return
    for setting in result.scores:
        row = ", ".join(f"{p} {s['f1']:.3f}" for p, s in result.scores[setting].items())
        console.print(f"{setting}: mean F1 {result.mean_f1(setting):.3f} ({row})", highlight=False)
    if spec.validation is not None:
        for setting, chosen in result.local_epochs.items():
            row = ", ".join(f"{p} {e}" for p, e in chosen.items())
            console.print(
                f"{setting}: local-step epochs chosen on validation ({row})", highlight=False
            )
    console.print(f"results: {out / 'results.json'}", highlight=False)
