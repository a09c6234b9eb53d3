"""Tracing hook of ``benchmarks/engines_trace.py`` (imported by every Python process the
traced run starts, through ``PYTHONPATH``; does nothing unless ``MEDSILO_TRACE_DIR`` is
set). Each process appends JSON lines to ``MEDSILO_TRACE_DIR/PID.jsonl``: its command
line; every HTTP request it makes with ``httpx`` (path, port, start and end, wall clock);
its CPU time (``time.process_time``) every 0.2 s; and, in the SuperLink, the CPU time of
every request handler Flower runs in its thread pool (``anyio.to_thread.run_sync``)."""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from typing import Any

DIR = os.environ.get("MEDSILO_TRACE_DIR")


def _install(folder: str) -> None:
    lock = threading.Lock()
    out = open(os.path.join(folder, f"{os.getpid()}.jsonl"), "a", buffering=1)  # noqa: SIM115

    def record(**event: Any) -> None:
        with lock:
            out.write(json.dumps(event) + "\n")

    record(ev="start", argv=sys.argv[:6])

    def cpu() -> None:
        while True:
            time.sleep(0.2)
            record(ev="cpu", t=time.time(), cpu=time.process_time())

    threading.Thread(target=cpu, daemon=True).start()

    import httpx

    send = httpx.Client.send

    def traced(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.time()
        try:
            return send(self, request, *args, **kwargs)
        finally:
            record(ev="http", path=request.url.path, port=request.url.port, t0=t0, t1=time.time())

    httpx.Client.send = traced  # type: ignore[method-assign]
    if "--database" not in sys.argv:  # the SuperLink only
        return
    import anyio.to_thread

    run_sync = anyio.to_thread.run_sync

    async def timed_run_sync(func: Any, *args: Any, **kwargs: Any) -> Any:
        inner = func
        while isinstance(inner, functools.partial):
            inner = inner.func
        name = getattr(inner, "__name__", type(inner).__name__)

        def timed(*a: Any) -> Any:
            start = time.thread_time()
            try:
                return func(*a)
            finally:
                record(ev="handler", name=name, cpu=time.thread_time() - start, t=time.time())

        return await run_sync(timed, *args, **kwargs)

    anyio.to_thread.run_sync = timed_run_sync  # type: ignore[assignment]


if DIR:
    _install(DIR)
