"""Import ``mbi`` (private-pgm 2.x, on JAX) once, configured, or explain how to install it.

JAX's persistent compilation cache is switched off before ``mbi`` is imported: mbi compiles
many small programs and its own import warns that the cache is counterproductive. mbi also
warns that JAX runs in float32; that matters for N > 100,000 rows (its message), far above
the clinical tables cloned here, and float64 would slow every compiled step, so the warning
is silenced deliberately.
"""

from __future__ import annotations

import warnings
from types import ModuleType

from medsilo.errors import ConfigError


def load() -> ModuleType:
    """The ``mbi`` module; :class:`ConfigError` if the ``clone`` extra is not installed."""
    try:
        import jax
    except ImportError as exc:
        raise ConfigError(_MISSING) from exc
    jax.config.update("jax_enable_compilation_cache", False)  # type: ignore[no-untyped-call]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="JAX is running in float32")
        try:
            import mbi
        except ImportError as exc:
            raise ConfigError(_MISSING) from exc
    module: ModuleType = mbi
    return module


_MISSING = "cloning needs the optional 'clone' extra (mbi, JAX): pip install 'medsilo[clone]'"
