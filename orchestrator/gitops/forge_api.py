"""``ForgeApi``: what differs between forges (paths, payloads, answers, paging), one class per
forge behind this one interface (``forge_github``, ``forge_gitlab``, ``forge_bitbucket``);
``Forge`` and ``PullLister`` keep the flow, the token and the errors."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from orchestrator.domain.generator_pulls import PullRequest as OpenPull
from orchestrator.gitops.forge_settings import PullRequest


class ForgeApi(Protocol):
    """One forge's REST dialect for one repository (``api_url``, ``repo`` = owner/name)."""

    def pull_request(self, title: str, head: str, base: str,
                     body: str) -> tuple[str, dict[str, Any]]:
        """(URL, payload) that opens a pull request."""
        ...

    def opened(self, data: Mapping[str, Any], head: str, base: str) -> PullRequest: ...

    def comments(self, number: int) -> tuple[str, str, str, str]:
        """(first listing page, create URL, edit URL with ``{id}``, edit method)."""
        ...

    def comment_body(self, body: str) -> dict[str, Any]: ...

    def status(self, sha: str, context: str, state: str, description: str, url: str,
               ref: str) -> tuple[str, dict[str, Any]]:
        """(URL, payload) of a commit status; ``state`` is GitHub's word."""
        ...

    def first_pulls(self) -> str:
        """The first page of the open pull requests."""
        ...

    def pull(self, raw: Mapping[str, Any]) -> OpenPull | None:
        """One listed pull request; None for a fork's."""
        ...

    def next_pulls(self, url: str, headers: Mapping[str, str], count: int,
                   data: Any = None) -> str | None: ...


def epoch(value: Any) -> float:
    """An ISO 8601 time (``2026-12-01T10:00:00Z``) as seconds since the epoch; 0 unknown."""
    if not isinstance(value, str) or not value:
        return 0.0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
