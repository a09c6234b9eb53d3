"""``medsilo audit RUN_DIR``: an empirical privacy audit of a finished run.

For each site it measures three things and writes them to ``RUN/audit.json``:

1. **Loss-threshold membership inference** on the released model (the final global
   weights, with the site's own local layers): members are the site's training records,
   non-members its test records (never trained on). AUC, TPR at 10% / 1% / 0.1% /
   0.001% FPR, advantage (:func:`medsilo.privacy.audit.loss_threshold_attack`).
2. **LiRA** (Carlini et al., IEEE S&P 2022) with ``shadow_models`` shadow models per site,
   each trained on a random half of the site's train + test records (every record IN
   exactly half of them), with the procedure the site trained with (DP-SGD with the run's
   q, sigma, C and steps; or, without DP, the baselines' plain SGD: ``baseline_config()``,
   as many epochs as the site saw over the whole run). Online and offline variants, one
   global variance (few shadow models). Approximation: the target model was trained by
   the federation on every site's data, a shadow model on one site's half alone, so the
   shadows' IN/OUT distributions are only an approximation of the target's; full-fidelity
   shadows would be whole shadow federations (K times the run's cost).
3. **A canary lower bound on epsilon** (:mod:`medsilo.privacy.canary`): ``canary_trials``
   models with and as many without an out-of-distribution, mislabelled canary, trained
   on the site's training split with the same procedure; a held-out threshold test and
   Clopper-Pearson at 95% give an epsilon that the procedure's true epsilon exceeds with
   95% confidence, next to the accountant's epsilon for the same procedure (inf without
   DP). A bound above the accountant's epsilon means a bug; a small bound is the expected
   outcome (a loss-based black-box attacker with few trials; see the module's notes).

What is replayed for a DP run (``[privacy] mode = "local"``): each site's q and sigma
from the run's privacy plan (:func:`medsilo.study.privacy.plan_privacy`, rebuilt from the
study file exactly as the run built it), the clip C, and as many DP-SGD steps as the
site's ledger recorded (all planned steps if it has no ledger), in one continuous DP-SGD
run from the model's initial weights: the same mechanism, composed over the same number
of steps, that the accountant charged the site for. Site-level DP (``central``, DP-FedAvg)
adds its noise at the coordinator; a one-site replay cannot reproduce it, so such a run
gets the attacks but no canary bound.

Cost (heart demo: 4 sites, logreg, 20 rounds, defaults: 8 shadow models and 32 canary
trials per site, i.e. 4 x 73 trained models): 107 s without DP and 109 s with DP-SGD
(sigma 1), measured on a shared, loaded two-core machine (66 s and 28 s of CPU). Fewer
canary trials are faster and prove less: a perfect attack proves at most 1.35 with 32
trials, 0.81 with 20 and nothing with fewer than 11
(:func:`medsilo.privacy.canary.max_provable_epsilon`).
"""

from __future__ import annotations

import math
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medsilo.data.types import SiteData
from medsilo.errors import ConfigError, RunDirError
from medsilo.fed.messages import TrainConfig
from medsilo.fed.training import set_weights, train_local
from medsilo.privacy.accounting import epsilon_after
from medsilo.privacy.audit import (
    AttackResult,
    ThresholdSelection,
    balanced_inclusion,
    lira_scores,
    logit_confidence,
    loss_threshold_attack,
    membership_attack,
)
from medsilo.privacy.canary import (
    CanaryResult,
    Trainer,
    canary_experiment,
    dpsgd_trainer,
    least_likely_label,
    make_canary,
    sub_seed,
)
from medsilo.privacy.events import DpSgdEvent
from medsilo.privacy.ledger import Ledger
from medsilo.privacy.spec import DpSgdSpec
from medsilo.report.rundir import MODEL_FILE, RunDirectory, atomic_write_json, load_arrays
from medsilo.study.config import StudyConfig, parse_study
from medsilo.study.privacy import SITES_DIR, PrivacyPlan
from medsilo.study.run import Federation, build_federation, fingerprint

__all__ = [
    "AUDIT_FILE",
    "AuditOptions",
    "AuditReport",
    "SiteAudit",
    "SiteProcedure",
    "audit_federation",
    "audit_run",
    "site_procedure",
]

AUDIT_FILE = "audit.json"

AuditProgress = Callable[[str, dict[str, Any]], None]
"""``progress(event, info)``: ``site`` (a site starts), ``train`` (``done`` of ``total``
models of ``phase`` ``shadow`` or ``canary`` trained)."""


@dataclass(frozen=True)
class AuditOptions:
    """What the audit does; every random choice derives from ``seed`` and the study seed."""

    shadow_models: int = 8
    """LiRA shadow models per site (0: no LiRA; otherwise at least 4)."""
    canary_trials: int = 32
    """Models with (and as many without) the canary per site (0: no canary bound)."""
    seed: int = 0
    confidence: float = 0.95
    selection: ThresholdSelection = "holdout"
    delta: float = 1e-5
    """delta of the canary bound for a run without DP (a DP run uses its own)."""

    def __post_init__(self) -> None:
        if 0 < self.shadow_models < 4 or self.shadow_models < 0:
            raise ConfigError(
                "shadow_models: must be 0 (no LiRA) or at least 4 (each record IN 2 and OUT 2 "
                f"of them, to estimate a variance) (got {self.shadow_models})"
            )
        if self.canary_trials == 1 or self.canary_trials < 0:
            raise ConfigError(
                "canary_trials: must be 0 (no canary bound) or at least 2 "
                f"(got {self.canary_trials})"
            )
        if self.seed < 0:
            raise ConfigError(f"seed: must be >= 0 (got {self.seed})")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence: must be in (0, 1) (got {self.confidence})")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta: must be in (0, 1) (got {self.delta})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "shadow_models": self.shadow_models,
            "canary_trials": self.canary_trials,
            "seed": self.seed,
            "confidence": self.confidence,
            "selection": self.selection,
            "delta": self.delta,
        }


@dataclass(frozen=True)
class SiteProcedure:
    """How one site trained, as the audit replays it (shadow models, canary trials)."""

    mechanism: Literal["dp_sgd", "non_private"]
    delta: float
    accountant_epsilon: float
    """The accountant's epsilon of the whole procedure at ``delta`` (inf: no DP)."""
    accountant: str | None = None
    sample_rate: float | None = None
    noise_multiplier: float | None = None
    clip: float | None = None
    steps: int | None = None
    epochs: int | None = None
    """Plain SGD epochs (non-private procedure)."""
    source: str = "plan"
    """Where the number of steps comes from: the site's ``ledger`` (what it released) or
    the run's ``plan`` (all rounds)."""

    def to_dict(self) -> dict[str, Any]:
        eps = self.accountant_epsilon
        return {
            "mechanism": self.mechanism,
            "delta": self.delta,
            "accountant_epsilon": eps if math.isfinite(eps) else None,
            "accountant": self.accountant,
            "sample_rate": self.sample_rate,
            "noise_multiplier": self.noise_multiplier,
            "clip": self.clip,
            "steps": self.steps,
            "epochs": self.epochs,
            "source": self.source,
        }


@dataclass(frozen=True)
class SiteAudit:
    site: str
    procedure: SiteProcedure
    loss_attack: AttackResult
    lira: AttackResult | None
    lira_offline: AttackResult | None
    canary: CanaryResult | None
    seconds: float
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "procedure": self.procedure.to_dict(),
            "loss_attack": self.loss_attack.to_dict(),
            "lira": self.lira.to_dict() if self.lira else None,
            "lira_offline": self.lira_offline.to_dict() if self.lira_offline else None,
            "canary": self.canary.to_dict() if self.canary else None,
            "seconds": self.seconds,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class AuditReport:
    """What :func:`audit_run` found; ``to_dict()`` is the content of ``audit.json``."""

    run_dir: Path | None
    study: str
    options: AuditOptions
    privacy: DpSgdSpec | None
    sites: tuple[SiteAudit, ...]
    seconds: float
    notes: tuple[str, ...] = field(default=())

    @property
    def consistent(self) -> bool:
        """No site's canary lower bound exceeds its accountant epsilon."""
        return all(s.canary is None or s.canary.consistent for s in self.sites)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "study": self.study,
            "options": self.options.to_dict(),
            "privacy": self.privacy.model_dump() if self.privacy else None,
            "consistent": self.consistent,
            "sites": [s.to_dict() for s in self.sites],
            "seconds": self.seconds,
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- procedure


def _ledger_release(run_path: Path, site: str) -> DpSgdEvent | None:
    """What a site's ledger says it released: its DP-SGD events merged into one (same q
    and sigma, steps added), or ``None`` without a ledger or with mixed events."""
    path = run_path / SITES_DIR / site
    if not path.is_dir():
        return None
    with Ledger.open(path) as ledger:
        events = ledger.events()
    if not events or not all(isinstance(e, DpSgdEvent) for e in events):
        return None
    if len({(e.sample_rate, e.noise_multiplier) for e in events}) != 1:
        return None
    first = events[0]
    return DpSgdEvent(first.sample_rate, first.noise_multiplier, sum(e.steps for e in events))


def site_procedure(
    config: StudyConfig,
    plan: PrivacyPlan | None,
    site: str,
    *,
    delta: float = 1e-5,
    released: DpSgdEvent | None = None,
) -> SiteProcedure:
    """The procedure to replay for ``site``: DP-SGD as the run did it, or plain SGD.

    ``plan``: the run's privacy plan (:func:`medsilo.study.privacy.plan_privacy`; ``None``
    without DP). ``released``: the site's ledger events merged into one (q, sigma, all its
    steps), which wins over the plan's ``rounds x steps_per_round`` steps. ``delta`` is
    used only without DP. Site-level DP (DP-FedAvg) adds its noise at the coordinator,
    which a one-site replay cannot reproduce: its local training is replayed as plain SGD.
    """
    if plan is None or plan.spec.mode != "local":
        epochs = config.train.local_epochs * config.study.rounds
        return SiteProcedure("non_private", delta, math.inf, epochs=epochs)
    spec, p = plan.spec, plan.sites[site]
    assert spec.delta is not None and spec.clip is not None  # DpSgdSpec validates
    event = released or DpSgdEvent(
        p.sample_rate, p.noise_multiplier, config.study.rounds * p.steps_per_round
    )
    return SiteProcedure(
        "dp_sgd",
        spec.delta,
        epsilon_after([event], spec.delta, spec.accountant),
        accountant=spec.accountant,
        sample_rate=event.sample_rate,
        noise_multiplier=event.noise_multiplier,
        clip=spec.clip,
        steps=event.steps,
        source="plan" if released is None else "ledger",
    )


def _trainer(procedure: SiteProcedure, config: StudyConfig) -> Trainer:
    t = config.train
    if procedure.mechanism == "dp_sgd":
        assert procedure.sample_rate is not None and procedure.noise_multiplier is not None
        assert procedure.clip is not None and procedure.steps is not None
        return dpsgd_trainer(
            sample_rate=procedure.sample_rate,
            noise_multiplier=procedure.noise_multiplier,
            clip=procedure.clip,
            steps=procedure.steps,
            lr=t.lr,
            momentum=t.momentum,
            weight_decay=t.weight_decay,
        )
    plain: TrainConfig = config.baseline_config()

    def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
        train_local(model, x, y, plain, seed)

    return train


# --------------------------------------------------------------------------- attacks


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(x), torch.from_numpy(y)


@torch.no_grad()
def _scores(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-record cross-entropy loss and logit-scaled confidence."""
    model.eval()
    logits = torch.cat(
        [model(torch.from_numpy(x[i : i + 1024])) for i in range(0, len(x), 1024)]
    ).double()
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    losses = F.cross_entropy(logits, labels, reduction="none").numpy()
    return losses, logit_confidence(logits.numpy(), labels.numpy())


def _lira(
    fed: Federation,
    site: SiteData,
    target: nn.Module,
    trainer: Trainer,
    options: AuditOptions,
    seed: int,
    notify: AuditProgress,
) -> tuple[AttackResult, AttackResult]:
    x = np.concatenate([site.x_train, site.x_test])
    y = np.concatenate([site.y_train, site.y_test])
    k = options.shadow_models
    inside = balanced_inclusion(k, len(y), np.random.default_rng(sub_seed(seed, 1)))
    shadow = np.empty((k, len(y)))
    for i in range(k):
        model = fed.model_factory()
        rows = np.flatnonzero(inside[i])
        trainer(model, torch.from_numpy(x[rows]), torch.from_numpy(y[rows]), sub_seed(seed, 2, i))
        shadow[i] = _scores(model, x, y)[1]
        notify("train", {"site": site.name, "phase": "shadow", "done": i + 1, "total": k})
    confidence = _scores(target, x, y)[1]
    n = site.num_train
    online = lira_scores(confidence, shadow, inside, online=True)
    offline = lira_scores(confidence, shadow, inside, online=False)
    return (
        membership_attack(online[:n], online[n:]),
        membership_attack(offline[:n], offline[n:]),
    )


def audit_federation(
    fed: Federation,
    model: Mapping[str, np.ndarray],
    options: AuditOptions | None = None,
    *,
    released: Mapping[str, DpSgdEvent] | None = None,
    progress: AuditProgress | None = None,
) -> tuple[SiteAudit, ...]:
    """Audit every site of ``fed`` against the released ``model`` (``final_model.npz``
    arrays: ``global/<param>`` and ``local/<site>/<param>``), replaying each site's
    procedure from ``fed.privacy``; ``released``: what each site's ledger recorded, as one
    merged event per site (default: every planned step)."""
    options = options or AuditOptions()
    notify = progress or (lambda event, info: None)
    config = fed.config
    shared = {k.removeprefix("global/"): v for k, v in model.items() if k.startswith("global/")}
    if not shared:
        raise RunDirError("final_model.npz has no 'global/...' weights; is it a medsilo run?")
    out = []
    for index, site in enumerate(fed.data.sites):
        start = time.perf_counter()
        notify("site", {"site": site.name, "index": index, "total": len(fed.data.sites)})
        seed = sub_seed(options.seed, config.study.seed, index)
        local = {
            k.removeprefix(f"local/{site.name}/"): v
            for k, v in model.items()
            if k.startswith(f"local/{site.name}/")
        }
        target = fed.model_factory()
        try:
            set_weights(target, shared)
            set_weights(target, local)
        except (KeyError, ValueError) as exc:
            raise RunDirError(
                f"final_model.npz does not fit the study's model ({exc}); "
                "was the study file or the code changed after the run?"
            ) from None
        member_loss = _scores(target, site.x_train, site.y_train)[0]
        nonmember_loss = _scores(target, site.x_test, site.y_test)[0]
        procedure = site_procedure(
            config,
            fed.privacy,
            site.name,
            delta=options.delta,
            released=(released or {}).get(site.name),
        )
        trainer = _trainer(procedure, config)
        central = fed.privacy is not None and fed.privacy.spec.mode != "local"
        notes: list[str] = []
        if central:
            notes.append(
                "site-level DP (DP-FedAvg): the coordinator's noise is not replayed; shadow "
                "models train without DP and there is no record-level canary bound"
            )
        lira = lira_offline = None
        if options.shadow_models:
            lira, lira_offline = _lira(fed, site, target, trainer, options, seed, notify)
        canary = None
        if options.canary_trials and not central:
            features, _ = make_canary(
                site.x_train,
                site.y_train,
                fed.data.num_classes,
                np.random.default_rng(sub_seed(seed, 3)),
            )
            reference = fed.model_factory()
            trainer(reference, *_tensors(site.x_train, site.y_train), sub_seed(seed, 5))
            record = (features, least_likely_label(reference, features))

            def step(done: int, total: int, name: str = site.name) -> None:
                notify("train", {"site": name, "phase": "canary", "done": done, "total": total})

            canary = canary_experiment(
                fed.model_factory,
                site.x_train,
                site.y_train,
                record,
                trainer,
                trials=options.canary_trials,
                seed=sub_seed(seed, 4),
                delta=procedure.delta,
                accountant_epsilon=procedure.accountant_epsilon,
                confidence=options.confidence,
                selection=options.selection,
                progress=step,
            )
        out.append(
            SiteAudit(
                site=site.name,
                procedure=procedure,
                loss_attack=loss_threshold_attack(member_loss, nonmember_loss),
                lira=lira,
                lira_offline=lira_offline,
                canary=canary,
                seconds=time.perf_counter() - start,
                notes=tuple(notes),
            )
        )
    return tuple(out)


def audit_run(
    run_dir: Path | str,
    options: AuditOptions | None = None,
    *,
    progress: AuditProgress | None = None,
) -> AuditReport:
    """Audit a completed run directory; writes ``RUN/audit.json`` (atomically) and returns
    the report. Nothing else in the run directory changes."""
    options = options or AuditOptions()
    start = time.perf_counter()
    directory = RunDirectory.open(Path(run_dir))
    meta = directory.meta
    if meta.get("status") != "completed":
        raise RunDirError(
            f"{directory.path}: the run is not complete (status {meta.get('status')!r}); "
            f"finish it first with: medsilo run --resume {directory.path}"
        )
    model_path = directory.path / MODEL_FILE
    if not model_path.is_file():
        raise RunDirError(f"{directory.path}: no {MODEL_FILE}; the run saved no final model")
    base = meta.get("base_dir")
    config = parse_study(
        directory.study_text,
        source=str(directory.path / "study.toml"),
        base_dir=Path(base) if base else None,
    )
    fed = build_federation(config)
    if fingerprint(fed.data) != meta.get("data_fingerprint"):
        raise RunDirError(
            f"{directory.path}: the data differ from those the run trained on; "
            "the audit needs the same data (members and non-members)"
        )
    try:
        arrays = load_arrays(model_path)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise RunDirError(f"{model_path}: unreadable: {exc}") from None
    notes = [
        "loss_attack and lira attack the released global model (members: a site's "
        "train split; non-members: its test split)",
        "lira shadow models are trained per site, not as whole federations",
        "canary bounds are for each site's training procedure, replayed on its data",
    ]
    released: dict[str, DpSgdEvent] = {}
    if fed.privacy is not None and fed.privacy.spec.mode == "local":
        for name in fed.privacy.sites:
            event = _ledger_release(directory.path, name)
            if event is not None:
                released[name] = event
            else:
                notes.append(f"site {name}: no usable ledger; replaying every planned step")
    sites = audit_federation(fed, arrays, options, released=released, progress=progress)
    report = AuditReport(
        run_dir=directory.path,
        study=config.study.name,
        options=options,
        privacy=config.privacy if config.privacy.enabled else None,
        sites=sites,
        seconds=time.perf_counter() - start,
        notes=tuple(notes),
    )
    atomic_write_json(directory.path / AUDIT_FILE, report.to_dict())
    return report
