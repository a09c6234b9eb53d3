"""A whole consortium on one machine (127.0.0.1 only), as real processes: the consortium
CA, the coordinator's certificate, one key pair per site, one SITE.toml per site, then
``medsilo coordinator start`` and ``medsilo site start`` exactly as on separate machines.
Used by the end-to-end tests and ``benchmarks/engines.py``; every process it starts is
stopped by :meth:`Loopback.close` (or leaving the ``with`` block).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from medsilo.cli.certs import init_ca, issue_coordinator, issue_site
from medsilo.cli.deploy import flower_env, stop


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def site_toml(name: str, data: str, link_port: int, runtime_port: int, certs: Path) -> str:
    """A SITE.toml for site ``name`` (``data``: the body of its [data] section)."""
    return (
        f'[site]\nname = "{name}"\nstate_dir = "state"\n\n[data]\n{data}\n\n'
        f'[superlink]\naddress = "127.0.0.1:{link_port}"\n'
        f'root_certificates = "{certs / "ca.pem"}"\n'
        f'auth_key = "{certs / "sites" / name / "node.key"}"\n'
        f"runtime_port = {runtime_port}\n"
    )


class Loopback:
    """``root/certs``, ``root/study.toml``, ``root/sites/NAME/site.toml``, ``root/run``."""

    def __init__(self, root: Path, study: str, sites: Sequence[str], data: str) -> None:
        self.root = root
        self.port = free_port()
        self.certs = root / "certs"
        init_ca(self.certs)
        issue_coordinator(self.certs, ["127.0.0.1"])
        (root / "study.toml").write_text(study)
        self.sites: dict[str, Path] = {}
        for name in sites:
            self.add_site(name, data)
        self.out = root / "run"
        self.processes: dict[str, subprocess.Popen[Any]] = {}

    def add_site(self, name: str, data: str, register: bool = True) -> Path:
        """Issue a key pair and write SITE.toml; ``register = False``: an intruder whose
        key the coordinator never registers (kept outside ``certs/sites``)."""
        certs = self.certs if register else self.root / "rogue-certs"
        issue_site(certs, name)
        if not register:
            (certs / "ca.pem").write_bytes((self.certs / "ca.pem").read_bytes())
        folder = self.root / "sites" / name
        folder.mkdir(parents=True)
        path = folder / "site.toml"
        path.write_text(site_toml(name, data, self.port, free_port(), certs))
        self.sites[name] = path
        return path

    def _start(self, key: str, args: list[str]) -> subprocess.Popen[Any]:
        log = (self.root / f"{key}.log").open("ab")
        command = [sys.executable, "-c", "from medsilo.cli.main import app; app()", *args]
        env = flower_env()
        env["PYTHONUNBUFFERED"] = "1"
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.processes[key] = process
        return process

    def start_coordinator(self) -> subprocess.Popen[Any]:
        return self._start(
            "coordinator",
            [
                "coordinator",
                "start",
                str(self.root / "study.toml"),
                "--out",
                str(self.out),
                "--certs",
                str(self.certs),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
        )

    def start_site(self, name: str, *extra: str) -> subprocess.Popen[Any]:
        return self._start(f"site-{name}", ["site", "start", str(self.sites[name]), *extra])

    def log(self, key: str) -> str:
        path = self.root / f"{key}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait(self, key: str, timeout: float) -> int:
        try:
            return self.processes[key].wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"{key} still running after {timeout:g} s; its log:\n{self.log(key)[-3000:]}"
            ) from None

    def kill(self, key: str) -> None:
        """SIGKILL a process and its children (a crash, not a clean stop)."""
        process = self.processes[key]
        if process.poll() is None:
            os.killpg(process.pid, 9)
            process.wait()

    def close(self) -> None:
        for process in self.processes.values():
            stop(process, grace=3.0)

    def __enter__(self) -> Loopback:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def wait_until(predicate: Any, timeout: float, what: str, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(poll)
