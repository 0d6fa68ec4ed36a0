"""``GitOps``: release, roll back and promote by committing to the watched branch.

Each action:

1. fetches the branch the watcher follows (``--repo``/``--branch``, or the environment's
   ``source``) into a private bare mirror ``<data-dir>/gitops/<hash>.git``;
2. reads conveyor.yaml *at that head* (the declaration the commit will be judged by) and
   decides what to change (``declaration``, pure edits in ``orchestrator.domain``);
3. commits on the head and pushes without force. A push rejected because someone pushed
   meanwhile fetches the new head and re-applies the *edit* on it (never their tree replaced,
   never a forced push), a bounded number of times; a rejection although the branch did not
   move is a protected branch: the error says to use ``--via pull-request``;
4. or, ``via="pull-request"``, pushes the commit to a new branch ``conveyor/<action>/<env>-
   <short>`` and opens a pull request through the forge's API;
5. publishes ``conveyor.<action>.committed|proposed`` with the commit as ``correlationid``.

Everything blocking runs in a worker thread. Errors are ``ConveyorError`` with a message
written for the person who asked; none carries a secret.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from orchestrator import subjects
from orchestrator.adapters import git_local
from orchestrator.adapters.git_mirror import GitMirror
from orchestrator.adapters.git_source import push_credentials_from_env
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain import history as hist
from orchestrator.domain import promotion
from orchestrator.domain import release as rel
from orchestrator.domain.config import (
    DEFAULT_SOURCE,
    Config,
    EnvironmentConfig,
)
from orchestrator.domain.events import Event, new_event
from orchestrator.domain.rollback import choose
from orchestrator.errors import PermanentError
from orchestrator.gitops import declaration as decl
from orchestrator.gitops.forge import Forge, ForgeSettings, PullRequest
from orchestrator.gitops.promote import promote as promote_into
from orchestrator.gitops.result import BranchProtected as BranchProtected  # re-exported
from orchestrator.gitops.result import Edit, Repo
from orchestrator.gitops.result import Refused as Refused  # re-exported
from orchestrator.gitops.result import Result as Result  # re-exported
from orchestrator.resources import Resources
from orchestrator.secrets import SecretScope
from orchestrator.settings import Settings
from orchestrator.targets.git.push import MAX_ATTEMPTS, Author, PushMirror

log = structlog.get_logger(__name__)

VIAS = ("commit", "pull-request")
AUTHOR = Author("Conveyor", "conveyor@localhost")
HISTORY_STAGES = ("conveyor.commit", "conveyor.render", "conveyor.apply", "conveyor.health")
GATE_STAGES = promotion.GATE_STAGES
CREDENTIALS_HINT = ("the push credentials of the source (CONVEYOR_GIT_PUSH_* or "
                    "CONVEYOR_GIT_* for --repo, "
                    "sources.<name>.credentials for another source)")


Refresh = Callable[[str], object]
"""Ask the watcher to fetch a source now (the source's name), without waiting for it."""


class GitOps:
    """The actions. Built by a composition root (the CLI, the api) with its resources."""

    def __init__(self, resources: Resources, *,
                 forge: ForgeSettings | None = None, environ: Mapping[str, str] | None = None,
                 max_attempts: int = MAX_ATTEMPTS, source: str = "conveyor/gitops",
                 refresh: Refresh | None = None) -> None:
        if not resources.settings.repo:
            raise PermanentError("no source repository: pass --repo (or CONVEYOR_REPO)",
                                 reason="InvalidSource")
        self.bus: EventBus = resources.bus
        self.settings: Settings = resources.settings
        self.locks = resources.git_locks  # one lock per mirror for the whole Conveyor
        self.environ = os.environ if environ is None else environ
        self.forge = forge
        self.max_attempts = max_attempts
        self.source = source
        # in the watcher's own process (the promoter) a direct call; else a refresh event,
        # which only the api's bus user may publish in k8s/base (docs/security.md)
        self.refresh = refresh

    # ------------------------------------------------------------------ repositories

    async def _branch_of(self, url: str, branch: str, creds: Mapping[str, Any],
                         scope: SecretScope) -> str:
        if branch:
            return branch
        found = await GitMirror(url, self.settings.data_dir / "mirrors",
                                credentials=creds, scope=scope).fetch()
        if not found.branch:
            raise PermanentError(f"{url}: the repository names no default branch; pass "
                                 "--branch", reason="InvalidSource")
        return found.branch

    async def _open(self, url: str, branch: str, creds: Mapping[str, Any],
                    source: str, scope: SecretScope) -> Repo:
        """``scope``: what the credentials' references may reach: the operator's own
        (``CONVEYOR_GIT_*``) unrestricted, a source's from conveyor.yaml only what the
        operator allows (``--env-allow``, ``--secrets-dir``)."""
        branch = await self._branch_of(url, branch, creds, scope)
        mirror = PushMirror(url, branch, self.settings.data_dir, credentials=creds, scope=scope,
                            author=AUTHOR, max_attempts=self.max_attempts, locks=self.locks,
                            kind="source",
                            folder="gitops", credentials_hint=CREDENTIALS_HINT)
        await asyncio.to_thread(mirror.fetch_state)
        return Repo(mirror, mirror.display_url, source)

    async def primary(self) -> Repo:
        """The branch holding conveyor.yaml, fetched now."""
        return await self._open(self.settings.repo, self.settings.branch,
                                push_credentials_from_env(self.environ), DEFAULT_SOURCE,
                                SecretScope.operator(self.environ))

    async def config(self, repo: Repo) -> Config:
        head = self._head(repo)
        return await asyncio.to_thread(decl.read_config, repo.mirror.path, head)

    async def repo_for(self, primary: Repo, config: Config, env: EnvironmentConfig) -> Repo:
        """The branch that holds the environment's declaration (its ``source``)."""
        if env.source == DEFAULT_SOURCE:
            return primary
        source = config.sources[env.source]
        creds = source.raw.get("credentials") or {}
        if not isinstance(creds, Mapping):
            raise PermanentError(f"source {env.source!r}: credentials must be a mapping",
                                 reason="InvalidCredentials")
        scope = self.settings.secrets.scope()
        url = scope.expand(source.url) if source.url else self.settings.repo
        return await self._open(url, source.branch, dict(creds), env.source, scope)

    @staticmethod
    def _head(repo: Repo) -> str:
        head = git_local.branch_head(repo.mirror.path, repo.mirror.branch)
        if head is None:
            raise PermanentError(f"{repo.mirror.where}: the branch does not exist",
                                 reason="InvalidSource")
        return head

    async def resolve(self, env: str) -> tuple[Repo, Config, EnvironmentConfig]:
        if not subjects.valid_env_name(env):
            raise PermanentError(f"invalid environment name {env!r}", reason="InvalidRelease")
        primary = await self.primary()
        config = await self.config(primary)
        env_cfg = decl.environment(config, env)
        return await self.repo_for(primary, config, env_cfg), config, env_cfg

    # ------------------------------------------------------------------ committing

    async def write(self, repo: Repo, edit: Edit, message: str, *, via: str, action: str,
                    env: str) -> tuple[bool, str | None, str | None, int, list[str],
                                       PullRequest | None]:
        """Commit ``edit`` of the head with ``message`` and push it (``via`` commit), or push
        it to a new branch and open a pull request. Returns (changed, commit, parent,
        attempts, files written, pull request)."""
        if via not in VIAS:
            raise PermanentError(f"--via {via!r}: one of {', '.join(VIAS)}",
                                 reason="InvalidRelease")
        written: list[str] = []

        def change(path: Path, head: str | None) -> tuple[str, str] | None:
            if head is None:
                raise PermanentError(f"{repo.mirror.where}: the branch does not exist",
                                     reason="InvalidSource")
            found = edit(path, head)  # on the head as fetched: again after a rejection
            if found is None:
                return None
            files, tree = found
            written[:] = files
            return tree, message

        mirror = repo.mirror
        if via == "commit":
            try:
                pub = await asyncio.to_thread(mirror.update, change, fetched=True)
            except PermanentError as exc:
                if exc.reason == "PushRejected":
                    raise BranchProtected(
                        f"{exc.message}. The branch {mirror.branch} takes no direct pushes "
                        f"from Conveyor: use --via pull-request") from None
                raise
            return pub.changed, pub.commit, pub.parent, pub.attempts, written, None
        if self.forge is None:
            raise PermanentError("--via pull-request needs a forge: the operator sets "
                                 "CONVEYOR_FORGE, CONVEYOR_FORGE_API_URL and "
                                 "CONVEYOR_FORGE_TOKEN", reason="InvalidForge")
        head = self._head(repo)
        branch = f"conveyor/{action}/{env}-{head[:7]}-{os.urandom(3).hex()}"
        pub = await asyncio.to_thread(mirror.update, change, fetched=True, push_to=branch)
        if not pub.changed:
            return False, pub.commit, pub.parent, pub.attempts, written, None
        title = message.splitlines()[0]
        body = "\n".join(message.splitlines()[1:]).strip()
        pr = await Forge(self.forge, repo.url).open(title=title, head=branch,
                                                    base=mirror.branch, body=body)
        return True, pub.commit, pub.parent, pub.attempts, written, pr

    async def publish(self, kind: str, env: str, commit: str, data: dict[str, Any],
                      cause: Event | None = None) -> Event:
        """The action's event (``correlationid`` the commit), then a fetch of the source."""
        event = new_event(kind, env=env, correlation=commit, cause=cause, source=self.source,
                          key=f"{kind}:{commit}", data=data)
        await self.bus.publish(event)
        if data.get("via") == "commit" and self.refresh is not None:
            # the watcher fetches now instead of at its next poll: the commit flows at once
            self.refresh(str(data.get("source") or DEFAULT_SOURCE))
        elif data.get("via") == "commit":
            await self.bus.publish(new_event(
                ev.REFRESH_REQUESTED, env=ev.NO_ENV, cause=event, source=self.source,
                data={"source": str(data.get("source") or DEFAULT_SOURCE), "by": self.source}))
        return event

    # ------------------------------------------------------------------ release

    async def release(self, env: str, images: Sequence[str], sets: Sequence[str] = (), *,
                      message: str = "", via: str = "commit", by: str = "") -> Result:
        """Write images (and Helm values) into ``env``'s declaration as one commit."""
        specs = [rel.parse_image(i) for i in images]
        values = [rel.parse_set(s) for s in sets]
        if not specs and not values:
            raise rel.ReleaseError("a release names at least one --image or --set")
        repo, _, env_cfg = await self.resolve(env)
        summary = ", ".join([*map(str, specs), *map(str, values)])
        subject = (message.strip().splitlines() or [f"Release {env}: {summary}"])[0]
        body = "\n".join(message.strip().splitlines()[1:]).strip()
        text = (f"{subject}\n\n{body + chr(10) + chr(10) if body else ''}"
                f"{rel.trailer(specs, values)}\nConveyor-Environment: {env}\n")

        def edit(path: Path, head: str) -> tuple[list[str], str] | None:
            edits = decl.release_edits(path, head, env_cfg, specs, values)
            if not edits.files:
                return None
            return sorted(edits.files), decl.write_files(path, head, edits.files)

        changed, commit, parent, attempts, files, pr = await self.write(
            repo, edit, text, via=via, action="release", env=env)
        result = Result("release", env, via, changed, commit, parent, repo.mirror.branch,
                        attempts, tuple(files), pr)
        if not changed or commit is None:
            return result
        data: dict[str, Any] = {"images": [str(s) for s in specs], "sets": [str(s) for s in values],
                "commit": commit, "parent": parent, "branch": repo.mirror.branch,
                "repo": repo.url, "source": repo.source, "files": files,
                "attempts": attempts, "via": via, "by": by, "message": subject}
        if pr is not None:
            data["pull_request"] = pr.to_dict()
        kind = ev.RELEASE_PROPOSED if pr is not None else ev.RELEASE_COMMITTED
        event = await self.publish(kind, env, commit, data)
        log.info("gitops.release", env=env, via=via, commit=commit[:12], attempts=attempts)
        return replace(result, event=event)

    # ------------------------------------------------------------------ rollback

    async def attempts(self, env: str) -> list[hist.Attempt]:
        """Every deployment attempt of ``env`` in the log, oldest first."""
        filters = [f for stage in HISTORY_STAGES for f in subjects.filter_for(stage, [env])]
        found = hist.build([(s.seq, s.event) async for s in self.bus.read(filters)])
        return found.get(env, [])

    async def rollback(self, env: str, *, to: str = "", steps: int = 0, via: str = "commit",
                       message: str = "", by: str = "") -> Result:
        """A commit restoring ``env``'s inputs to a revision that deployed to it before."""
        attempts = await self.attempts(env)
        target = choose(env, attempts, to=to, steps=steps)
        repo, _, env_cfg = await self.resolve(env)
        if not await asyncio.to_thread(git_local.has_commit, repo.mirror.path, target.revision):
            raise Refused(f"{target.revision[:12]} is not on {repo.mirror.where} any more "
                          "(history rewritten?): nothing to restore from",
                          reason="RollbackRefused")
        head = self._head(repo)
        _, planned = await asyncio.to_thread(decl.restore_inputs, repo.mirror.path, head,
                                             target.revision, env_cfg)

        def edit(path: Path, head: str) -> tuple[list[str], str] | None:
            tree, restored = decl.restore_inputs(path, head, target.revision, env_cfg)
            if tree == git_local.commit_tree(path, head):
                return None
            return restored, tree

        subject = (message.strip().splitlines() or [
            f"Roll back {env} to {target.revision[:7]} ({target.message or 'no message'})"])[0]
        text = (f"{subject}\n\nRestores {', '.join(p or '.' for p in planned)} as at "
                f"{target.revision}.\n\n"
                f"Conveyor-Rollback: {env} {target.revision}\nConveyor-Environment: {env}\n")
        changed, commit, parent, attempts_n, files, pr = await self.write(
            repo, edit, text, via=via, action="rollback", env=env)
        if not changed or commit is None:
            raise Refused(f"{env}'s inputs at the head of {repo.mirror.branch} already equal "
                          f"{target.revision[:12]}'s: nothing to roll back",
                          reason="RollbackRefused")
        data: dict[str, Any] = {
            "to": target.revision, "to_digest": target.digest, "paths": files,
            "commit": commit, "parent": parent, "branch": repo.mirror.branch, "repo": repo.url,
            "source": repo.source, "attempts": attempts_n, "via": via, "by": by,
            "message": subject}
        if pr is not None:
            data["pull_request"] = pr.to_dict()
        kind = ev.ROLLBACK_PROPOSED if pr is not None else ev.ROLLBACK_COMMITTED
        event = await self.publish(kind, env, commit, data)
        log.info("gitops.rollback", env=env, to=target.revision[:12], commit=commit[:12])
        return Result("rollback", env, via, True, commit, parent, repo.mirror.branch,
                      attempts_n, tuple(files), pr, event, {"to": target.revision})

    # ------------------------------------------------------------------ promotion

    async def gate_events(self, env: str) -> list[Event]:
        filters = [f for stage in GATE_STAGES for f in subjects.filter_for(stage, [env])]
        return [s.event async for s in self.bus.read(filters)]

    async def promote(self, source: str, to: str, *, via: str = "", by: str = "",
                      auto: bool = False, now: datetime | None = None) -> Result:
        """Promote what ``source`` runs now into ``to``'s declaration, gates checked first
        (``orchestrator.gitops.promote``)."""
        return await promote_into(self, source, to, via=via, by=by, auto=auto, now=now)
