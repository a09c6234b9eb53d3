"""``medsilo datasets list|describe``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from medsilo.cli._common import console, handle_errors
from medsilo.data import builtin

app = typer.Typer(help="Built-in datasets.", no_args_is_help=True)


@app.command("list")
@handle_errors
def list_(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the built-in datasets."""
    items = [builtin.get(n) for n in builtin.names()]
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "name": d.name,
                        "kind": d.kind,
                        "summary": d.summary,
                        "natural_sites": d.natural_sites,
                        "options": list(d.options),
                    }
                    for d in items
                ],
                indent=2,
            )
        )
        return
    table = Table(title="Built-in datasets")
    for column in ("name", "kind", "natural sites", "options", "summary"):
        table.add_column(column)
    for d in items:
        table.add_row(
            d.name,
            d.kind,
            "yes" if d.natural_sites else "no",
            ", ".join(d.options) or "-",
            d.summary,
        )
    console.print(table)


@app.command()
@handle_errors
def describe(name: Annotated[str, typer.Argument(help="Dataset name.")]) -> None:
    """Describe a built-in dataset: sites, label, features, licence, citation."""
    console.print(builtin.get(name).description, markup=False, highlight=False)
