"""``medsilo clone DATA ...``, ``medsilo clone evaluate ...``, ``medsilo schema infer ...``."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from medsilo.cli._common import console, errors, handle_errors
from medsilo.errors import ConfigError


class _DefaultToMake(TyperGroup):
    """``medsilo clone DATA ...`` means ``medsilo clone make DATA ...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["make", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_DefaultToMake,
    no_args_is_help=True,
    help="Differentially private clones of tables: medsilo clone DATA --schema S --epsilon E "
    "--delta D --rows N --out CLONE.csv; medsilo clone evaluate REAL CLONE --holdout H ...",
)
schema_app = typer.Typer(no_args_is_help=True, help="Clone schemas.")


def _check_out(out: Path, suffixes: tuple[str, ...]) -> None:
    if out.suffix.lower() not in suffixes:
        raise ConfigError(f"--out {out}: the file name must end with {' or '.join(suffixes)}")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist")


@app.command("make")
@handle_errors
def make(
    data: Annotated[Path, typer.Argument(help="The table to clone (CSV or Parquet).")],
    schema: Annotated[Path, typer.Option(help="Clone schema (TOML/JSON).")],
    epsilon: Annotated[float, typer.Option(help="Privacy budget epsilon of this clone.")],
    out: Annotated[Path, typer.Option(help="Where to write the clone (.csv).")],
    delta: Annotated[float, typer.Option(help="delta (well below 1/rows).")] = 1e-6,
    rows: Annotated[
        int | None, typer.Option(help="Rows to sample (default: the noisy row count).")
    ] = None,
    mechanism: Annotated[str, typer.Option(help="mst (fast) or aim (adaptive).")] = "mst",
    target: Annotated[
        str | None,
        typer.Option(
            help="The column a model will predict: MST measures its pairs, AIM adds its "
            "triples to the workload."
        ),
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="AIM rounds (default 16 x columns).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: fresh).")] = None,
    ledger: Annotated[
        Path | None, typer.Option(help="The site's privacy ledger: the clone is recorded there.")
    ] = None,
    site: Annotated[str | None, typer.Option(help="The ledger's site name (checked).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Clone DATA under (epsilon, delta)-differential privacy with MST or AIM."""
    from medsilo.clone.domain import read_csv
    from medsilo.clone.release import MECHANISMS, make_clone
    from medsilo.clone.schema import load_schema
    from medsilo.privacy.ledger import Ledger
    from medsilo.report.rundir import atomic_write_bytes

    if mechanism not in MECHANISMS:
        raise ConfigError(f"--mechanism must be one of {', '.join(MECHANISMS)}; got {mechanism!r}")
    _check_out(out, (".csv",))
    if site is not None and ledger is None:
        raise ConfigError("--site needs --ledger (the site's ledger file or folder)")
    clone_schema = load_schema(schema)
    frame = read_csv(data)
    book = Ledger.open(ledger, site) if ledger is not None else None
    with (
        book if book is not None else contextlib.nullcontext(),
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=errors,
            transient=as_json,
        ) as bar,
    ):
        task = bar.add_task("cloning", total=1.0)

        def progress(step: str, fraction: float) -> None:
            bar.update(task, completed=fraction, description=escape(step))

        result = make_clone(
            frame,
            clone_schema,
            epsilon=epsilon,
            delta=delta,
            rows=rows,
            mechanism=mechanism,
            seed=seed,
            rounds=rounds,
            source=str(data),
            progress=progress,
            ledger=book,
            target=target,
        )
        bar.update(task, completed=1.0, description="sampled")
    entry = result.ledger_entry
    atomic_write_bytes(out, result.csv_bytes())
    summary: dict[str, Any] = {
        "out": str(out),
        "rows": len(result.frame),
        "columns": list(result.frame.columns),
        "mechanism": result.mechanism,
        "epsilon": result.epsilon,
        "delta": result.delta,
        "rho": result.rho,
        "clipped": {"below": result.clipped.below, "above": result.clipped.above},
        "ledger_seq": entry.seq if entry is not None else None,
        "ledger_epsilon_after": entry.epsilon_after if entry is not None else None,
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    for line in result.clipped.lines():
        errors.print(
            f"[yellow]clipped:[/] {escape(line)} (kept at the bound; widen the schema's "
            "bounds only from public knowledge)"
        )
    console.print(
        f"wrote {escape(str(out))}: {len(result.frame)} rows, {len(result.frame.columns)} "
        f"columns, {result.mechanism.upper()} at epsilon={result.epsilon:g}, "
        f"delta={result.delta:g} (rho={result.rho:.4g})"
    )
    if entry is not None:
        console.print(
            f"ledger {escape(str(ledger))}: release {entry.seq} recorded, epsilon spent "
            f"{entry.epsilon_after:.4g}"
        )


@app.command("federated")
@handle_errors
def federated(
    study: Annotated[Path, typer.Argument(help="The study file (tabular data).")],
    epsilon: Annotated[float, typer.Option(help="Each site's clone epsilon.")],
    out: Annotated[Path, typer.Option(help="New folder: federated run, clones, comparison.")],
    delta: Annotated[float, typer.Option(help="delta of each clone.")] = 1e-6,
    schema: Annotated[
        Path | None, typer.Option(help="Clone schema (default: the built-in dataset's).")
    ] = None,
    mechanism: Annotated[str, typer.Option(help="mst or aim.")] = "mst",
    target: Annotated[
        bool,
        typer.Option(help="Clone for the label: MST's star of label pairs, AIM's label triples."),
    ] = False,
    budget: Annotated[
        float | None,
        typer.Option(help="Sites' budget epsilon (at --delta) if the study sets none."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the means as JSON.")] = False,
) -> None:
    """Each site clones its training rows into its own ledger; a model trained on the pooled
    clones vs FedAvg and local-only on the same test rows (OUT/comparison.md)."""
    from medsilo.clone.release import MECHANISMS
    from medsilo.privacy.ledger import Budget
    from medsilo.study.federated_clone import comparison_markdown, run_federated_clone

    if mechanism not in MECHANISMS:
        raise ConfigError(f"--mechanism must be one of {', '.join(MECHANISMS)}; got {mechanism!r}")
    if out.exists():
        raise ConfigError(f"--out {out}: already exists; give a new folder")
    with console.status("federated training, then cloning at each site") as status:
        result = run_federated_clone(
            study,
            out,
            epsilon=epsilon,
            delta=delta,
            mechanism=mechanism,
            schema=schema,
            budget=Budget(budget, delta) if budget is not None else None,
            target=target,
            progress=lambda event, info: status.update(f"{event} {info.get('site', '')}"),
        )
    for site, outcome in result.sites.items():
        if outcome.refused is not None:
            errors.print(f"[yellow]site {escape(site)} refused:[/] {escape(outcome.refused)}")
    if as_json:
        typer.echo(result.means.to_json(orient="records", indent=2))
        return
    console.print(comparison_markdown(result))
    console.print(f"wrote {escape(str(out))}/comparison.md, comparison.json, clones/")


@app.command("evaluate")
@handle_errors
def evaluate(
    real: Annotated[Path, typer.Argument(help="The real table the clone was made from.")],
    clone: Annotated[Path, typer.Argument(help="The clone.")],
    holdout: Annotated[Path, typer.Option(help="Real rows NOT used to make the clone.")],
    schema: Annotated[Path, typer.Option(help="The clone schema.")],
    label: Annotated[str, typer.Option(help="Categorical column to predict.")],
    out: Annotated[Path, typer.Option(help="The evaluation page (.html); a .json beside it.")],
    positive: Annotated[
        str | None, typer.Option(help="Positive category (default: the last declared).")
    ] = None,
    quasi_identifiers: Annotated[
        str | None,
        typer.Option(help="Comma-separated columns for k-anonymity (default: all but label)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of models and attack splits.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Fidelity, utility (TSTR vs TRTR vs k-anonymity) and privacy of a clone, as HTML."""
    from medsilo.clone.domain import read_csv
    from medsilo.clone.evaluate import baseline_label
    from medsilo.clone.evaluate import evaluate as run_evaluation
    from medsilo.clone.schema import load_schema
    from medsilo.report.clone import render_page
    from medsilo.report.rundir import atomic_write_bytes, atomic_write_json

    _check_out(out, (".html", ".htm"))
    clone_schema = load_schema(schema)
    qis = [q.strip() for q in quasi_identifiers.split(",")] if quasi_identifiers else None
    with console.status("evaluating (models, distances, attack)"):
        result = run_evaluation(
            read_csv(real),
            read_csv(clone),
            read_csv(holdout),
            clone_schema,
            label,
            positive=positive,
            quasi_identifiers=qis,
            seed=seed,
            names=(str(real), str(clone), str(holdout)),
        )
        page = render_page(result, title=f"Evaluation of {clone.name}")
    atomic_write_json(out.with_suffix(".json"), result.to_dict())
    atomic_write_bytes(out, page.encode("utf-8"))
    s, u = result.summary, result.utility
    if as_json:
        typer.echo(json.dumps({"summary": s, "utility": u}, indent=2, default=str))
        return
    console.print(
        f"TSTR AUROC {u['tstr']['auroc']:.3f}, TRTR {u['trtr']['auroc']:.3f}, "
        + ", ".join(
            f"{baseline_label(k)} {v['auroc']:.3f}" for k, v in u.items() if k.startswith("k")
        )
        + f"; attack AUROC {s['attack_auroc']:.3f}; wrote {escape(str(out))}"
    )


@schema_app.command("infer")
@handle_errors
def infer(
    data: Annotated[Path, typer.Argument(help="A table (CSV or Parquet).")],
    out: Annotated[Path, typer.Option(help="Where to write the proposed schema (.toml).")],
) -> None:
    """Propose a clone schema from DATA for a human to review (it leaks: see the warning)."""
    from medsilo.clone.domain import read_csv
    from medsilo.clone.infer import WARNING, infer_schema
    from medsilo.report.rundir import atomic_write_bytes

    _check_out(out, (".toml",))
    proposal = infer_schema(read_csv(data))
    text = "# " + WARNING + "\n" + proposal.to_toml()
    atomic_write_bytes(out, text.encode("utf-8"))
    errors.print(f"[bold red on white] {escape(WARNING)} [/]")
    console.print(f"wrote {escape(str(out))}: {len(proposal.columns)} columns, review it")
