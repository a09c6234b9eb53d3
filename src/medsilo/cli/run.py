"""``medsilo run``, ``medsilo demo`` and ``medsilo report``."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medsilo.cli._common import console, handle_errors
from medsilo.errors import ConfigError
from medsilo.report.html import write_report
from medsilo.report.rundir import REPORT_FILE, RunDirectory
from medsilo.report.summary import privacy_table, setting_means
from medsilo.study.run import RunResult, collect, resume_run, run_study


class _Display:
    """Rich progress: one bar for rounds, one for the sites of the current round."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.rounds: Any = None
        self.sites: Any = None
        self.count = 0

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        p = self.progress
        if event == "start":
            for warning in info["warnings"]:
                console.print(f"[yellow]warning:[/] {escape(warning)}")
            self.count = len(info["sites"])
            self.rounds = p.add_task("rounds", total=info["rounds"], completed=info["done"])
            self.sites = p.add_task(f"round {info['done'] + 1}: sites", total=self.count)
        elif event == "site":
            p.update(self.sites, advance=1, description=f"round {info['round']}: {info['site']}")
        elif event == "round":
            accs = [e.metrics["accuracy"] for e in info["evaluations"] if e.split == "val"]
            extra = f" (mean val accuracy {sum(accs) / len(accs):.3f})" if accs else ""
            p.update(self.rounds, advance=1, description=f"rounds{extra}")
            p.reset(self.sites, total=self.count, description=f"round {info['round'] + 1}: sites")
        elif event == "baseline":
            p.update(self.sites, description=f"baseline {info['setting']}: {info['site']}")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def print_result(result: RunResult, as_json: bool) -> None:
    table = result.per_site
    if as_json:
        payload = {
            "run_dir": str(result.run_dir),
            "per_site": json.loads(table.to_json(orient="records")),
            "mean": json.loads(setting_means(table).to_json(orient="records")),
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    wide = table.pivot_table(index="site", columns="setting", values="accuracy", sort=False)
    out = Table(title="Test accuracy per site")
    out.add_column("site")
    for setting in wide.columns:
        out.add_column(str(setting), justify="right")
    for site, row in wide.iterrows():
        out.add_row(str(site), *(f"{v:.3f}" for v in row))
    means = wide.mean()
    out.add_row("[bold]mean of sites[/]", *(f"[bold]{v:.3f}[/]" for v in means))
    console.print(out)
    console.print("(pooled = all sites' data in one place: a simulation-only reference)")
    privacy = privacy_table(RunDirectory.open(result.run_dir))
    if not privacy.empty:
        ptable = Table(title="Privacy spent per site (from each site's ledger)")
        collusion = "epsilon_collusion" in privacy
        columns = ["site", "mode", "sigma", "epsilon spent"]
        columns += ["if all others collude"] if collusion else []
        for column in (*columns, "budget", "refusals", "ledger"):
            ptable.add_column(column)
        for _, row in privacy.iterrows():
            ptable.add_row(
                str(row["site"]),
                f"{row['mode']} ({row['unit']})",
                f"{row['noise_multiplier']:.3f}",
                f"{row.get('epsilon_spent', float('nan')):.3f}",
                *([f"{row.get('epsilon_collusion', float('nan')):.3f}"] if collusion else []),
                f"{row.get('budget_epsilon', float('nan')):g}",
                str(row["refusals"]),
                str(row["ledger"]),
            )
        console.print(ptable)
    console.print(f"run directory: {result.run_dir}  report: {result.run_dir / REPORT_FILE}")


def default_out(study_name: str) -> Path:
    base = Path("runs") / study_name
    candidate, k = base, 1
    while candidate.exists():
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    return candidate


@handle_errors
def run(
    study: Annotated[Path | None, typer.Argument(help="Study file (TOML).")] = None,
    out: Annotated[Path | None, typer.Option(help="New run directory (default runs/NAME).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this run directory.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Run a study: federated training, then local-only and pooled baselines."""
    if (study is None) == (resume is None):
        raise ConfigError("give either a STUDY file or --resume RUN_DIR (not both, not neither)")
    with _progress() as progress:
        display = None if as_json else _Display(progress)
        if resume is not None:
            result = resume_run(resume, progress=display)
        else:
            assert study is not None
            from medsilo.study.config import load_study

            config, _ = load_study(study)
            result = run_study(study, out or default_out(config.study.name), progress=display)
    print_result(result, as_json)


@handle_errors
def demo(
    out: Annotated[Path | None, typer.Option(help="New run directory.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run the built-in demo: UCI Heart Disease across its 4 real hospitals."""
    source = resources.files("medsilo") / "examples" / "heart.toml"
    with resources.as_file(source) as path, _progress() as progress:
        result = run_study(
            path, out or default_out("heart-demo"), progress=None if as_json else _Display(progress)
        )
    print_result(result, as_json)


@handle_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Rebuild report.html of a run directory and print its results."""
    directory = RunDirectory.open(run_dir)
    write_report(directory)
    print_result(collect(directory), as_json)
