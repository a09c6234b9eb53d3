"""Thin typer commands over the Python API; one module per command group.

Exit codes: 0 success, 1 unexpected failure (a bug: please report it), 2 bad input
(study file, data, run directory), 130 interrupted.
"""
