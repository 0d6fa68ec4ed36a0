"""Process settings: what `conveyor up` / `conveyor run` were started with (not conveyor.yaml)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.adapters.nats_schema import Retention
from orchestrator.rendering.model import RenderTools
from orchestrator.secrets import SecretPolicy


def token_from(value: str | None) -> str | None:
    """A token as the operator gave it: surrounding whitespace dropped (a mounted Secret often
    ends in a newline), and a blank one counts as no token at all, never as the empty token."""
    stripped = (value or "").strip()
    return stripped or None


@dataclass(frozen=True, slots=True)
class Settings:
    nats_url: str = field(repr=False)  # may carry the bus credentials (user:password@)
    data_dir: Path
    repo: str = ""  # path or URL of the repository holding conveyor.yaml
    branch: str = ""  # "" = the repository's default branch
    envs: tuple[str, ...] = ()  # environments this process serves; () = all
    listen: str = "127.0.0.1:8080"
    interval: float | None = None  # poll interval override
    api_token: str | None = field(default=None, repr=False)  # the operator role
    read_token: str | None = field(default=None, repr=False)  # the read-only role
    # Host header names the api answers to besides loopback names and the bind address
    # ("*" = any; ".example.com" = the domain and every subdomain): DNS-rebinding protection
    allowed_hosts: tuple[str, ...] = ()
    nats_ca: str = ""  # CA file that signs the NATS servers' certificates: connect with TLS
    retention: Retention | None = None  # None: keep the stream's retention as it is
    sync: str = "always"  # the embedded server's fsync policy: always | interval
    replicas: int | None = None  # stream, buckets, object store; None: keep what exists (or 1)
    render_concurrency: int = 4
    render_tools: RenderTools = field(default_factory=RenderTools)  # programs, network reach
    # Argo CD-layout trees of health scripts (<group>/<Kind>/health.lua) the operator mounts:
    # --health-customizations DIR / CONVEYOR_HEALTH_CUSTOMIZATIONS; a repository's own rules
    # (conveyor.yaml health:) come first
    health_customizations: tuple[Path, ...] = ()
    secrets: SecretPolicy = field(default_factory=SecretPolicy)  # what ${VAR}/*File may reach
    allow_local_paths: tuple[str, ...] = ()  # dirs whose repositories conveyor.yaml may name

    def __post_init__(self) -> None:
        # however the settings were built (flags, environment, a test), a blank token is none
        object.__setattr__(self, "api_token", token_from(self.api_token))
        object.__setattr__(self, "read_token", token_from(self.read_token))

    @property
    def auth_enabled(self) -> bool:
        """With any token configured, every api read needs a token too."""
        return bool(self.api_token or self.read_token)

    @staticmethod
    def api_token_from_env(environ: Mapping[str, str] | None = None) -> str | None:
        return token_from((os.environ if environ is None else environ).get("CONVEYOR_API_TOKEN"))

    @staticmethod
    def read_token_from_env(environ: Mapping[str, str] | None = None) -> str | None:
        env = os.environ if environ is None else environ
        return token_from(env.get("CONVEYOR_READ_TOKEN"))
