"""A study across processes on Flower: the coordinator's ServerApp and the hospital's Site.

* :func:`coordinate` runs inside Flower's ``ServerApp`` (``server_app``, started by the
  SuperLink for a run submitted by ``medsilo coordinator start``): it waits for the
  study's sites, builds the :class:`~medsilo.fed.coordinator.Coordinator` from the study
  file and the sites' hellos (input shape and class count only), and drives it with
  :class:`~medsilo.engines.flower.FlowerEngine`, checkpointing every round into the run
  directory; started again on the same run directory it resumes after the last
  checkpoint.
* :func:`build_site` runs at the hospital: the study's text comes from the coordinator,
  the data, the budget and the ledger from the site's own ``SITE.toml``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from flwr.serverapp import ServerApp

from medsilo.engines import flower
from medsilo.engines.flower import FlowerEngine, Hello, HostedSite, SiteService, Timeouts
from medsilo.engines.local import RoundResult
from medsilo.errors import ConfigError, RunDirError
from medsilo.fed.coordinator import Coordinator
from medsilo.fed.lottery import LotterySpec
from medsilo.fed.site import derive_seed
from medsilo.fed.training import get_weights
from medsilo.report.html import write_report
from medsilo.report.rundir import (
    BASELINES_FILE,
    MODEL_FILE,
    RESULTS_FILE,
    RunDirectory,
    atomic_write_bytes,
    atomic_write_json,
    save_arrays,
)
from medsilo.study import run
from medsilo.study.config import StudyConfig, load_study, parse_study
from medsilo.study.privacy import BudgetsSection, PrivacyPlan, open_site_privacy
from medsilo.study.site_config import SiteConfig, load_site
from medsilo.tasks.models import build_model, normalization_keys


def check_deployable(config: StudyConfig, source: str) -> list[str]:
    """The study's expected sites; ConfigError for what the flower engine cannot run."""
    if not config.engine.sites:
        raise ConfigError(
            f"{source}: engine.sites: list the sites expected to connect, in the study's "
            'site order (e.g. sites = ["cleveland", "hungarian", "va"])'
        )
    check_flower_supported(config, source)
    return list(config.engine.sites)


def check_flower_supported(config: StudyConfig, source: str) -> None:
    """ConfigError for what the flower engines (deployed or simulated) cannot run."""
    if config.privacy.enabled and config.privacy.mode == "central":
        raise ConfigError(
            f"{source}: privacy.mode: 'central' needs the coordinator to hold the "
            "sites' plan and a shared secret; use 'local' (with secure aggregation) on "
            "the flower engine"
        )
    if config.personalization.enabled:
        raise ConfigError(
            f"{source}: personalization.fine_tune_epochs: final fine-tuning is not "
            "carried by the flower engine yet; set it to 0"
        )


def make_coordinator(
    config: StudyConfig, sites: list[str], input_shape: tuple[int, ...], num_classes: int
) -> Coordinator:
    """The study's Coordinator, built as :func:`medsilo.study.run.build_federation` does
    but from the model's input shape and class count instead of the data."""
    seed = config.study.seed
    template = build_model(config.model, input_shape, num_classes, derive_seed(seed, 5))
    fedltn = config.strategy.name == "fedltn"
    lottery = config.lottery or LotterySpec()
    local_norm = config.strategy.fedbn or (fedltn and lottery.local_normalization)
    local_keys = normalization_keys(template) if local_norm else frozenset()
    shared = {k: v for k, v in get_weights(template).items() if k not in local_keys}
    return Coordinator(
        shared,
        config.strategy,
        sites,
        config.train_config(),
        seed,
        secagg=config.secure_aggregation,
        lottery=lottery if fedltn else None,
    )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """The coordinator's nested state as ``a/b/c`` -> array (a checkpoint's layout)."""
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = np.asarray(value)
    return out


def _unflatten(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {"server_state": {}}
    for key, value in arrays.items():
        *path, leaf = key.split("/")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _privacy_meta(config: StudyConfig, hellos: dict[str, Hello]) -> dict[str, Any]:
    """run.json's privacy summary from what the sites told (their ledgers stay there;
    ``flower-sim``: where the simulated sites keep them, as the local engine does)."""
    ledgers = config.budgets.ledger_dir
    told = {name: h.privacy for name, h in hellos.items() if h.privacy}
    if not config.privacy.enabled or not told:
        return {"mode": "none"}
    first = next(iter(told.values()))
    return {
        **{k: first[k] for k in ("mode", "unit", "clip", "delta", "accountant")},
        "sites": {name: dict(p["plan"]) for name, p in told.items()},
        **(
            {"ledger_dir": None if ledgers is None else str(ledgers)}
            if config.engine.name == "flower-sim"  # simulated sites: the ledgers are here
            else {"ledgers": "held by each site (SITE.toml state_dir), never sent"}
        ),
    }


def _open_run(
    out: Path,
    text: str,
    config: StudyConfig,
    hellos: dict[str, Hello],
    extra: dict[str, Any] | None = None,
) -> RunDirectory:
    if (out / "run.json").exists():
        run_dir = RunDirectory.open(out)
        if run_dir.study_text != text:
            raise RunDirError(
                f"{out}: this run directory holds another study; a restarted coordinator "
                "resumes only the same study file (start a new run directory instead)"
            )
        return run_dir
    meta = {
        "study": config.study.name,
        "seed": config.study.seed,
        "rounds": config.study.rounds,
        "sites": list(hellos),
        "engine": config.engine.name,
        "warnings": [],
        "privacy": _privacy_meta(config, hellos),
        **(extra or {}),
    }
    return RunDirectory.create(out, text, meta)


def _alive_at_checkpoint(out: Path, text: str) -> list[str] | None:
    """The sites that sent an update in the last checkpointed round of a run to resume
    (None: nothing to resume). A restarted coordinator waits for these, not for a site
    that was already gone."""
    if not (out / "run.json").exists():
        return None
    run_dir = RunDirectory.open(out)
    done = int(run_dir.meta.get("rounds_completed", 0))
    if run_dir.study_text != text or run_dir.meta.get("status") == "completed" or done == 0:
        return None
    return sorted(
        {
            str(r["site"])
            for r in run_dir.records()
            if r.get("kind") == "train" and int(r.get("round", 0)) == done
        }
    )


def coordinate(grid: Any, study: Path, out: Path, poll: float = 0.025) -> RunDirectory:
    """The ServerApp's work: run (or resume) ``study`` into the run directory ``out``."""
    config, text = load_study(study)
    sites = check_deployable(config, str(study))
    return coordinate_config(grid, config, text, sites, out, poll)


def coordinate_config(
    grid: Any,
    config: StudyConfig,
    text: str,
    sites: list[str],
    out: Path,
    poll: float = 0.025,
    meta: dict[str, Any] | None = None,
) -> RunDirectory:
    """:func:`coordinate` for a parsed study whose expected ``sites`` are known
    (``meta``: more entries for a new run directory's run.json)."""
    e = config.engine
    engine = FlowerEngine(
        grid,
        text,
        Timeouts(e.join_timeout, e.train_timeout, e.secagg_timeout, e.evaluate_timeout),
        poll,
    )
    alive = _alive_at_checkpoint(out, text)
    if alive is None:  # a new study: every site
        hellos = engine.connect(sites)
    else:  # resumed: the sites alive when it stopped, going on with min_sites
        hellos = engine.connect(sites, alive, config.strategy.min_sites)
    shapes = {(h.input_shape, h.num_classes) for h in hellos.values()}
    if len(shapes) != 1:
        raise ConfigError(f"the sites disagree on the model's input and classes: {shapes}")
    ((input_shape, num_classes),) = shapes
    coordinator = make_coordinator(config, sites, input_shape, num_classes)
    run_dir = _open_run(out, text, config, {s: hellos[s] for s in sites if s in hellos}, meta)
    if run_dir.meta.get("status") == "completed":
        return run_dir
    arrays = run_dir.load_checkpoint()
    if arrays is not None:
        coordinator.load_state_dict(_unflatten(arrays))
    run_dir.truncate_records(coordinator.rounds_done)
    run_dir.update_meta(flower_events=engine.events)
    wire = [0, 0]

    def on_round(result: RoundResult) -> None:
        records = run._round_records(result)
        records[-1].update(coordinator.traffic)
        down, up = engine.exchange.bytes_down, engine.exchange.bytes_up
        records[-1].update(
            wire_bytes_down=down - wire[0],
            wire_bytes_up=up - wire[1],
            stage_seconds=dict(engine.stage_seconds),
        )
        wire[:] = [down, up]
        run_dir.append_records(records)
        run_dir.save_checkpoint(_flatten(coordinator.state_dict()), result.round)
        run_dir.update_meta(flower_events=engine.events)

    engine.run(
        coordinator,
        config.study.rounds,
        on_round=on_round,
        evaluate_every=config.study.evaluate_every,
        splits=("val", "test") if config.data.val_fraction > 0 else ("test",),
    )
    save_arrays(
        run_dir.path / MODEL_FILE, {f"global/{k}": v for k, v in coordinator.weights.items()}
    )
    atomic_write_json(run_dir.path / BASELINES_FILE, {})  # baselines need pooled data
    run_dir.update_meta(status="completed", flower_events=engine.events)
    result = run.collect(run_dir)
    atomic_write_bytes(run_dir.path / RESULTS_FILE, result.per_site.to_csv(index=False).encode())
    write_report(run_dir)
    return run_dir


def build_site(site: SiteConfig, study_text: str) -> HostedSite:
    """The hospital's Site for the coordinator's study: the data, the budget and the
    ledger (``state_dir/NAME/``) come from ``SITE.toml``, whatever the study says."""
    source = "the coordinator's study"
    config = parse_study(study_text, source=source)
    check_deployable(config, source)
    state = site.site.state_dir
    budgets = BudgetsSection(default=site.budget, ledger_dir=state)
    config = config.model_copy(update={"data": site.data, "budgets": budgets})
    fed = run.build_federation(config)
    name = site.site.name
    if name not in fed.sites:
        raise ConfigError(
            f"site.name: {name!r} is not a site of this study's data "
            f"(sites: {', '.join(fed.sites)})"
        )
    return _host(fed, name, state, state)


def _host(fed: run.Federation, name: str, run_path: Path, ledger_dir: Path | None) -> HostedSite:
    """Site ``name`` of ``fed`` with its own privacy (ledger and secret) opened; what it
    tells the coordinator of its DP plan (not its budget)."""
    hosted = fed.sites[name]
    told: dict[str, Any] | None = None
    if fed.privacy is not None:
        mine = PrivacyPlan(fed.privacy.spec, {name: fed.privacy.sites[name]})
        dp, _ = open_site_privacy(mine, run_path, ledger_dir)
        hosted.dp = dp[name]
        summary = mine.summary()
        plan = dict(summary["sites"][name])  # type: ignore[index]
        told = {
            **{k: summary[k] for k in ("mode", "unit", "clip", "delta", "accountant")},
            "plan": {k: v for k, v in plan.items() if not k.startswith("budget")},
        }
    return HostedSite(hosted, fed.data.input_shape, fed.data.num_classes, told)


# --- flower-sim: the same apps on Flower's simulation runtime -------------------------

_federations: dict[str, run.Federation] = {}


def _simulated_site(config: StudyConfig, out: str, partition: int) -> SiteService:
    """Simulated node ``partition``'s service (in the Ray actor): site number
    ``partition`` of the study's own federation (built once per process), its ledger
    where the ``local`` engine keeps it (``budgets.ledger_dir`` or the run directory)."""
    key = flower.study_id(config.model_dump_json())
    if key not in _federations:
        _federations[key] = run.build_federation(config)
    fed = _federations[key]
    name = list(fed.sites)[partition]
    return SiteService(lambda _text: _host(fed, name, Path(out), config.budgets.ledger_dir))


def simulate_study(
    config: StudyConfig, text: str, out: Path, base_dir: str | None = None, cpus: int = 2
) -> RunDirectory:
    """Run (or resume, on an existing run directory) a study with ``engine.name =
    "flower-sim"``: the flower engine's ServerApp and ClientApps on Flower's simulation
    runtime, one simulated SuperNode per site of the study's data (``engine.sites`` is
    not needed); ``base_dir``: where the study's data paths were resolved from."""
    from medsilo.engines.flower_sim import simulate

    check_flower_supported(config, "the study")
    fed = run.build_federation(config)
    sites = list(fed.sites)
    del fed
    done: list[RunDirectory] = []

    def main(grid: Any) -> None:
        done.append(coordinate_config(grid, config, text, sites, out, meta={"base_dir": base_dir}))

    build = functools.partial(_simulated_site, config, str(out))
    simulate(main, build, flower.study_id(text), len(sites), cpus)
    if not done:
        raise RunDirError(f"{out}: the simulation ended before the study completed")
    return done[0]


server_app = ServerApp()


@server_app.main()
def _serve(grid: Any, context: Any) -> None:
    config = context.run_config
    coordinate(grid, Path(str(config["study"])), Path(str(config["out"])))


_services: dict[str, SiteService] = {}


def site_service(site_file: Path | str) -> SiteService:
    """The SiteService of a SITE.toml (one per file and process: it stays warm)."""
    key = str(Path(site_file).resolve())
    if key not in _services:
        config = load_site(Path(key))
        _services[key] = SiteService(lambda text: build_site(config, text))
    return _services[key]


client_app = flower.client_app(lambda context: site_service(str(context.node_config["site"])))
"""The FAB's ClientApp (Flower's own per-message process); ``node_config["site"]`` is
the SITE.toml path. ``medsilo site start`` serves the same service from a warm process."""
