"""Notification providers, one module each; ``create(kind, settings)`` picks one.

Every provider is pure (see ``base.Provider``): ``build`` gives the request, ``read`` reads the
answer. Adding a provider is one module plus one line in ``_FACTORIES``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from orchestrator.domain.events import Event
from orchestrator.notify.providers import (
    discord,
    github,
    gitlab,
    googlechat,
    mattermost,
    slack,
    teams,
    webhook,
)
from orchestrator.notify.providers.base import Provider, config_error

__all__ = ["KINDS", "STATUS_KINDS", "Provider", "accepts", "create"]

_FACTORIES: Mapping[str, Callable[[Mapping[str, Any], str], Provider]] = MappingProxyType({
    "slack": slack.from_settings,
    "teams": teams.Teams.from_settings,
    "discord": discord.Discord.from_settings,
    "mattermost": mattermost.Mattermost.from_settings,
    "googlechat": googlechat.GoogleChat.from_settings,
    "webhook": webhook.Webhook.from_settings,
    "github": github.GitHubStatus.from_settings,
    "gitlab": gitlab.GitLabStatus.from_settings,
})
KINDS = frozenset(_FACTORIES)
STATUS_KINDS = frozenset({"github", "gitlab"})
"""Commit-status providers: one status per commit and environment, never coalesced."""


def create(kind: str, settings: Mapping[str, Any], name: str = "") -> Provider:
    """The provider for ``kind`` from *expanded* settings; ``ConfigError`` when invalid."""
    factory = _FACTORIES.get(kind)
    if factory is None:
        raise config_error(f"unknown notifier type {kind!r} (expected one of "
                           f"{', '.join(sorted(KINDS))})", "type", name=name)
    return factory(settings, name)


def accepts(kind: str, event: Event) -> bool:
    """Whether a provider of ``kind`` can say anything about ``event`` at all."""
    if kind == "github":
        return github.accepts(event)
    if kind == "gitlab":
        return gitlab.accepts(event)
    return True
