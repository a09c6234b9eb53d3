"""``SITE.toml``: what a hospital sets at its own site and never sends to the coordinator.

.. code-block:: toml

    [site]
    name = "cleveland"            # the site's name in the study
    state_dir = "state"           # its ledger and DP secret live in state_dir/NAME/

    [data]                        # the site's own data, in a study's [data] format
    dataset = "heart"

    [budget]                      # the site's own (epsilon, delta) over all studies
    epsilon = 3.0
    delta = 1e-5

    [superlink]
    address = "coordinator.example.org:9092"
    root_certificates = "certs/ca.pem"
    auth_key = "certs/sites/cleveland/node.key"
    runtime_port = 9094           # the SuperNode's local Runtime API (127.0.0.1 only)

Relative paths resolve against the file's directory. The coordinator's study may say what
model to train and how much noise to plan for, but the data, the budget and the ledger are
only ever the site's.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medsilo.errors import ConfigError
from medsilo.study.config import DataSection, format_validation_error
from medsilo.study.privacy import BudgetSpec


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteSection(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    state_dir: Path = Path("medsilo-site")


class SuperLinkSection(_Section):
    address: str = Field(pattern=r"^[^\s:]+:\d{1,5}$")
    root_certificates: Path | None = None
    """The consortium CA (``medsilo certs init``); TLS is off only with ``insecure``."""
    auth_key: Path | None = None
    """The SuperNode's authentication key (``medsilo certs issue site NAME``)."""
    insecure: bool = False
    runtime_port: int = Field(default=9094, ge=1, le=65535)


class SiteConfig(_Section):
    site: SiteSection
    data: DataSection
    budget: BudgetSpec | None = None
    superlink: SuperLinkSection


def parse_site(text: str, source: str = "<site>", base_dir: Path | None = None) -> SiteConfig:
    """Validate a SITE.toml; relative paths resolve against ``base_dir``."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        config = SiteConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None
    link = config.superlink
    if not link.insecure and link.root_certificates is None:
        raise ConfigError(
            f"{source}: superlink.root_certificates: TLS needs the consortium CA "
            "(medsilo certs init); set it, or insecure = true for a test on one machine"
        )
    if base_dir is None:
        return config

    def resolve(path: Path | None) -> Path | None:
        return None if path is None or path.is_absolute() else base_dir / path

    data: dict[str, Any] = {}
    if config.data.path is not None:
        data["path"] = resolve(config.data.path) or config.data.path
    if config.data.paths is not None:
        data["paths"] = {k: resolve(p) or p for k, p in config.data.paths.items()}
    return config.model_copy(
        update={
            "site": config.site.model_copy(
                update={"state_dir": resolve(config.site.state_dir) or config.site.state_dir}
            ),
            "data": config.data.model_copy(update=data),
            "superlink": link.model_copy(
                update={
                    "root_certificates": resolve(link.root_certificates) or link.root_certificates,
                    "auth_key": resolve(link.auth_key) or link.auth_key,
                }
            ),
        }
    )


def load_site(path: Path) -> SiteConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"site file not found: {path}")
    return parse_site(path.read_text(encoding="utf-8"), str(path), path.parent.resolve())
