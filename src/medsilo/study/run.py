"""Run a study from Python (a notebook) exactly as ``medsilo run`` does.

>>> from medsilo.study import run  # doctest: +SKIP
>>> result = run.run_study("examples/heart.toml", out="runs/heart")  # doctest: +SKIP
>>> result.per_site  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from medsilo.data import builtin
from medsilo.data.federate import federate
from medsilo.data.tabular import read_table
from medsilo.data.types import FederatedData, RawDataset
from medsilo.engines.local import LocalEngine, RoundResult
from medsilo.errors import ConfigError, RunDirError
from medsilo.fed import baselines
from medsilo.fed.coordinator import Coordinator
from medsilo.fed.lottery import LotteryClient, LotterySpec
from medsilo.fed.messages import Refusal, Update
from medsilo.fed.site import Site, derive_seed
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
from medsilo.report.summary import per_site_table
from medsilo.study.config import StudyConfig, load_study, parse_study
from medsilo.study.privacy import (
    PrivacyPlan,
    baseline_privacy,
    check_budgets,
    open_site_privacy,
    plan_privacy,
)
from medsilo.tasks.models import build_model, normalization_keys

ProgressFn = Callable[[str, dict[str, Any]], None]
"""``progress(event, info)``: events ``start``, ``site``, ``round``, ``personalize``,
``baseline``, ``done``."""


@dataclass
class Federation:
    """Everything built from a study before the first round runs."""

    config: StudyConfig
    data: FederatedData
    sites: dict[str, Site]
    coordinator: Coordinator
    model_factory: Callable[[], nn.Module]
    warnings: list[str] = field(default_factory=list)
    privacy: PrivacyPlan | None = None


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    per_site: pd.DataFrame
    """One row per (site, setting): test metrics of federated, local_only, pooled."""
    history: pd.DataFrame
    """Every metrics.jsonl record as a row."""


def load_raw(config: StudyConfig) -> RawDataset:
    data = config.data
    if data.dataset is not None:
        return builtin.load(data.dataset, data.options)
    assert data.schema_ is not None  # checked by DataSection
    source = data.path if data.path is not None else data.paths
    assert source is not None
    return read_table(source, data.schema_)


def build_federation(config: StudyConfig) -> Federation:
    """Load and split the data, build the sites and the coordinator (nothing written)."""
    raw = load_raw(config)
    if config.model.name == "cnn" and raw.kind != "image":
        raise ConfigError(
            f"model.name: 'cnn' needs an image dataset; this one is {raw.kind} "
            "(use 'logreg' or 'mlp')"
        )
    data, warnings = federate(raw, config.data, config.study.seed)
    seed = config.study.seed

    def model_factory() -> nn.Module:
        return build_model(config.model, data.input_shape, data.num_classes, derive_seed(seed, 5))

    try:
        template = model_factory()
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from None
    fedltn = config.strategy.name == "fedltn"
    lottery = config.lottery or LotterySpec()
    local_norm = config.strategy.fedbn or (fedltn and lottery.local_normalization)
    local_keys = normalization_keys(template) if local_norm else frozenset()
    if config.strategy.fedbn and not local_keys:
        raise ConfigError(
            f"strategy.fedbn: model '{config.model.name}' has no normalization "
            "layer to keep local; use model 'cnn' or set fedbn = false"
        )
    if config.strategy.min_sites > len(data.sites):
        raise ConfigError(
            f"strategy.min_sites: must be at most the number of sites, "
            f"{len(data.sites)} ({', '.join(data.site_names)}) (got {config.strategy.min_sites})"
        )
    shared = {k: v for k, v in get_weights(template).items() if k not in local_keys}
    sites = {s.name: Site(i, s, model_factory, local_keys, seed) for i, s in enumerate(data.sites)}
    if fedltn:  # FedLTN / LotteryFL: every site starts from the common initialization
        for site in sites.values():
            site.lottery = LotteryClient(lottery, get_weights(template), local_keys)
    coordinator = Coordinator(
        shared,
        config.strategy,
        list(sites),
        config.train_config(),
        seed,
        secagg=config.secure_aggregation,
        lottery=lottery if fedltn else None,
    )
    # Site authentication: every party knows every site's Ed25519 verify key up front.
    registry = {name: site.verify_key for name, site in sites.items()}
    coordinator.verify_keys = dict(registry)
    for site in sites.values():
        site.verify_keys = dict(registry)
    privacy = plan_privacy(
        config.privacy,
        config.budgets,
        data,
        config.model,
        rounds=config.study.rounds,
        local_epochs=config.train.local_epochs,
        batch_size=config.train.batch_size,
        fraction=config.strategy.fraction,
        template=template,
        extra_epochs=config.personalization.fine_tune_epochs,
        secagg=config.secure_aggregation,
        shared_dim=sum(int(np.size(v)) for v in shared.values()),
        min_sites=config.strategy.min_sites,
        lottery=fedltn,
    )
    if privacy is not None:
        warnings = [*warnings, *privacy.warnings]
    return Federation(config, data, sites, coordinator, model_factory, warnings, privacy)


def attach_privacy(fed: Federation, run_dir: RunDirectory) -> None:
    """Open each site's ledger and secret in the run directory and arm the round logic."""
    if fed.privacy is None:
        return
    site_dp, central = open_site_privacy(fed.privacy, run_dir.path, fed.config.budgets.ledger_dir)
    for name, site in fed.sites.items():
        site.dp = site_dp[name]
    fed.coordinator.central_dp = central
    fed.coordinator.distributed = fed.privacy.distributed_sum()


def fingerprint(data: FederatedData) -> str:
    digest = hashlib.sha256()
    for s in data.sites:
        digest.update(s.name.encode())
        for array in (s.x_train, s.y_train, s.x_val, s.y_val, s.x_test, s.y_test):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _checkpoint_arrays(fed: Federation) -> dict[str, np.ndarray]:
    state = fed.coordinator.state_dict()
    arrays = {f"coordinator/weights/{k}": v for k, v in state["weights"].items()}  # type: ignore[attr-defined]
    for slot, values in state["server_state"].items():  # type: ignore[attr-defined]
        arrays.update({f"coordinator/{slot}/{k}": v for k, v in values.items()})
    arrays["coordinator/rounds_done"] = np.array(state["rounds_done"])
    for slot, values in state.get("lottery", {}).items():  # type: ignore[attr-defined]
        arrays.update({f"coordinator/lottery/{slot}/{k}": v for k, v in values.items()})
    for i, site in enumerate(fed.sites.values()):
        arrays.update({f"site/{i}/{k}": v for k, v in site.state_dict().items()})
    return arrays


def _restore(fed: Federation, arrays: dict[str, np.ndarray]) -> None:
    def under(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

    server = {slot: under(f"coordinator/{slot}/") for slot in ("m", "v")}
    lottery: dict[str, dict[str, np.ndarray]] = {}
    for key, value in under("coordinator/lottery/").items():
        slot, name = key.rsplit("/", 1)
        lottery.setdefault(slot, {})[name] = value
    fed.coordinator.load_state_dict(
        {
            "weights": under("coordinator/weights/"),
            "rounds_done": int(arrays["coordinator/rounds_done"]),
            "server_state": {k: v for k, v in server.items() if v},
            **({"lottery": lottery} if lottery else {}),
        }
    )
    for i, site in enumerate(fed.sites.values()):
        site.load_state_dict(under(f"site/{i}/"))


def _round_records(result: RoundResult) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for reply in result.replies:
        if isinstance(reply, Update):
            records.append(
                {
                    "round": result.round,
                    "kind": "train",
                    "site": reply.site,
                    "num_samples": reply.num_samples,
                    **reply.metrics,
                }
            )
        elif isinstance(reply, Refusal):
            records.append(
                {
                    "round": result.round,
                    "kind": "refusal",
                    "site": reply.site,
                    "reason": reply.reason,
                }
            )
    for ev in result.evaluations:
        records.append(
            {
                "round": result.round,
                "kind": "eval",
                "setting": "federated",
                "split": ev.split,
                "site": ev.site,
                "num_samples": ev.num_samples,
                **ev.metrics,
            }
        )
    records.append(
        {
            "round": result.round,
            "kind": "round",
            "seconds": result.seconds,
            "aggregated": result.aggregated,
            **({"secagg": dict(result.secagg)} if result.secagg else {}),
        }
    )
    return records


def run_study(
    study: Path | str, out: Path | str, *, progress: ProgressFn | None = None
) -> RunResult:
    """Run a study file into a new run directory ``out``."""
    config, text = load_study(Path(study))
    return _start(config, text, str(Path(study).parent.resolve()), Path(out), progress)


def run_study_text(
    text: str,
    out: Path | str,
    *,
    base_dir: Path | str | None = None,
    progress: ProgressFn | None = None,
) -> RunResult:
    """Run a study given as TOML text (a notebook cell); data paths resolve to ``base_dir``."""
    base = Path(base_dir).resolve() if base_dir is not None else None
    config = parse_study(text, source="<study text>", base_dir=base)
    return _start(config, text, str(base) if base else None, Path(out), progress)


def _start(
    config: StudyConfig, text: str, base_dir: str | None, out: Path, progress: ProgressFn | None
) -> RunResult:
    if config.engine.name == "flower-sim":
        from medsilo.study.deploy import simulate_study

        return collect(simulate_study(config, text, out, base_dir))
    if config.engine.name != "local":
        raise ConfigError(
            f"engine.name: '{config.engine.name}' runs across processes: start it with "
            "`medsilo coordinator start STUDY --out RUN` and `medsilo site start SITE.toml` "
            "at each site (docs/deployment.md); `medsilo run` and the Python API run "
            "engines 'local' and 'flower-sim' only"
        )
    fed = build_federation(config)
    fed.warnings += check_budgets(fed.privacy, config.budgets.ledger_dir)
    meta = {
        "study": config.study.name,
        "seed": config.study.seed,
        "rounds": config.study.rounds,
        "sites": list(fed.sites),
        "data_fingerprint": fingerprint(fed.data),
        "base_dir": base_dir,
        "warnings": fed.warnings,
        "engine": config.engine.name,
        "privacy": (
            {**fed.privacy.summary(), "ledger_dir": _str_or_none(config.budgets.ledger_dir)}
            if fed.privacy is not None
            else {"mode": "none"}
        ),
    }
    run_dir = RunDirectory.create(out, text, meta)
    attach_privacy(fed, run_dir)
    return _execute(fed, run_dir, progress)


def _str_or_none(path: Path | None) -> str | None:
    return None if path is None else str(path)


def resume_run(path: Path | str, progress: ProgressFn | None = None) -> RunResult:
    """Continue a run after its last completed round; a completed run is left as it is."""
    run_dir = RunDirectory.open(Path(path))
    meta = run_dir.meta
    base = meta.get("base_dir")
    config = parse_study(
        run_dir.study_text,
        source=str(run_dir.path / "study.toml"),
        base_dir=Path(base) if base else None,
    )
    if config.engine.name == "flower-sim":  # resumes from its own checkpoint
        from medsilo.study.deploy import simulate_study

        return collect(simulate_study(config, run_dir.study_text, run_dir.path, base))
    fed = build_federation(config)
    if fingerprint(fed.data) != meta.get("data_fingerprint"):
        raise RunDirError(
            f"{run_dir.path}: the data differ from those the run started with; "
            "a resumed run must see the same data (start a new run instead)"
        )
    if meta.get("status") != "completed":
        arrays = run_dir.load_checkpoint()
        if arrays is not None:
            _restore(fed, arrays)
        run_dir.truncate_records(fed.coordinator.rounds_done)
    attach_privacy(fed, run_dir)
    return _execute(fed, run_dir, progress)


def _execute(fed: Federation, run_dir: RunDirectory, progress: ProgressFn | None) -> RunResult:
    config = fed.config
    notify = progress or (lambda event, info: None)
    if run_dir.meta.get("status") != "completed":
        notify(
            "start",
            {
                "rounds": config.study.rounds,
                "sites": list(fed.sites),
                "done": fed.coordinator.rounds_done,
                "warnings": fed.warnings,
            },
        )

        def on_round(result: RoundResult) -> None:
            records = _round_records(result)
            records[-1].update(fed.coordinator.traffic)  # bytes down / up this round
            run_dir.append_records(records)
            run_dir.save_checkpoint(_checkpoint_arrays(fed), result.round)
            notify("round", {"round": result.round, "evaluations": result.evaluations})

        LocalEngine().run(
            fed.coordinator,
            fed.sites,
            config.study.rounds,
            on_round=on_round,
            on_site=lambda r, s: notify("site", {"round": r, "site": s}),
            evaluate_every=config.study.evaluate_every,
            # val_fraction = 0: no validation rows to evaluate on
            splits=("val", "test") if config.data.val_fraction > 0 else ("test",),
        )
        _personalize(fed, run_dir, notify)
        _run_baselines(fed, run_dir, notify)
        _save_model(fed, run_dir)
        run_dir.update_meta(status="completed")
    result = collect(run_dir)
    atomic_write_bytes(run_dir.path / RESULTS_FILE, result.per_site.to_csv(index=False).encode())
    write_report(run_dir)
    notify("done", {"run_dir": str(run_dir.path)})
    return result


def _personalize(fed: Federation, run_dir: RunDirectory, notify: ProgressFn) -> None:
    """``[personalization]``: each site fine-tunes the final model on its own training
    split and is evaluated (``setting = "fine_tuned"`` records next to ``federated``).
    With ``local`` DP the steps are DP-SGD in the site's ledger, under round R + 1."""
    config = fed.config
    spec = config.personalization
    if not spec.enabled or any(r.get("setting") == "fine_tuned" for r in run_dir.records()):
        return  # off, or already done before an interruption
    rounds = fed.coordinator.rounds_done
    splits = ("val", "test") if config.data.val_fraction > 0 else ("test",)
    records: list[dict[str, Any]] = []
    for site in fed.sites.values():
        result, evaluations = site.personalize(
            spec, fed.coordinator.weights, config.train_config(), rounds + 1, splits
        )
        if result.refused is not None:
            reason = f"fine-tuning: {result.refused}"
            records.append(
                {"round": rounds, "kind": "refusal", "site": site.name, "reason": reason}
            )
        for ev in evaluations:
            records.append(
                {
                    "round": rounds,
                    "kind": "eval",
                    "setting": "fine_tuned",
                    "split": ev.split,
                    "site": ev.site,
                    "num_samples": ev.num_samples,
                    "fine_tune_steps": result.steps,
                    **({"epsilon": result.epsilon} if result.epsilon is not None else {}),
                    **ev.metrics,
                }
            )
        notify("personalize", {"site": site.name})
    run_dir.append_records(records)


def _run_baselines(fed: Federation, run_dir: RunDirectory, notify: ProgressFn) -> None:
    config, seed = fed.config, fed.config.study.seed
    local_dp, pooled_dp = baseline_privacy(
        fed.privacy,
        fed.data,
        run_dir.path,
        rounds=config.study.rounds,
        local_epochs=config.train.local_epochs,
        batch_size=config.train.batch_size,
    )
    out: dict[str, dict[str, dict[str, float]]] = {}
    if config.baselines.local_only:
        out["local_only"] = {}
        for i, site in enumerate(fed.data.sites):
            out["local_only"][site.name] = baselines.local_only(
                site,
                i,
                fed.model_factory,
                config.baseline_config(),
                seed,
                local_dp.get(site.name),
            )
            notify("baseline", {"setting": "local_only", "site": site.name})
    if config.baselines.pooled:
        out["pooled"] = baselines.pooled(
            fed.data, fed.model_factory, config.baseline_config(), seed, pooled_dp
        )
        notify("baseline", {"setting": "pooled", "site": "all"})
    if fed.privacy is not None and (local_dp or pooled_dp):  # what each DP baseline spent
        spec = fed.privacy.spec
        assert spec.delta is not None
        plans = {"pooled": pooled_dp} if config.baselines.pooled else {}
        if config.baselines.local_only:
            plans.update({f"local_only/{name}": dp for name, dp in local_dp.items()})
        out["privacy"] = {
            name: dp.summary(spec.delta, spec.accountant)
            for name, dp in plans.items()
            if dp is not None
        }
    atomic_write_json(run_dir.path / BASELINES_FILE, out)


def _save_model(fed: Federation, run_dir: RunDirectory) -> None:
    arrays = {f"global/{k}": v for k, v in fed.coordinator.weights.items()}
    for site in fed.sites.values():
        arrays.update({f"local/{site.name}/{k}": v for k, v in site.state_dict().items()})
    save_arrays(run_dir.path / MODEL_FILE, arrays)


def collect(run_dir: RunDirectory | Path | str) -> RunResult:
    """Read a run directory's results (for ``medsilo report`` and notebooks)."""
    if not isinstance(run_dir, RunDirectory):
        run_dir = RunDirectory.open(Path(run_dir))
    records = run_dir.records()
    history = pd.DataFrame(records)
    return RunResult(run_dir.path, per_site_table(run_dir), history)
