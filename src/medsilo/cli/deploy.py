"""``medsilo coordinator start STUDY.toml`` and ``medsilo site start SITE.toml``.

The coordinator starts a Flower SuperLink (TLS, SuperNode authentication, no runtime
dependency installation, no telemetry), registers the study's sites' public keys,
submits the study as a Flower run whose ServerApp is :mod:`medsilo.study.deploy`, and
waits for it. A site starts a SuperNode (process isolation, authenticated with its key,
verifying the coordinator against the consortium CA) and serves it with one warm process
that hosts its Site. Ports: the SuperLink serves its Fleet, Control and Runtime APIs on
one port (``--port``, default 9092); a SuperNode's Runtime API listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any

import typer

from medsilo.cli._common import console, handle_errors
from medsilo.errors import ConfigError, MedsiloError

coordinator_app = typer.Typer(help="The coordinator's side of a deployed study.")
site_app = typer.Typer(help="A hospital's side of a deployed study.")

CONNECTION = "medsilo"
APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "medsilo-study"
version = "1.0.0"
description = "A medsilo study (the code is the medsilo package installed here)"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "medsilo"

[tool.flwr.app.components]
serverapp = "medsilo.study.deploy:server_app"
clientapp = "medsilo.study.deploy:client_app"

[tool.flwr.app.config]
study = ""
out = ""
"""


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    """The environment of every Flower process medsilo starts: no dependency install at
    run time (it pulls a CUDA torch), no telemetry, this Python's scripts first."""
    env = dict(os.environ)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise MedsiloError(f"the process listening on {host}:{port} exited ({process.args!r})")
        with suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise MedsiloError(f"nothing listens on {host}:{port} after {timeout:g} s")


def stop(process: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; a process that leads its own
    process group (a test's) is signalled with its whole group."""
    if process.poll() is not None:
        return
    group = os.getpgid(process.pid) == process.pid

    def send(sig: int) -> None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, sig) if group else os.kill(process.pid, sig)

    send(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait()


def _flwr(args: list[str], home: Path, check: bool = True) -> str:
    flwr = str(Path(sys.executable).parent / "flwr")
    done = subprocess.run(
        [flwr, *args], env=flower_env(home), capture_output=True, text=True, timeout=120
    )
    if check and done.returncode != 0:
        raise MedsiloError(f"flwr {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout + done.stderr


@contextmanager
def superlink(
    state: Path, certs: Path | None, host: str, port: int, log: Path
) -> Iterator[subprocess.Popen[Any]]:
    """A SuperLink with TLS and SuperNode authentication (``certs`` None: insecure, for
    tests of the plumbing only), its state in ``state/state.db``; stopped on exit."""
    command = [
        sys.executable,
        "-c",
        "import sys; from medsilo.engines.flower_runtime import run_superlink; "
        "run_superlink(sys.argv[1:])",
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        str(state / "state.db"),
        "--disable-runtime-dependency-installation",
    ]
    if certs is None:
        command.append("--insecure")
    else:
        command += [
            "--ssl-ca-certfile",
            str(certs / "ca.pem"),
            "--ssl-certfile",
            str(certs / "coordinator" / "cert.pem"),
            "--ssl-keyfile",
            str(certs / "coordinator" / "key.pem"),
            "--enable-supernode-auth",
        ]
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            env=flower_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(host, port, 60, process)
        yield process
    finally:
        stop(process)


def write_connection(home: Path, address: str, certs: Path | None) -> None:
    home.mkdir(parents=True, exist_ok=True)
    tls = "insecure = true" if certs is None else f'root-certificates = "{certs / "ca.pem"}"'
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{address}"\n{tls}\n'
    )


class Control:
    """Flower's Control API (the ``flwr`` CLI's client, in this process: each ``flwr``
    command would cost seconds of imports)."""

    def __init__(self, home: Path) -> None:
        os.environ["FLWR_HOME"] = str(home)
        from flwr.cli.flower_config import read_superlink_connection
        from flwr.cli.utils import init_http_client_from_connection

        self.client = init_http_client_from_connection(read_superlink_connection(CONNECTION))

    def register(self, key: Path, name: str) -> str:
        """Register a SuperNode's public key; returns what happened."""
        from flwr.cli.supernode.register import try_load_public_key
        from flwr.proto.control_pb2 import RegisterNodeRequest

        try:
            response = self.client.RegisterNode(
                RegisterNodeRequest(public_key=try_load_public_key(key), name=name)
            )
        except Exception as exc:  # the SuperLink refuses a key it already holds
            if "already" in str(exc).lower() or "412" in str(exc):  # restarted SuperLink
                return f"site {name!r}: key already registered"
            raise MedsiloError(f"registering site {name!r} ({key}) failed: {exc}") from exc
        return f"site {name!r}: registered as node {response.node_id}"

    def stop_unfinished(self) -> list[int]:
        """Stop every run the SuperLink's database still holds as not finished: after a
        coordinator crash its old ServerApp may outlive it and must not drive the study
        beside the resumed one (a stopped run's ServerApp is refused and exits)."""
        from flwr.common.serde import run_from_proto
        from flwr.proto.control_pb2 import ListRunsRequest, StopRunRequest

        stopped = []
        for run_id, proto in self.client.ListRuns(ListRunsRequest()).run_dict.items():
            if run_from_proto(proto).status.status != "finished":
                self.client.StopRun(StopRunRequest(run_id=run_id))
                stopped.append(int(run_id))
        return stopped

    def status(self, run_id: int) -> str:
        """``status:sub_status`` of a run, e.g. ``finished:completed``."""
        from flwr.common.serde import run_from_proto
        from flwr.proto.control_pb2 import ListRunsRequest

        response = self.client.ListRuns(ListRunsRequest(run_id=run_id))
        run = run_from_proto(response.run_dict[run_id])
        return f"{run.status.status}:{run.status.sub_status}"


def register_sites(control: Control, certs: Path, sites: list[str]) -> list[str]:
    """Register each site's public key (``certs/sites/NAME/node.pub``) with the SuperLink."""
    notes = []
    for name in sites:
        key = certs / "sites" / name / "node.pub"
        if not key.is_file():
            raise ConfigError(
                f"{key}: no public key for site {name!r} (the site runs "
                f"'medsilo certs issue site {name}' and sends node.pub)"
            )
        notes.append(control.register(key, name))
    return notes


def submit(home: Path, app_dir: Path, study: Path, out: Path) -> int:
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(APP_PYPROJECT)
    config = f'study="{study.resolve()}" out="{out.resolve()}"'
    said = _flwr(
        ["run", str(app_dir), CONNECTION, "--run-config", config, "--format", "json"], home
    )
    try:
        return int(json.loads(said[said.index("{") :])["run-id"])
    except (ValueError, KeyError) as exc:
        raise MedsiloError(f"flwr run did not return a run id: {said}") from exc


@coordinator_app.command("start")
@handle_errors
def coordinator_start(
    study: Annotated[Path, typer.Argument(help="The study file (engine.name = 'flower').")],
    out: Annotated[Path, typer.Option("--out", help="Run directory (resumed if it exists).")],
    certs: Annotated[Path, typer.Option("--certs", help="Certificate directory.")] = Path("certs"),
    host: Annotated[str, typer.Option(help="Address the SuperLink binds to.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="The SuperLink's port (all its APIs).")] = 9092,
    state: Annotated[
        Path | None, typer.Option(help="SuperLink state (default: OUT.flower/).")
    ] = None,
    insecure: Annotated[
        bool, typer.Option(help="No TLS and no node authentication (one-machine tests).")
    ] = False,
) -> None:
    """Start the SuperLink, register the sites, run the study and wait for it."""
    from medsilo.study.config import load_study
    from medsilo.study.deploy import check_deployable

    config, _ = load_study(study)
    sites = check_deployable(config, str(study))
    study, out, certs = study.resolve(), out.resolve(), certs.resolve()
    state = state or out.with_name(out.name + ".flower")
    state.mkdir(parents=True, exist_ok=True)
    home = state / "flwr-home"
    tls = None if insecure else certs
    if tls is not None and not (tls / "coordinator" / "cert.pem").is_file():
        raise ConfigError(f"{tls}: no coordinator certificate (medsilo certs issue coordinator)")
    connect_host = "127.0.0.1" if host == "0.0.0.0" else host
    write_connection(home, f"{connect_host}:{port}", tls)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with superlink(state, tls, host, port, state / "superlink.log"):
            control = Control(home)
            if tls is not None:
                for note in register_sites(control, tls, sites):
                    console.print(note)
            for old in control.stop_unfinished():
                console.print(f"run {old} (left by a previous coordinator) stopped")
            run_id = submit(home, state / "app", study, out)
            console.print(f"run {run_id} submitted; waiting for sites {sites}")
            status = "pending"
            while not status.startswith("finished"):
                time.sleep(1.0)  # each look is a request the busy SuperLink answers
                status = control.status(run_id)
            _report(home, run_id, status, out)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(*_: object) -> None:
    raise SystemExit(143)  # unwinds the with-blocks: the SuperLink is stopped


def _report(home: Path, run_id: int, status: str, out: Path) -> None:
    console.print(f"run {run_id}: {status}")
    if status != "finished:completed":
        logs = _flwr(["log", str(run_id), CONNECTION, "--show"], home, False)
        console.print(logs[-4000:])
        raise typer.Exit(1)
    console.print(f"results: {out}")


@site_app.command("start")
@handle_errors
def site_start(
    site: Annotated[Path, typer.Argument(help="The site's SITE.toml.")],
    max_retries: Annotated[
        int | None, typer.Option(help="Give up after this many failed connections.")
    ] = None,
) -> None:
    """Start this site's SuperNode and serve it with a warm Site until stopped."""
    from medsilo.engines.flower import serve_site
    from medsilo.study.deploy import client_app, site_service
    from medsilo.study.site_config import load_site

    config = load_site(site)
    link = config.superlink
    command = [
        sys.executable,
        "-c",
        "import sys; from medsilo.engines.flower_runtime import run_supernode; "
        "run_supernode(sys.argv[1:])",
        "--superlink",
        link.address,
        "--isolation",
        "process",
        "--host",
        "127.0.0.1",
        "--port",
        str(link.runtime_port),
        "--node-config",
        f'site="{site.resolve()}"',
    ]
    if max_retries is not None:
        command += ["--max-retries", str(max_retries)]
    if link.insecure:
        command.append("--insecure")
    else:
        assert link.root_certificates is not None  # checked by parse_site
        command += ["--root-certificates", str(link.root_certificates)]
        if link.auth_key is not None:
            command += ["--auth-supernode-private-key", str(link.auth_key)]
    site_service(site)  # built and checked before the SuperNode starts
    with suppress(ImportError):  # warm: DP-SGD's Opacus takes seconds to import
        import opacus  # noqa: F401
    node = subprocess.Popen(command, env=flower_env())
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        wait_for_port("127.0.0.1", link.runtime_port, 60, node)
        console.print(f"site {config.site.name}: SuperNode up, serving {link.address}")
        serve_site(
            f"127.0.0.1:{link.runtime_port}", client_app, stop=lambda: node.poll() is not None
        )
        raise MedsiloError(
            f"site {config.site.name}: the SuperNode exited (code {node.returncode}); "
            "see its log above (an unregistered key is refused by the coordinator)"
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop(node)
