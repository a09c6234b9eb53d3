"""``medsilo audit RUN_DIR``: membership inference and a canary lower bound on epsilon."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medsilo.cli._common import console, handle_errors
from medsilo.privacy.audit import AttackResult
from medsilo.report.html import write_report
from medsilo.report.rundir import RunDirectory
from medsilo.study.audit import AUDIT_FILE, AuditOptions, AuditReport, audit_run


def _tpr(result: AttackResult | None, fpr: float) -> str:
    if result is None:
        return "-"
    mark = "" if result.resolved(fpr) else "*"
    return f"{result.tpr_at_fpr[fpr]:.3f}{mark}"


def _eps(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if math.isfinite(value) else "inf"


def print_report(report: AuditReport, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
        return
    table = Table(title=f"Privacy audit of {report.study}", box=box.SIMPLE_HEAD, padding=(0, 0))
    table.add_column("site", no_wrap=True)
    for name in ("in/out", "AUC", "TPR@1%", "TPR@.1%", "LiRA", "LiRA@.1%", "eps>=", "eps"):
        table.add_column(name, justify="right", no_wrap=True)
    unresolved = False
    for s in report.sites:
        loss, lira, canary = s.loss_attack, s.lira, s.canary
        unresolved |= not loss.resolved(1e-2)
        bound = "-" if canary is None else f"{canary.epsilon_lower_bound:.2f}"
        if canary is not None and not canary.consistent:
            bound = f"[bold red]{bound}(!)[/]"
        table.add_row(
            s.site,
            f"{loss.n_members}/{loss.n_nonmembers}",
            f"{loss.auc:.3f}",
            _tpr(loss, 1e-2),
            _tpr(loss, 1e-3),
            "-" if lira is None else f"{lira.auc:.3f}",
            _tpr(lira, 1e-3),
            bound,
            _eps(s.procedure.accountant_epsilon),
        )
    console.print(table)
    console.print(
        "AUC, TPR@FPR: loss-threshold attack on the released model (members: the site's "
        "training records; non-members: its test records). LiRA, LiRA@.1%: likelihood-ratio "
        f"attack, {report.options.shadow_models} shadow models per site. eps>=: canary "
        "lower bound; eps: the accountant's epsilon of the same training."
    )
    if unresolved:
        console.print("* fewer non-members than 1/FPR: the TPR is measured at FPR 0 only")
    trials = report.options.canary_trials
    provable = next((x.canary.max_provable for x in report.sites if x.canary), None)
    if trials and provable is not None:
        console.print(
            f"eps>=: {trials} canary trials with and {trials} without per site, "
            f"{report.options.confidence:.0%} Clopper-Pearson, threshold chosen on a held-out "
            f"half; a perfect attack would prove at most {provable:.2f} with {trials} trials. "
            "It must not exceed eps (marked (!) if it does)."
        )
    if not report.consistent:
        console.print(
            "[bold red]a lower bound exceeds the accountant's epsilon: the DP training or "
            "its accounting is wrong[/]"
        )
    if report.run_dir is not None:
        console.print(f"written: {report.run_dir / AUDIT_FILE}")


class _Display:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "site":
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(
                f"site {info['index'] + 1}/{info['total']}: {info['site']}", total=None
            )
        elif event == "train" and self.task is not None:
            self.progress.update(
                self.task,
                description=f"{info['site']}: {info['phase']} models",
                completed=info["done"],
                total=info["total"],
            )


@handle_errors
def audit(
    run_dir: Annotated[Path, typer.Argument(help="A completed run directory.")],
    shadow_models: Annotated[
        int,
        typer.Option(min=0, help="LiRA shadow models per site (0: skip LiRA; else at least 4)."),
    ] = 8,
    canary_trials: Annotated[
        int,
        typer.Option(
            min=0,
            help="Canary trials per site: as many models with as without the canary "
            "(0: skip the epsilon lower bound; fewer than 11 can prove nothing). More "
            "trials, stronger bound, longer run.",
        ),
    ] = 32,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the audit's randomness.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the audit as JSON.")] = False,
) -> None:
    """Attack a finished run: membership inference (loss threshold, LiRA) per site, and a
    canary lower bound on epsilon next to the accountant's. Writes RUN_DIR/audit.json."""
    # dp-accounting logs (via absl) each RDP order it drops; not news for a reader here.
    logging.getLogger("absl").setLevel(logging.ERROR)
    options = AuditOptions(shadow_models=shadow_models, canary_trials=canary_trials, seed=seed)
    if as_json:
        report = audit_run(run_dir, options)
    else:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            report = audit_run(run_dir, options, progress=_Display(progress))
    write_report(RunDirectory.open(run_dir))  # report.html gains the audit section
    print_report(report, as_json)
