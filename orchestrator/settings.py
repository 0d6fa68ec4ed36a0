"""Process settings: what `conveyor up` / `conveyor run` were started with (not conveyor.yaml)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.adapters.nats_schema import Retention
from orchestrator.rendering.model import RenderTools
from orchestrator.secrets import SecretPolicy


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
    sync: str = "always"  # the embedded server's fsync policy: always | interval
    replicas: int | None = None  # stream, buckets, object store; None: keep what exists (or 1)
    render_concurrency: int = 4
    render_tools: RenderTools = field(default_factory=RenderTools)  # programs, network reach
    secrets: SecretPolicy = field(default_factory=SecretPolicy)  # what ${VAR}/*File may reach
    allow_local_paths: tuple[str, ...] = ()  # dirs whose repositories conveyor.yaml may name

    @staticmethod
    def api_token_from_env() -> str | None:
        return os.environ.get("CONVEYOR_API_TOKEN") or None
