"""Pull-request previews: render what a pull request would deploy, diff it, say so on the PR.

For an opened or updated pull request (``orchestrator.domain.preview.PullRequestEvent``):

1. fetch the base branch and the pull request's head (``refs/pull/<n>/head`` as GitHub and
   Gitea serve it, ``refs/merge-requests/<iid>/head`` on GitLab, the source branch itself on
   Bitbucket Cloud, which serves no pull request refs) into a private mirror
   ``<data-dir>/previews/<hash>.git``;
2. take the environments and their render settings from conveyor.yaml *of the base branch*:
   a pull request is untrusted, so its own conveyor.yaml chooses nothing here (its edits to
   conveyor.yaml are previewed once merged);
3. an environment is affected when a path the pull request changes lies under one of the
   paths its render reads at the head (``declaration.inputs_of``);
4. render each affected environment at the head, with the same renderer and the operator's
   ``render_tools`` as any render (a pull request gets no more reach than a commit);
5. diff the objects against the bundle the environment runs (its last ``apply.succeeded`` /
   ``apply.skipped``), object by object, Secret values redacted;
6. post *one* comment per pull request (found again by its marker and updated on each push)
   and a commit status ``conveyor/<env>`` per environment on the head.

Nothing is applied. Events: ``conveyor.preview.rendered`` per environment (subject the
environment, correlation the head) and ``conveyor.preview.posted`` (subject ``_``).
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import structlog

from orchestrator.adapters import git_credentials, git_local, git_mirror, git_transfer, git_tree
from orchestrator.adapters.git_source import push_credentials_from_env
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain import preview as pv
from orchestrator.domain.bundle import decode_bundle, encode_bundle
from orchestrator.domain.codec import decode_as
from orchestrator.domain.config import EnvironmentConfig
from orchestrator.domain.diff import diff
from orchestrator.domain.events import new_event
from orchestrator.domain.giturls import parse
from orchestrator.domain.payloads import ApplySucceeded
from orchestrator.errors import ConveyorError, PermanentError
from orchestrator.gitops import declaration as decl
from orchestrator.gitops.forge import Forge, ForgeSettings
from orchestrator.rendering import render
from orchestrator.resources import Resources
from orchestrator.secrets import SecretScope

log = structlog.get_logger(__name__)
SOURCE = "conveyor/preview"


@dataclass(frozen=True, slots=True)
class PreviewResult:
    previews: tuple[pv.EnvPreview, ...]
    comment_id: int
    created: bool


class Previewer:
    def __init__(self, resources: Resources, forge: ForgeSettings) -> None:
        self.resources = resources
        self.bus: EventBus = resources.bus
        self.settings = resources.settings
        self.forge = forge
        if not self.settings.repo:
            raise PermanentError("previews need the source repository: --repo",
                                 reason="InvalidSource")

    # ------------------------------------------------------------------ blocking parts

    def _mirror(self) -> Path:
        digest = hashlib.sha256(parse(self.settings.repo).key().encode()).hexdigest()[:16]
        path = self.settings.data_dir / "previews" / f"{digest}.git"
        git_mirror.ensure_bare(path)
        return path

    def _fetch(self, event: pv.PullRequestEvent) -> tuple[Path, str, str]:
        path = self._mirror()
        url = parse(self.settings.repo)
        head_ref = f"refs/conveyor/pull/{event.number}"
        # the operator's own credentials of this process, as its releases fetch with them
        # (CONVEYOR_GIT_PUSH_* when set: the api holds no others in k8s/base)
        creds = git_credentials.load_credentials(push_credentials_from_env(), source="preview",
                                                 scope=SecretScope.operator())
        with self.resources.git_locks.lock_for(path):
            git_transfer.fetch_refs(
                git_local.open_repo(path), url,
                [f"+refs/heads/{event.base_ref}:refs/heads/{event.base_ref}",
                 f"+{event.fetch_ref}:{head_ref}"], creds,
                where=f"pull request #{event.number} of {url.display()}",
                check="the source's credentials (CONVEYOR_GIT_PUSH_* or CONVEYOR_GIT_*)")
        repo = git_local.open_repo(path)
        base = str(repo.references[f"refs/heads/{event.base_ref}"].resolve().target)
        head = str(repo.references[head_ref].resolve().target)
        if not head.startswith(event.head_sha):  # Bitbucket gives 12 hex digits
            log.info("preview.head_moved", number=event.number, expected=event.head_sha,
                     found=head)
        return path, base, head

    def _affected(self, path: Path, base: str, head: str) -> list[EnvironmentConfig]:
        config = decl.read_config(path, base)
        changed = git_local.paths_between(path, base, head)
        out = []
        for env in sorted(config.environments.values(), key=lambda e: e.name):
            try:
                inputs = decl.inputs_of(path, head, env)
            except ConveyorError:
                inputs = {env.path}
            if any(p == "" or c == p or c.startswith(p + "/") for p in inputs for c in changed):
                out.append(env)
        return out

    def _render(self, snapshot: Path, env: EnvironmentConfig) -> list[dict[str, object]]:
        result = render(snapshot, env.path, env.render, tools=self.settings.render_tools)
        # through the bundle codec, as the renderer stores what runs: like against like
        return decode_bundle(encode_bundle(m.obj for m in result.manifests))

    # ------------------------------------------------------------------ the preview

    async def _running(self, env: str) -> tuple[str, list[dict[str, object]]]:
        found = [s for s in [await self.bus.last_event(env, ev.APPLY_SUCCEEDED),
                             await self.bus.last_event(env, ev.APPLY_SKIPPED)] if s is not None]
        if not found:
            return "", []
        last = max(found, key=lambda s: s.seq).event
        payload = await self.bus.get_bundle(decode_as(last, ApplySucceeded).digest)
        return last.correlationid, (decode_bundle(payload) if payload is not None else [])

    async def run(self, event: pv.PullRequestEvent) -> PreviewResult:
        path, base, head = await asyncio.to_thread(self._fetch, event)
        envs = await asyncio.to_thread(self._affected, path, base, head)
        previews: list[pv.EnvPreview] = []
        snapshot = Path(tempfile.mkdtemp(prefix="conveyor-preview-"))
        try:
            if envs:
                await asyncio.to_thread(partial(
                    git_tree.export_tree, path, head, snapshot / "tree",
                    max_file_bytes=self.settings.render_tools.max_file_bytes))
            for env in envs:
                running, objects = await self._running(env.name)
                try:
                    rendered = await asyncio.to_thread(self._render, snapshot / "tree", env)
                except ConveyorError as exc:
                    preview = pv.EnvPreview(env.name, error=exc.message, running=running)
                else:
                    preview = pv.EnvPreview(env.name, len(rendered),
                                            tuple(diff(rendered, objects)), running=running)
                previews.append(preview)
                await self.bus.publish(new_event(
                    ev.PREVIEW_RENDERED, env=env.name, correlation=head, source=SOURCE,
                    key=f"preview:{event.repo}:{event.number}:{event.action}",
                    data={"pull_request": event.number, "base": base, **preview.to_dict()}))
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)
        # the repository the delivery names, unless the operator pinned one
        forge = Forge(replace(self.forge, repo=self.forge.repo or event.repo),
                      self.settings.repo)
        comment_id, created = await forge.upsert_comment(
            event.number, pv.comment(event, previews), pv.MARKER)
        for preview in previews:
            state, description = pv.status(preview)
            await forge.set_status(head, f"conveyor/{preview.env}", state, description,
                                   url=event.url, ref=event.head_ref)
        await self.bus.publish(new_event(
            ev.PREVIEW_POSTED, env=ev.NO_ENV, correlation=head, source=SOURCE,
            key=f"preview:{event.repo}:{event.number}:{event.action}",
            data={"pull_request": event.number, "comment": comment_id, "created": created,
                  "environments": [p.env for p in previews]}))
        log.info("preview.posted", number=event.number, head=head[:12],
                 environments=[p.env for p in previews])
        return PreviewResult(tuple(previews), comment_id, created)
