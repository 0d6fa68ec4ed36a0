"""Which forge, where, as whom: ``ForgeSettings`` from the operator's environment, the token
headers each forge expects, and the repository path (``orchestrator.gitops.forge``'s doc)."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from orchestrator.domain.giturls import parse
from orchestrator.errors import PermanentError

KINDS = ("github", "gitlab", "gitea", "bitbucket")
DEFAULT_API = MappingProxyType({"github": "https://api.github.com", "gitlab": "https://gitlab.com/api/v4",
                                "bitbucket": "https://api.bitbucket.org/2.0"})


@dataclass(frozen=True, slots=True)
class PullRequest:
    number: int
    url: str
    head: str
    base: str

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "url": self.url, "head": self.head, "base": self.base}


@dataclass(frozen=True, slots=True)
class ForgeSettings:
    kind: str
    api_url: str
    repo: str = ""  # owner/name; "" = from the source URL
    token: str | None = field(default=None, repr=False)
    token_file: str = ""
    username: str = ""  # Bitbucket: Basic auth with an app password / API token

    @staticmethod
    def from_env(environ: Mapping[str, str] | None = None) -> ForgeSettings | None:
        env = os.environ if environ is None else environ
        kind = (env.get("CONVEYOR_FORGE") or "").strip().lower()
        if not kind:
            return None
        kind = "gitea" if kind == "forgejo" else kind
        if kind not in KINDS:
            raise PermanentError(f"CONVEYOR_FORGE={kind!r}: one of github, gitlab, gitea, "
                                 "forgejo, bitbucket", reason="InvalidForge")
        api = (env.get("CONVEYOR_FORGE_API_URL") or DEFAULT_API.get(kind, "")).rstrip("/")
        if not api:
            raise PermanentError(f"CONVEYOR_FORGE={kind} needs CONVEYOR_FORGE_API_URL (e.g. "
                                 "https://gitea.example.org/api/v1)", reason="InvalidForge")
        return ForgeSettings(kind, api, (env.get("CONVEYOR_FORGE_REPO") or "").strip("/"),
                             env.get("CONVEYOR_FORGE_TOKEN") or None,
                             env.get("CONVEYOR_FORGE_TOKEN_FILE") or "",
                             (env.get("CONVEYOR_FORGE_USERNAME") or "").strip())

    def read_token(self) -> str:
        if self.token_file:
            try:
                return Path(self.token_file).read_text().strip()
            except OSError as exc:
                raise PermanentError(f"cannot read CONVEYOR_FORGE_TOKEN_FILE: {exc.strerror}",
                                     reason="InvalidForge") from None
        if not self.token:
            raise PermanentError("no forge token: set CONVEYOR_FORGE_TOKEN or "
                                 "CONVEYOR_FORGE_TOKEN_FILE", reason="InvalidForge")
        return self.token

    def auth(self) -> dict[str, str]:
        """The headers that carry the token, as this forge expects them."""
        token = self.read_token()
        if self.kind == "github":
            return {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                    "X-GitHub-Api-Version": "2022-11-28"}
        if self.kind == "gitlab":
            return {"PRIVATE-TOKEN": token}
        if self.kind == "bitbucket":
            if self.username:
                basic = base64.b64encode(f"{self.username}:{token}".encode()).decode()
                return {"Authorization": f"Basic {basic}", "Accept": "application/json"}
            return {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        return {"Authorization": f"token {token}"}


def repo_path(settings: ForgeSettings, source_url: str) -> str:
    if settings.repo:
        return settings.repo
    try:
        path = parse(source_url).path
    except ValueError:
        path = source_url
    path = path.strip("/").removesuffix(".git")
    if path.count("/") < 1:
        raise PermanentError(f"cannot tell the forge repository from {source_url!r}: set "
                             "CONVEYOR_FORGE_REPO=owner/name", reason="InvalidForge")
    return path
