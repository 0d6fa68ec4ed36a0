"""Pure decisions of the git-watcher: which events a set of new commits produces."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.adapters.git_local import CommitInfo
from orchestrator.domain import events as ev
from orchestrator.domain.config import CONFIG_FILE, Config, EnvironmentConfig, parse_config
from orchestrator.domain.events import Event, new_event
from orchestrator.errors import ConfigError

SOURCE = "conveyor/git-watcher"


@dataclass(frozen=True, slots=True)
class SourceRef:
    name: str
    repo: str
    branch: str


def env_payload(env: EnvironmentConfig) -> dict[str, Any]:
    """The environment's block as it travels in events: unexpanded (no secret values)."""
    return {"name": env.name, "path": env.path, "source": env.source,
            "target": dict(env.target), "render": dict(env.render), "sync": dict(env.sync),
            "retry": {"limit": env.retry.limit, "base": env.retry.base,
                      "factor": env.retry.factor, "max": env.retry.max}}


def commit_data(commit: CommitInfo, source: SourceRef) -> dict[str, Any]:
    return {"revision": commit.sha, "short": commit.short, "message": commit.subject,
            "author": commit.author, "committed_at": commit.committed_at,
            "branch": source.branch, "source": source.name, "repo": source.repo}


def is_affected(env: EnvironmentConfig, changed: Sequence[str],
                referenced: Callable[[EnvironmentConfig], frozenset[str]]) -> bool:
    """Did a commit that changed ``changed`` touch what this environment renders from?"""
    if CONFIG_FILE in changed:
        return True
    roots = {env.path, *referenced(env)}
    for path in changed:
        for root in roots:
            if root == "" or path == root or path.startswith(root.rstrip("/") + "/"):
                return True
    return False


@dataclass(frozen=True, slots=True)
class CommitEvents:
    events: list[Event]
    config: Config | None  # the config in force after this commit (None: still none)


def events_for_commit(
    commit: CommitInfo,
    source: SourceRef,
    changed: Sequence[str] | None,  # None: first sight of the source, every environment is due
    config_text: Callable[[], str | None],
    current: Config | None,
    referenced: Callable[[EnvironmentConfig], frozenset[str]],
) -> CommitEvents:
    """The events one new commit produces, and the config in force after it."""
    out: list[Event] = []
    config = current
    if changed is None or CONFIG_FILE in changed or current is None:
        text = config_text()
        if text is None:
            err = ConfigError(f"no {CONFIG_FILE} at the repository root", file=CONFIG_FILE)
            out.append(_config_invalid(commit, source, err))
        else:
            try:
                config = parse_config(text)
                out.append(new_event(ev.CONFIG_LOADED, env=ev.NO_ENV, correlation=commit.sha,
                                     source=SOURCE, key=source.name,
                                     data={**commit_data(commit, source), "text": text,
                                           "environments": sorted(config.environments)}))
            except ConfigError as err:
                out.append(_config_invalid(commit, source, err))
    if config is None:
        return CommitEvents(out, None)
    for env in config.environments.values():
        if env.source != "default" and env.source != source.name:
            continue
        if changed is None or is_affected(env, changed, referenced):
            out.append(new_event(
                ev.COMMIT_DETECTED, env=env.name, correlation=commit.sha, source=SOURCE,
                key=source.name,
                data={**commit_data(commit, source), "env": env_payload(env),
                      "changed": list(changed or [])[:50]},
            ))
    return CommitEvents(out, config)


def _config_invalid(commit: CommitInfo, source: SourceRef, err: ConfigError) -> Event:
    return new_event(ev.CONFIG_INVALID, env=ev.NO_ENV, correlation=commit.sha, source=SOURCE,
                     key=source.name,
                     data={**commit_data(commit, source), "error": str(err), "file": err.file,
                           "line": err.line, "field": err.field})
