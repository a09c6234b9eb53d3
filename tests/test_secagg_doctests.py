"""The checkable examples in the secagg docstrings hold."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import medsilo.secagg

MODULES = sorted(info.name for info in pkgutil.iter_modules(medsilo.secagg.__path__))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"medsilo.secagg.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
