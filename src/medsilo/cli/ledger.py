"""``medsilo ledger show|verify``: what a site released, what it spent, and whether the
ledger is intact.

Exit codes: 0 ok; 2 bad input, no ledger, or a corrupt ledger (the message names the row).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import JustifyMethod
from rich.table import Table

from medsilo.cli._common import console, handle_errors
from medsilo.privacy.ledger import Ledger, LedgerEntry

app = typer.Typer(
    help="A site's privacy ledger: every release, the epsilon it spent, and its hash chain.",
    no_args_is_help=True,
)

PathArg = Annotated[
    Path, typer.Argument(help="A site directory (holding ledger.sqlite) or a ledger file.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
AccountantOpt = Annotated[
    str | None,
    typer.Option(
        "--accountant",
        help="rdp | rdp_classic | pld for the epsilon spent (default: the ledger's last).",
    ),
]


def _quiet_accounting_logs() -> None:
    # dp-accounting logs (via absl) each RDP order it drops; not news for a reader here.
    logging.getLogger("absl").setLevel(logging.ERROR)


@app.command()
@handle_errors
def show(path: PathArg, as_json: JsonOpt = False, accountant: AccountantOpt = None) -> None:
    """Show every release (round, mechanism, q, sigma, clip, steps, epsilon after), the
    site's budget and what remains."""
    _quiet_accounting_logs()
    with Ledger.open(path, accountant=accountant) as ledger:
        entries = ledger.entries()
        budget = ledger.budget
        spent = ledger.epsilon_spent()
        # Distributed DP: the same releases against the coordinator and all other sites.
        colluding = (
            ledger.epsilon_spent(view="collusion")
            if any(e.collusion is not None for e in entries)
            else None
        )
        seq, head = ledger.head()
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "path": str(ledger.path),
                        "site": ledger.site,
                        "budget": {"epsilon": budget.epsilon, "delta": budget.delta},
                        "accountant": ledger.accountant,
                        "epsilon_spent": spent,
                        "epsilon_remaining": budget.epsilon - spent,
                        "epsilon_spent_collusion": colluding,
                        "head": {"seq": seq, "hash": head},
                        "entries": [e.to_dict() for e in entries],
                    },
                    indent=2,
                )
            )
            return
        table = Table(
            title=f"Ledger of site {ledger.site}  ({ledger.path})",
            caption="eps: cumulative epsilon after the release (against the coordinator); an "
            "outcome row settles a distributed-DP release with the noise that reached the sum; "
            "hash: the row's chain hash",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
        )
        columns: tuple[tuple[str, JustifyMethod], ...] = (
            ("#", "right"),
            ("round", "right"),
            ("mechanism", "left"),
            ("q", "right"),
            ("sigma", "right"),
            ("clip", "right"),
            ("steps", "right"),
            ("eps", "right"),
            ("bytes", "right"),
            ("sent", "left"),
            ("hash", "left"),
        )
        for column, justify in columns:
            table.add_column(column, justify=justify)
        for entry in entries:
            if entry.kind != "budget":
                table.add_row(*_cells(entry))
        console.print(table)
        console.print(
            f"budget     epsilon {budget.epsilon:g}, delta {budget.delta:g}\n"
            f"spent      {spent:.4g} ({ledger.accountant}), "
            f"remaining {budget.epsilon - spent:.4g}\n"
            + (
                f"colluding  {colluding:.4g} if the coordinator and every other site "
                "collude (this site's own noise shares only)\n"
                if colluding is not None
                else ""
            )
            + f"head       #{seq} {head[:16]}",
            highlight=False,
            markup=False,
        )
        for entry in entries:
            if entry.kind == "budget":
                console.print(
                    f"budget set #{entry.seq} {entry.created_at[:19]}Z: epsilon "
                    f"{entry.budget_epsilon:g}, delta {entry.budget_delta:g} ({entry.note})",
                    highlight=False,
                    markup=False,
                )


@app.command()
@handle_errors
def verify(path: PathArg, as_json: JsonOpt = False) -> None:
    """Check the file, the hash chain, the head and every stored epsilon.

    Exit 0 if the ledger is intact, 2 (with the first bad row named) if not."""
    _quiet_accounting_logs()
    with Ledger.open(path) as ledger:
        report = ledger.verify()
    if as_json:
        payload: dict[str, Any] = {
            "ok": True,
            "path": str(report.path),
            "site": report.site,
            "rows": report.rows,
            "releases": report.releases,
            "head": {"seq": report.head_seq, "hash": report.head_hash},
            "budget": {"epsilon": report.budget.epsilon, "delta": report.budget.delta},
            "accountant": report.accountant,
            "epsilon_spent": report.epsilon_spent,
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    console.print(
        f"ledger intact: {report.path}\n"
        f"site {report.site}: {report.rows} rows, {report.releases} releases, "
        f"head #{report.head_seq} {report.head_hash[:12]}\n"
        f"epsilon spent {report.epsilon_spent:.4g} of {report.budget.epsilon:g} "
        f"(delta {report.budget.delta:g}, {report.accountant})",
        highlight=False,
    )


def _cells(entry: LedgerEntry) -> list[str]:
    if entry.kind == "outcome":  # sigma: the noise that reached the sum, or an abort
        reached = entry.reached
        sigma = "aborted" if reached is None else f"{reached.noise_multiplier:.4g}"
        eps = f"{entry.epsilon_after:.4f}"
        head = [str(entry.seq), str(entry.round), f"→#{entry.refers_to}", "", sigma]
        return [*head, "", "", eps, "", "", entry.hash[:8]]
    return [
        str(entry.seq),
        str(entry.round),
        str(entry.mechanism),
        f"{entry.sample_rate:.4g}",
        f"{entry.noise_multiplier:.4g}",
        "-" if entry.clip is None else f"{entry.clip:g}",
        str(entry.steps),
        f"{entry.epsilon_after:.4f}",
        str(entry.payload_bytes),
        "yes" if entry.sent_at else "no",
        entry.hash[:8],
    ]
