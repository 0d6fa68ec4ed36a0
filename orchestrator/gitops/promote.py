"""Promotion: what FROM runs now, written into TO's declaration, gates checked first.

What is promoted is FROM's *applied* revision (the log's, not the branch head's): the images
its declaration pins at that revision (Kustomize ``images:``, Helm values' ``repository`` and
``tag``, image fields of plain files) and ``promotion.<to>.files``, copied from FROM's
directory to TO's. The gates (``orchestrator.domain.promotion``) are checked against FROM's
events before anything is written; ``promotion.requested`` is published first, then
``refused`` with the reason, or ``committed`` / ``proposed`` (a pull request) with the commit.
TO receives only the images it references unless it is a Kustomize overlay (whose
``images:`` list takes any). Nothing to change (TO runs it already) publishes no outcome.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from orchestrator import subjects
from orchestrator.adapters import git_local
from orchestrator.domain import events as ev
from orchestrator.domain import promotion
from orchestrator.domain import release as rel
from orchestrator.domain.config import PromotionConfig
from orchestrator.domain.events import new_event
from orchestrator.errors import PermanentError
from orchestrator.gitops import declaration as decl
from orchestrator.gitops.result import Actions, Refused, Result

log = structlog.get_logger(__name__)


async def promote(gitops: Actions, source: str, to: str, *, via: str = "", by: str = "",
                  auto: bool = False, now: datetime | None = None) -> Result:
    """Promote what ``source`` runs now into ``to``'s declaration, gates checked first."""
    for name in (source, to):
        if not subjects.valid_env_name(name):
            raise PermanentError(f"invalid environment name {name!r}",
                                 reason="InvalidRelease")
    primary = await gitops.primary()
    config = await gitops.config(primary)
    from_cfg, to_cfg = decl.environment(config, source), decl.environment(config, to)
    rule = config.promotion.get(to) or PromotionConfig(to, source)
    if rule.source != source:
        raise Refused(f"{to} is promoted from {rule.source}, not {source} "
                      "(promotion in conveyor.yaml)", reason="PromotionRefused")
    if from_cfg.source != to_cfg.source:
        raise Refused(f"{source} and {to} are declared in different sources; a promotion "
                      "is one commit in one repository", reason="PromotionRefused")
    verdict = promotion.check(source, await gitops.gate_events(source),
                              soak=rule.healthy_for, now=now or datetime.now(UTC))
    base = {"from": source, "revision": verdict.revision, "auto": auto, "by": by}
    key = (f"auto:{source}:{verdict.revision}" if auto
           else f"manual:{source}:{verdict.revision}:{time.time_ns()}")
    requested = new_event(ev.PROMOTION_REQUESTED, env=to, correlation=verdict.revision,
                          source=gitops.source, key=key, data=base)
    await gitops.bus.publish(requested)
    if not verdict.allowed:
        await gitops.bus.publish(new_event(ev.PROMOTION_REFUSED, env=to, cause=requested,
                                         source=gitops.source,
                                         data={**base, "reason": verdict.reason}))
        raise Refused(f"promotion {source} -> {to} refused: {verdict.reason}",
                      reason="PromotionRefused")
    repo = await gitops.repo_for(primary, config, to_cfg)
    revision = verdict.revision
    if not await asyncio.to_thread(git_local.has_commit, repo.mirror.path, revision):
        raise Refused(f"{source} runs {revision[:12]}, which is not on "
                      f"{repo.mirror.where}", reason="PromotionRefused")
    images = await asyncio.to_thread(decl.images_of, repo.mirror.path, revision, from_cfg)
    wanted: list[rel.ImageSpec] = []

    def edit(path: Path, head: str) -> tuple[list[str], str] | None:
        current = decl.images_of(path, head, to_cfg)
        todo = rel.merge_images(current, images)
        if decl.kind_of(path, head, to_cfg) != "kustomize":  # only what TO references
            todo = [i for i in todo if i.name in {c.name for c in current}]
        wanted[:] = todo
        files: dict[str, str | bytes] = dict(
            decl.release_edits(path, head, to_cfg, todo, []).files) if todo else {}
        for file, data in decl.copy_files(path, revision, from_cfg, to_cfg,
                                          rule.files).items():
            if git_local.read_file(path, head, file) != data:
                files[file] = data
        if not files:
            return None
        return sorted(files), decl.write_files(path, head, files)

    summary = ", ".join(map(str, images)) or ", ".join(rule.files) or "no images"
    text = (f"Promote {source} {revision[:7]} to {to}: {summary}\n\n"
            f"Conveyor-Promotion: {source}@{revision} -> {to}\n"
            f"{rel.trailer(images, []) + chr(10) if images else ''}"
            f"Conveyor-Environment: {to}\n")
    how = via or rule.via
    changed, commit, parent, attempts_n, files, pr = await gitops.write(
        repo, edit, text, via=how, action="promotion", env=to)
    detail = {"from": source, "revision": revision, "images": [str(i) for i in wanted]}
    if not changed or commit is None:
        return Result("promotion", to, how, False, commit, parent, repo.mirror.branch,
                      attempts_n, (), None, None, detail)
    data: dict[str, Any] = {**base, **detail, "files": files, "commit": commit,
                            "parent": parent, "branch": repo.mirror.branch,
                            "repo": repo.url, "source": repo.source,
                            "attempts": attempts_n, "via": how}
    if pr is not None:
        data["pull_request"] = pr.to_dict()
    kind = ev.PROMOTION_PROPOSED if pr is not None else ev.PROMOTION_COMMITTED
    event = await gitops.publish(kind, to, commit, data, cause=requested)
    log.info("gitops.promotion", source=source, to=to, revision=revision[:12],
             commit=commit[:12], auto=auto)
    return Result("promotion", to, how, True, commit, parent, repo.mirror.branch,
                  attempts_n, tuple(files), pr, event, detail)
