"""Process settings: what `conveyor up` / `conveyor run` were started with (not conveyor.yaml)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.adapters.nats_bus import Retention
from orchestrator.rendering.model import RenderTools


@dataclass(frozen=True, slots=True)
class Settings:
    nats_url: str
    data_dir: Path
    repo: str = ""  # path or URL of the repository holding conveyor.yaml
    branch: str = ""  # "" = the repository's default branch
    envs: tuple[str, ...] = ()  # environments this process serves; () = all
    listen: str = "127.0.0.1:8080"
    interval: float | None = None  # poll interval override
    api_token: str | None = field(default=None, repr=False)
    retention: Retention | None = None  # None: keep the stream's retention as it is
    render_concurrency: int = 4
    render_tools: RenderTools = field(default_factory=RenderTools)  # programs, network reach
    # Argo CD-layout trees of health scripts (<group>/<Kind>/health.lua) the operator mounts:
    # --health-customizations DIR / CONVEYOR_HEALTH_CUSTOMIZATIONS; a repository's own rules
    # (conveyor.yaml health:) come first
    health_customizations: tuple[Path, ...] = ()

    @staticmethod
    def api_token_from_env() -> str | None:
        return os.environ.get("CONVEYOR_API_TOKEN") or None
