"""Federated cloning (issue 7, item 4): each site clones its own table under its own
budget, the coordinator pools the clones and trains one model on them; compared with
federated training (FedAvg, :func:`medsilo.study.run.run_study`) on the same sites and the
same held-out test rows, and with local-only training.

Two routes to one goal (a model for all sites without pooling patient rows); the
comparison is the one Beaulieu-Jones et al. ("Privacy-preserving generative deep neural
networks support clinical data sharing", Circ. Cardiovasc. Qual. Outcomes 2019) make for
DP synthetic data against models trained on the real data.

1. The study runs as ``medsilo run`` would, into ``OUT/federated`` (FedAvg, local-only and
   pooled baselines as the study asks).
2. Each site clones its own *training* split (:func:`medsilo.clone.release.make_clone`,
   MST or AIM at (epsilon, delta), as many rows as the model's noisy row count). The
   release is recorded in that site's ledger, the one its federated training writes to
   (``budgets.ledger_dir/SITE`` or ``OUT/federated/sites/SITE``), so cloning and training
   share one budget: a site whose budget cannot afford the clone refuses and sends
   nothing (:class:`~medsilo.privacy.errors.BudgetExceededError` before any measurement).
3. The coordinator receives only the clones' CSV bytes (:func:`pool_clones`), each the
   payload recorded (by SHA-256) in its site's ledger, and trains the study's model on
   their union, with the pooled baseline's training budget (``baseline_config``), after
   imputation and scaling fitted on the clones (which the coordinator may see).
4. Each site evaluates that model (and the preprocessing the coordinator fitted) on its
   own test split: the very rows the federated model and the baselines were tested on.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medsilo.clone.builtin import SCHEMAS, as_text
from medsilo.clone.release import EpsilonTooSmallError, MechanismName, make_clone
from medsilo.clone.schema import CloneSchema, load_schema
from medsilo.data.federate import partition_rows
from medsilo.data.preprocess import TabularPreprocessor
from medsilo.data.split import stratified_split
from medsilo.data.types import FederatedData, RawTable
from medsilo.errors import ConfigError
from medsilo.fed.site import derive_seed
from medsilo.fed.training import evaluate, train_local
from medsilo.privacy.errors import BudgetExceededError
from medsilo.privacy.ledger import Budget, Ledger
from medsilo.report.rundir import atomic_write_bytes, atomic_write_json
from medsilo.report.summary import METRICS
from medsilo.study.config import StudyConfig, load_study
from medsilo.study.privacy import site_dir
from medsilo.study.run import build_federation, load_raw, run_study

Progress = Callable[[str, dict[str, Any]], None]
CLONES_DIR = "clones"
COMPARISON = "comparison"
SETTINGS = ("federated", "local_only", "pooled", "pooled_clones")


@dataclass(frozen=True)
class SiteRows:
    """One site's row indices into the raw table, as :func:`~medsilo.data.federate.federate`
    split them."""

    name: str
    train: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class SiteClone:
    """What one site did: its clone's size and the ledger entry, or why it refused."""

    site: str
    rows: int = 0
    ledger_seq: int | None = None
    epsilon_spent: float | None = None
    refused: str | None = None


@dataclass(frozen=True)
class FederatedCloneResult:
    out: Path
    per_site: pd.DataFrame
    """One row per (site, setting): test metrics; settings :data:`SETTINGS`."""
    means: pd.DataFrame
    """Unweighted mean over sites per setting."""
    sites: dict[str, SiteClone]


def site_rows(raw: RawTable, config: StudyConfig, data: FederatedData) -> list[SiteRows]:
    """The raw rows of each site's training and test splits, drawn exactly as
    :func:`~medsilo.data.federate.federate` draws them (same partition, same generator),
    and checked against the federation's labels."""
    spec, seed = config.data, config.study.seed
    names, parts = partition_rows(raw, spec, seed)
    split_rng = np.random.default_rng([seed, 1])
    kept = {s.name: s for s in data.sites}
    out: list[SiteRows] = []
    for name, rows in zip(names, parts, strict=True):
        if name not in kept:  # dropped by federate (too small / one class): draws nothing
            continue
        groups = None if raw.groups is None else raw.groups[rows]
        tr, _, te = stratified_split(
            raw.labels[rows], spec.val_fraction, spec.test_fraction, split_rng, groups
        )
        site = kept[name]
        if not (
            np.array_equal(raw.labels[rows[tr]], site.y_train)
            and np.array_equal(raw.labels[rows[te]], site.y_test)
        ):
            raise AssertionError(f"site {name!r}: the splits differ from federate()'s")
        out.append(SiteRows(name, rows[tr], rows[te]))
    return out


def _clone_schema(config: StudyConfig, schema: Path | None) -> CloneSchema:
    if schema is not None:
        return load_schema(schema)
    name = config.data.dataset
    if name is None or name not in SCHEMAS:
        raise ConfigError(
            f"federated cloning of {'dataset ' + repr(name) if name else 'a data file'} "
            f"needs a clone schema (--schema); built-in schemas exist for {sorted(SCHEMAS)}"
        )
    return SCHEMAS[name]


def _check_schema(raw: RawTable, schema: CloneSchema, label: str) -> None:
    missing = [c for c in [*raw.schema.features, label] if c not in schema.columns]
    if missing:
        raise ConfigError(
            f"the clone schema must declare every feature of the study's data and the label "
            f"column {label!r}; missing: {missing}"
        )
    spec = schema.columns[label]
    if spec.type != "categorical" or tuple(spec.categories or ()) != raw.class_names:
        raise ConfigError(
            f"clone schema column {label!r} must be categorical with the study's classes "
            f"{list(raw.class_names)} in that order; got {spec.type} {spec.categories}"
        )


def _budget(config: StudyConfig, site: str, fallback: Budget | None) -> Budget | None:
    spec = config.budgets.sites.get(site, config.budgets.default)
    return fallback if spec is None else Budget(spec.epsilon, spec.delta)


def open_site_ledger(
    config: StudyConfig, run_path: Path, site: str, fallback: Budget | None = None
) -> Ledger:
    """The site's ledger, where its federated training records; if training did not
    create it, created with the study's ``[budgets]`` for the site, else ``fallback``."""
    path = site_dir(run_path, config.budgets.ledger_dir, site)
    if (path / "ledger.sqlite").exists():
        return Ledger.open(path, site=site)
    budget = _budget(config, site, fallback)
    if budget is None:
        raise ConfigError(_NO_BUDGET.format(site=site))
    return Ledger.open(path, site=site, budget=budget)


_NO_BUDGET = (
    "site {site!r} has no privacy budget: federated cloning records each clone in the "
    "site's ledger; declare [budgets.default] (or [budgets.sites.NAME]) in a DP study, or "
    "give the sites' budget (--budget)"
)


def clone_site(
    table: pd.DataFrame,
    schema: CloneSchema,
    ledger: Ledger,
    *,
    epsilon: float,
    delta: float,
    mechanism: MechanismName,
    seed: int,
    target: str | None = None,
) -> tuple[bytes | None, SiteClone]:
    """At the site: clone ``table`` under the ledger's budget. Returns the CSV bytes that
    leave the site and what happened; ``None`` if the site refused, before measuring
    anything, because its budget cannot afford the clone or its table is too small for
    the epsilon (:class:`~medsilo.clone.release.EpsilonTooSmallError`)."""
    try:
        result = make_clone(
            table,
            schema,
            epsilon=epsilon,
            delta=delta,
            mechanism=mechanism,
            seed=seed,
            source=f"site {ledger.site}",
            ledger=ledger,
            target=target,
        )
    except (BudgetExceededError, EpsilonTooSmallError) as exc:
        return None, SiteClone(ledger.site, refused=str(exc))
    entry = result.ledger_entry
    assert entry is not None
    return result.csv_bytes(), SiteClone(
        ledger.site, len(result.frame), entry.seq, entry.epsilon_after
    )


def pool_clones(payloads: Mapping[str, bytes]) -> pd.DataFrame:
    """At the coordinator: the union of the clones it received (CSV bytes, as text)."""
    frames = [
        pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
        for data in payloads.values()
    ]
    return pd.concat(frames, ignore_index=True)


def as_raw(text: pd.DataFrame, raw: RawTable, label: str) -> tuple[pd.DataFrame, np.ndarray]:
    """A clone's text back in the study's raw form (numeric: float with NaN; categorical:
    text with None for missing) and its labels as class indices. Rows whose label is
    missing (the schema's missing category, which a clone may sample) are left out: a
    model cannot learn from them."""
    labelled = text[text[label].isin(raw.class_names)].reset_index(drop=True)
    frame = pd.DataFrame(index=labelled.index)
    for name, spec in raw.schema.features.items():
        column = labelled[name].astype(str)
        if spec.type == "numeric":
            frame[name] = pd.to_numeric(column.where(column != ""), errors="raise")
        else:
            frame[name] = column.where(column != "", None).astype(object)
    labels = labelled[label].map({c: i for i, c in enumerate(raw.class_names)})
    return frame, np.array(labels, dtype=np.int64)


def run_federated_clone(
    study: Path | str,
    out: Path | str,
    *,
    epsilon: float,
    delta: float = 1e-6,
    mechanism: MechanismName = "mst",
    schema: Path | None = None,
    budget: Budget | None = None,
    target: bool = False,
    progress: Progress | None = None,
) -> FederatedCloneResult:
    """Run the study (FedAvg and baselines) and the federated cloning route on its sites;
    write ``OUT/comparison.{json,md}`` and each site's clone to ``OUT/clones/SITE.csv``.

    Each site's budget: its ledger's if the ledger exists (``budgets.ledger_dir``), else
    the study's ``[budgets]`` for it (a DP study), else ``budget`` (a study without DP
    training has no ``[budgets]``). ``target``: clone for the label (MST's target-aware
    tree, :mod:`medsilo.clone.mst`; AIM's label triples, :mod:`medsilo.clone.aim`)."""
    notify = progress or (lambda event, info: None)
    config, _ = load_study(Path(study))
    raw = load_raw(config)
    if not isinstance(raw, RawTable):
        raise ConfigError("federated cloning needs a tabular dataset (clones are tables)")
    clone_schema = _clone_schema(config, schema)
    label = "label" if "label" in clone_schema.columns else raw.schema.label
    _check_schema(raw, clone_schema, label)
    fed = build_federation(config)
    rows = site_rows(raw, config, fed.data)
    for r in rows:  # a site without a ledger or a budget: say so before anything runs
        ledgers = config.budgets.ledger_dir
        kept = (
            ledgers is not None and (site_dir(Path(), ledgers, r.name) / "ledger.sqlite").exists()
        )
        if not kept and _budget(config, r.name, budget) is None:
            raise ConfigError(_NO_BUDGET.format(site=r.name))
    text = as_text(raw).rename(columns={"label": label})

    notify("federated", {})
    study_result = run_study(study, Path(out) / "federated")
    payloads: dict[str, bytes] = {}
    sites: dict[str, SiteClone] = {}
    clones_dir = Path(out) / CLONES_DIR
    clones_dir.mkdir(parents=True, exist_ok=True)
    for index, r in enumerate(rows):
        notify("clone", {"site": r.name})
        with open_site_ledger(config, study_result.run_dir, r.name, budget) as ledger:
            payload, sites[r.name] = clone_site(
                text.iloc[r.train].reset_index(drop=True),
                clone_schema,
                ledger,
                epsilon=epsilon,
                delta=delta,
                mechanism=mechanism,
                seed=derive_seed(config.study.seed, 7, index),
                target=label if target else None,
            )
        if payload is not None:
            payloads[r.name] = payload
            atomic_write_bytes(clones_dir / f"{r.name}.csv", payload)
    if not payloads:
        raise ConfigError(
            "every site refused to clone, so there is nothing to pool: "
            + "; ".join(s.refused or "" for s in sites.values())
        )

    notify("train", {"clones": len(payloads)})
    pooled_text = pool_clones(payloads)
    frame, labels = as_raw(pooled_text, raw, label)
    prep = TabularPreprocessor.fit(frame, raw.schema)
    model = fed.model_factory()
    x = torch.from_numpy(prep.transform(frame))
    train_local(
        model,
        x,
        torch.from_numpy(labels),
        config.baseline_config(),
        seed=derive_seed(config.study.seed, 8),
    )
    records: list[dict[str, Any]] = []
    for r in rows:  # at each site: its own test rows, the coordinator's preprocessing
        x_test = torch.from_numpy(prep.transform(raw.frame.iloc[r.test]))
        metrics = evaluate(model, x_test, torch.from_numpy(raw.labels[r.test]))
        records.append({"site": r.name, "setting": "pooled_clones", **metrics})
    per_site = _comparison(study_result.per_site, records)
    means = per_site.groupby("setting", sort=False)[list(METRICS)].mean().reset_index()
    result = FederatedCloneResult(Path(out), per_site, means, sites)
    _write(result, epsilon=epsilon, delta=delta, mechanism=mechanism, target=target)
    notify("done", {"out": str(out)})
    return result


def _comparison(study: pd.DataFrame, clones: list[dict[str, Any]]) -> pd.DataFrame:
    real = study[study["setting"].isin(SETTINGS)][["site", "setting", *METRICS]]
    both = pd.concat([real, pd.DataFrame(clones)], ignore_index=True)
    order = {s: i for i, s in enumerate(SETTINGS)}
    both = both.sort_values(
        ["setting", "site"], key=lambda c: c.map(order) if c.name == "setting" else c
    )
    return both.reset_index(drop=True)[["site", "setting", *METRICS]]


def comparison_markdown(
    result: FederatedCloneResult, metrics: tuple[str, ...] = ("auroc", "accuracy")
) -> str:
    """The mean-over-sites table (one row per setting)."""
    lines = ["| setting | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for _, row in result.means.iterrows():
        lines.append(f"| {row['setting']} | " + " | ".join(f"{row[m]:.3f}" for m in metrics) + " |")
    return "\n".join(lines) + "\n"


def _write(result: FederatedCloneResult, **settings: Any) -> None:
    body = {
        **settings,
        "sites": {name: vars(s) for name, s in result.sites.items()},
        "per_site": result.per_site.to_dict(orient="records"),
        "means": result.means.to_dict(orient="records"),
    }
    atomic_write_json(result.out / f"{COMPARISON}.json", body)
    atomic_write_bytes(result.out / f"{COMPARISON}.md", comparison_markdown(result).encode())
