"""Shared CLI plumbing: turning a MedsiloError into a message and exit code 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from medsilo.errors import EXIT_BAD_INPUT, MedsiloError

console = Console()
errors = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Bad input -> ``error: ...`` on stderr and exit 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except MedsiloError as exc:
            for line in str(exc).splitlines():
                # escape: messages name TOML tables ("[data.schema]") that rich would
                # otherwise swallow as markup tags
                errors.print(
                    f"[bold red]error:[/] {escape(line)}",
                    markup=True,
                    highlight=False,
                    soft_wrap=True,
                )
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            errors.print("interrupted; continue with: medsilo run --resume RUN_DIR")
            raise typer.Exit(130) from None

    return wrapper
