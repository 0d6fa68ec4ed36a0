"""Pure decisions of the git-watcher: which sources to watch, when to poll them (both in
``sources``, named here too), and which events a set of new commits produces.

Nothing here does I/O: the service hands in what it read (changed paths, a way to read
conveyor.yaml at a commit, the kustomize references of an environment, a signature verdict)
and publishes what comes back.

Signature policy (``sources.<name>.verify``): every commit that would be *announced* (one that
affects at least one environment) is verified, not just the head. A commit that fails is
announced as ``conveyor.commit.rejected`` to each environment it affects and is never rendered;
a later signed commit is deployed normally (its signer vouches for its whole tree). A rejected
commit that edits conveyor.yaml does not change the configuration either. The policy in force
is the one of the configuration *before* the commit, so an unsigned commit cannot switch
verification off.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.adapters.git_local import CommitInfo
from orchestrator.domain import events as ev
from orchestrator.domain.codec import encode
from orchestrator.domain.config import (
    CONFIG_FILE,
    DEFAULT_SOURCE,
    Config,
    EnvironmentConfig,
    VerifyConfig,
    parse_config,
)
from orchestrator.domain.events import Event, new_event
from orchestrator.domain.generators import touches
from orchestrator.domain.payloads import CommitDetected, CommitRejected
from orchestrator.errors import ConfigError
from services.git_watcher import sources
from services.git_watcher.config_check import Bounds, check_config

SOURCE = "conveyor/git-watcher"
# which sources, when: in ``sources``, named here too for the callers that look here
DEFAULT_LOCAL_INTERVAL = sources.DEFAULT_LOCAL_INTERVAL
DEFAULT_REMOTE_INTERVAL = sources.DEFAULT_REMOTE_INTERVAL
MIN_BACKOFF = sources.MIN_BACKOFF
SourceRef = sources.SourceRef
WatchedSource = sources.WatchedSource
backoff_delay = sources.backoff_delay
is_local_url = sources.is_local_url
jittered = sources.jittered
poll_interval = sources.poll_interval
watched_sources = sources.watched_sources


@dataclass(frozen=True, slots=True)
class Verdict:
    """A signature check of one commit; only ``ok`` commits are rendered."""

    ok: bool
    reason: str
    detail: str = ""
    signer: str | None = None
    key: str | None = None
    format: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason, "detail": self.detail[:500],
                "signer": self.signer, "key": self.key, "format": self.format}


Referenced = Callable[[EnvironmentConfig], frozenset[str]]
VerdictFor = Callable[[VerifyConfig | None], Verdict | None]


# --------------------------------------------------------------------------- commits


def env_payload(env: EnvironmentConfig) -> dict[str, Any]:
    """The environment's block as it travels in events: unexpanded (no secret values).

    A generated environment also names its generator and removal policy; a hand-written one
    carries neither, so its digest is what it was before generators existed."""
    payload: dict[str, Any] = {
        "name": env.name, "path": env.path, "source": env.source,
        "target": dict(env.target), "render": dict(env.render), "sync": dict(env.sync),
        "retry": {"limit": env.retry.limit, "base": env.retry.base,
                  "factor": env.retry.factor, "max": env.retry.max}}
    if env.generator:
        payload |= {"generator": env.generator, "onRemove": env.on_remove}
    if env.health:  # absent when unused, so older digests (and events) stay as they were
        payload["health"] = dict(env.health)
    return payload


def env_digest(env: EnvironmentConfig) -> str:
    """Changes when anything an environment's deployment depends on in conveyor.yaml does."""
    text = json.dumps(env_payload(env), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def envs_of(config: Config | None, source: str) -> list[EnvironmentConfig]:
    if config is None:
        return []
    return [e for e in config.environments.values() if e.source == source]


MAX_SUBJECT = 1000  # characters of a commit subject carried in events
MAX_AUTHOR = 300
MAX_CONFIG_BYTES = 256 << 10  # conveyor.yaml travels in config.loaded and the cursor


def capped(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with a marker: a commit's subject is the
    committer's to choose, its size is not everyone else's problem."""
    if len(text) <= limit:
        return text
    return text[:limit] + ev.TRUNCATED.format(len(text[limit:].encode()))


MAX_MERGED = 8  # parents named of an octopus merge


def commit_data(commit: CommitInfo, source: SourceRef) -> dict[str, Any]:
    data: dict[str, Any] = {
        "revision": commit.sha, "short": commit.short,
        "message": capped(commit.subject, MAX_SUBJECT),
        "author": capped(commit.author, MAX_AUTHOR), "committed_at": commit.committed_at,
        "branch": source.branch, "source": source.name, "repo": source.repo}
    if commit.merged:  # a merge commit: what it merged (a pull request's head)
        data["merged"] = list(commit.merged[:MAX_MERGED])
    return data


def is_affected(env: EnvironmentConfig, changed: Sequence[str], referenced: Referenced,
                *, config_counts: bool = True) -> bool:
    """Did a commit that changed ``changed`` touch what this environment renders from?

    ``config_counts``: conveyor.yaml changes count (only in the repository holding it)."""
    if config_counts and CONFIG_FILE in changed:
        return True
    # the health rule files conveyor.yaml names count too: the applier waits by them
    health = [str(env.health[k]) for k in ("customizations", "argocdConfigMap")
              if env.health.get(k)]
    roots = {env.path, *referenced(env), *health}
    for path in changed:
        for root in roots:
            if root == "" or path == root or path.startswith(root.rstrip("/") + "/"):
                return True
    return False


def announce(commit: CommitInfo, source: SourceRef, envs: Sequence[EnvironmentConfig],
             verdict: Callable[[], Verdict | None], *, changed: Sequence[str] | None,
             key: str, extra: Mapping[str, Any] | None = None) -> list[Event]:
    """``commit.detected`` (or ``commit.rejected`` when the verdict says so) for ``envs``."""
    if not envs:
        return []
    check = verdict()
    more = dict(extra or {})
    source_config = more.pop("source_config", None)
    out: list[Event] = []
    for env in envs:
        given: dict[str, Any] = {
            **commit_data(commit, source), "env": env_payload(env),
            "changed": tuple(list(changed or [])[:50]), "source_config": source_config,
            "signature": check.to_dict() if check is not None else None, "extra": more}
        payload: CommitDetected
        if check is not None and not check.ok:
            payload = CommitRejected(**given, reason=check.reason, error=(
                f"commit {commit.short} rejected: {check.reason}"
                + (f" ({check.detail})" if check.detail else "")))
        else:
            payload = CommitDetected(**given)
        out.append(new_event(payload.TYPE, env=env.name, correlation=commit.sha,
                             source=SOURCE, key=key, data=encode(payload)))
    return out


@dataclass(frozen=True, slots=True)
class CommitEvents:
    events: list[Event]
    config: Config | None  # the config in force after this commit (None: still none)
    rejected: bool = False


def _verify_policy(config: Config | None) -> VerifyConfig | None:
    src = config.sources.get(DEFAULT_SOURCE) if config is not None else None
    return src.verify if src is not None else None


def events_for_commit(
    commit: CommitInfo,
    source: SourceRef,
    changed: Sequence[str] | None,  # None: first sight of the source, every environment is due
    config_text: Callable[[], str | None],
    current: Config | None,
    referenced: Referenced,
    verdict: VerdictFor | None = None,
    extra: Mapping[str, Any] | None = None,
    dirs: Callable[[], Sequence[str]] | None = None,
    bounds: Bounds | None = None,
) -> CommitEvents:
    """The events one new commit of the primary source produces, and the config after it.

    ``verdict(policy)`` checks the commit's signature under the policy of the config in
    force before it (or, with none yet, the commit's own); it is only called when the commit
    would produce an event. ``dirs()`` lists the commit's directories, for generators: a commit
    that adds or removes a directory a generator matches changes the environments as surely as
    an edit of conveyor.yaml does.
    """
    config_events: list[Event] = []
    candidate = current
    tree_moved = current is not None and changed is not None and current.reads_tree \
        and touches(current.generators, changed)
    if changed is None or CONFIG_FILE in changed or current is None or tree_moved:
        unreadable: ConfigError | None = None
        try:
            text = config_text()
        except ConfigError as refused:  # e.g. a conveyor.yaml too large to read at all
            text, unreadable = None, refused
        if unreadable is not None:
            config_events.append(config_invalid(commit, source, unreadable))
        elif text is None:
            err = ConfigError(f"no {CONFIG_FILE} at the repository root", file=CONFIG_FILE)
            config_events.append(config_invalid(commit, source, err))
        elif len(text.encode()) > MAX_CONFIG_BYTES:
            err = ConfigError(f"{len(text.encode())} bytes, over the {MAX_CONFIG_BYTES}-byte "
                              "limit of a configuration file", file=CONFIG_FILE)
            config_events.append(config_invalid(commit, source, err))
        else:
            try:
                # adopted only once every check passed: a config that check_config refuses
                # must not take effect (the last good one stays in force)
                parsed = parse_config(text, dirs=dirs() if dirs is not None else None,
                                      pulls=current.pulls if current is not None else ())
                check_config(parsed, bounds or Bounds(primary_repo=source.repo,
                                                      primary_branch=source.branch))
            except ConfigError as err:
                config_events.append(config_invalid(commit, source, err))
            else:
                # re-read only because a generator's directories moved, yet nothing changed
                # (a commit inside envs/dev): no config event. An edit of the file always
                # gets one, even back to the config in force (it clears a config.invalid).
                same = tree_moved and changed is not None and CONFIG_FILE not in changed \
                    and current is not None and parsed.dirs == current.dirs
                if not same:
                    candidate = parsed
                    data = {**commit_data(commit, source), "text": text,
                            "environments": sorted(candidate.environments)}
                    if candidate.reads_tree:
                        data["dirs"] = list(candidate.dirs)
                    config_events.append(new_event(
                        ev.CONFIG_LOADED, env=ev.NO_ENV, correlation=commit.sha, source=SOURCE,
                        key=source.name, data=data))
    in_force = current if current is not None else candidate
    after = candidate
    affected = [env for env in envs_of(after, source.name)
                if changed is None or is_affected(env, changed, referenced)]
    if not affected and not config_events:
        return CommitEvents([], current)
    check = verdict(_verify_policy(in_force)) if verdict is not None else None
    if check is not None and not check.ok:
        # nothing of a rejected commit takes effect, its conveyor.yaml included
        affected = [env for env in envs_of(in_force, source.name)
                    if changed is None or is_affected(env, changed, referenced)]
        return CommitEvents(announce(commit, source, affected, lambda: check, changed=changed,
                                     key=source.name, extra=extra), current, rejected=True)
    removed = removed_envs(current, after, commit, source) if after is not current else []
    return CommitEvents(config_events + removed
                        + announce(commit, source, affected, lambda: check, changed=changed,
                                   key=source.name, extra=extra), after)


def removed_envs(before: Config | None, after: Config | None, commit: CommitInfo,
                 source: SourceRef) -> list[Event]:
    """``environment.removed`` for each environment the new config no longer declares (a
    generator stopped making it, or its block was deleted), carrying its ``onRemove`` policy:
    ``prune`` has the applier clear its target, ``orphan`` leaves the target as it is."""
    if before is None or after is None:
        return []
    return [new_event(ev.ENV_REMOVED, env=name, correlation=commit.sha, source=SOURCE,
                      key=f"{source.name}:removed:{commit.sha}",
                      data={**commit_data(commit, source), "env": env_payload(env),
                            "onRemove": env.on_remove, "generator": env.generator})
            for name, env in sorted(before.environments.items())
            if name not in after.environments]


def events_for_source_commit(
    commit: CommitInfo,
    source: SourceRef,
    changed: Sequence[str] | None,
    config: Config | None,
    referenced: Referenced,
    verdict: Callable[[], Verdict | None],
    extra: Mapping[str, Any] | None = None,
) -> list[Event]:
    """The events one new commit of a secondary source produces (its conveyor.yaml, if any,
    means nothing: configuration comes from the primary source only)."""
    affected = [env for env in envs_of(config, source.name)
                if changed is None or is_affected(env, changed, referenced,
                                                  config_counts=False)]
    return announce(commit, source, affected, verdict, changed=changed, key=source.name,
                    extra=extra)


def stale_envs(config: Config | None, source: str,
               announced: Mapping[str, str]) -> list[EnvironmentConfig]:
    """Environments of ``source`` whose conveyor.yaml block changed (or that are new) since
    the source's head was last announced to them: they are due the current head."""
    return [env for env in envs_of(config, source) if announced.get(env.name) != env_digest(env)]


def config_invalid(commit: CommitInfo, source: SourceRef, err: ConfigError) -> Event:
    return new_event(ev.CONFIG_INVALID, env=ev.NO_ENV, correlation=commit.sha, source=SOURCE,
                     key=source.name,
                     data={**commit_data(commit, source), "error": str(err), "file": err.file,
                           "line": err.line, "field": err.field})
