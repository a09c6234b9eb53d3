"""Import ``mbi`` (private-pgm 2.x, on JAX) once, configured, or explain how to install it.

JAX's persistent compilation cache is switched off before ``mbi`` is imported: mbi compiles
many small programs and its own import warns that the cache is counterproductive. mbi also
warns that JAX runs in float32; that matters for N > 100,000 rows (its message), far above
the clinical tables cloned here, and float64 would slow every compiled step, so the warning
is silenced deliberately.

Most of a clone's CPU time is XLA compiling mbi's estimation program for each new set of
cliques (AIM compiles one per round), so unless ``XLA_FLAGS`` is already set, XLA's backend
optimisation is turned down (``--xla_backend_optimization_level=0
--xla_llvm_disable_expensive_passes=true``): on the eICU domain (39 one-way and 8 two-way
measurements) one estimation took 9.3-9.8 s of CPU instead of 12.8-13.2 s at 200
iterations and 10.3 s instead of 12.4 s at 3,000, with the same result (only the compiled
code's speed changes, not what it computes). The flags act when JAX's CPU backend starts,
so they must be set before anything runs a JAX computation.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

from medsilo.errors import ConfigError


def load() -> ModuleType:
    """The ``mbi`` module; :class:`ConfigError` if the ``clone`` extra is not installed."""
    os.environ.setdefault("XLA_FLAGS", _FAST_COMPILE)
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


def release_compiled() -> None:
    """Drop every program JAX has compiled (``jax.clear_caches``). XLA's CPU backend maps
    each compiled program's code and data into its own memory regions (about 3 per
    program), and AIM compiles thousands of them: an eICU clone at epsilon 4 reached
    Linux's default limit of 65,530 mappings per process (``vm.max_map_count``) and died
    with "LLVM compilation error: Cannot allocate memory" with 19 GiB free. AIM calls this
    after every round, whose clique set the next round's programs no longer match."""
    import jax

    jax.clear_caches()  # type: ignore[no-untyped-call]


_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
_MISSING = "cloning needs the optional 'clone' extra (mbi, JAX): pip install 'medsilo[clone]'"
