"""api routes: releases, rollbacks and promotions, each written to Git (operator token).

- ``POST /api/v1/environments/{env}/releases`` ``{"images": ["web=reg/web:1.2"],
  "set": ["image.tag=1.2"], "message": "...", "via": "commit|pull-request"}``: what an
  application's CI calls after building an image;
- ``POST /api/v1/environments/{env}/rollback`` ``{"to": SHA} | {"steps": N}``;
- ``POST /api/v1/environments/{env}/promotions`` ``{"from": ENV}``: promote what FROM runs;
- ``GET /api/v1/promotions`` (read, open like the other queries): each promotion path of the
  configuration in force, the revision each end runs and what the gates say now.

All three are control endpoints (``Authorization: Bearer $CONVEYOR_API_TOKEN``). The api
pushes with the credentials the operator gave *its* process (``CONVEYOR_GIT_*``, or the
source's ``credentials``), and opens pull requests with the operator's forge settings
(``CONVEYOR_FORGE*``). Answers: 201 with the commit (or pull request) and the event id; 200
``changed: false`` when the declaration already said so; 400 bad input; 404 unknown
environment; 409 refused (protected branch, a gate, a revision that never deployed); 503 a
transient failure (with ``Retry-After`` when known) or a missing operator setting (no
``--repo``, no forge); 502 the git server or forge refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from orchestrator import subjects
from orchestrator.domain import events as ev
from orchestrator.domain import promotion
from orchestrator.domain.codec import decode_as
from orchestrator.domain.config import parse_config
from orchestrator.domain.payloads import ConfigLoaded
from orchestrator.errors import ConfigError, ConveyorError, PermanentError, TransientError
from orchestrator.gitops.forge import ForgeSettings
from orchestrator.gitops.workflow import GitOps, Result
from orchestrator.resources import Resources
from services.api.context import RESOURCES, control

BAD_INPUT = frozenset({"InvalidRelease", "InvalidConfig"})
REFUSED = frozenset({"BranchProtected", "RollbackRefused", "PromotionRefused", "Refused"})
NOT_CONFIGURED = frozenset({"InvalidSource", "InvalidForge"})  # the operator's settings


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _status(exc: ConveyorError) -> int:
    if isinstance(exc, TransientError) or exc.reason in NOT_CONFIGURED:
        return 503
    if exc.reason in BAD_INPUT:
        return 400
    if exc.reason == "UnknownEnvironment":
        return 404
    if exc.reason in REFUSED:
        return 409
    return 502


async def _run(request: web.Request,
               action: Callable[[GitOps, str, dict[str, Any]], Awaitable[Result]]
               ) -> web.Response:
    env = request.match_info["env"]
    if not subjects.valid_env_name(env):
        return _error(400, f"invalid environment name {env!r}")
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        return _error(400, "the body must be JSON")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    try:
        gitops = GitOps(request.app[RESOURCES], forge=ForgeSettings.from_env(),
                        source="conveyor/api")
        result = await action(gitops, env, body)
    except ConveyorError as exc:
        delay = getattr(exc, "delay", None)
        headers = {"Retry-After": str(int(delay))} if isinstance(exc, TransientError) \
            and delay else {}
        return _error(_status(exc), exc.message, **headers)
    return web.json_response(result.to_dict(), status=201 if result.changed else 200)


def _strings(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PermanentError(f"{key} must be a list of strings", reason="InvalidRelease")
    return value


def _text(body: dict[str, Any], key: str, default: str = "") -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise PermanentError(f"{key} must be a string", reason="InvalidRelease")
    return value


@control
async def release(request: web.Request) -> web.Response:
    async def act(gitops: GitOps, env: str, body: dict[str, Any]) -> Result:
        return await gitops.release(env, _strings(body, "images"), _strings(body, "set"),
                                    message=_text(body, "message"),
                                    via=_text(body, "via", "commit"),
                                    by=f"api {request.remote or ''}".strip())

    return await _run(request, act)


@control
async def rollback(request: web.Request) -> web.Response:
    async def act(gitops: GitOps, env: str, body: dict[str, Any]) -> Result:
        steps = body.get("steps", 0)
        if not isinstance(steps, int) or isinstance(steps, bool):
            raise PermanentError("steps must be a whole number", reason="InvalidRelease")
        return await gitops.rollback(env, to=_text(body, "to"), steps=steps,
                                     via=_text(body, "via", "commit"),
                                     by=f"api {request.remote or ''}".strip())

    return await _run(request, act)


@control
async def promote(request: web.Request) -> web.Response:
    async def act(gitops: GitOps, env: str, body: dict[str, Any]) -> Result:
        source = _text(body, "from")
        if not source:
            raise PermanentError("from must name the environment to promote from",
                                 reason="InvalidRelease")
        return await gitops.promote(source, env, via=_text(body, "via"),
                                    by=f"api {request.remote or ''}".strip())

    return await _run(request, act)


async def _runs(resources: Resources, env: str) -> str:
    """The revision of the environment's last deployment, from the log itself."""
    found = [s for s in [await resources.bus.last_event(env, ev.APPLY_SUCCEEDED),
                         await resources.bus.last_event(env, ev.APPLY_SKIPPED)]
             if s is not None]
    return max(found, key=lambda s: s.seq).event.correlationid if found else ""


async def promotions(request: web.Request) -> web.Response:
    """The promotion paths of the configuration in force, what each end runs now and what
    the gates say at this moment (read-only: nothing is published)."""
    resources = request.app[RESOURCES]
    bus = resources.bus
    loaded = await bus.last_event(ev.NO_ENV, ev.CONFIG_LOADED)
    config = None
    if loaded is not None:
        found = decode_as(loaded.event, ConfigLoaded)
        with contextlib.suppress(ConfigError):
            config = parse_config(found.text, dirs=None if found.dirs is None
                                  else [str(d) for d in found.dirs])
    out = []
    now = datetime.now(UTC)
    for rule in (config.promotion.values() if config is not None else []):
        filters = [f for stage in promotion.GATE_STAGES
                   for f in subjects.filter_for(stage, [rule.source])]
        verdict = promotion.check(rule.source, [s.event async for s in bus.read(filters)],
                                  soak=rule.healthy_for, now=now)
        out.append({"to": rule.to, "from": rule.source, "auto": rule.auto,
                    "healthyFor": rule.healthy_for, "via": rule.via, "files": list(rule.files),
                    "from_runs": verdict.revision,
                    "to_runs": await _runs(resources, rule.to),
                    "gate": {"allowed": verdict.allowed, "reason": verdict.reason,
                             "healthy_since": verdict.healthy_since}})
    return web.json_response({"promotions": out})


def add_routes(app: web.Application) -> None:
    """Register this module's routes on the api application."""
    app.router.add_post("/api/v1/environments/{env}/releases", release)
    app.router.add_post("/api/v1/environments/{env}/rollback", rollback)
    app.router.add_post("/api/v1/environments/{env}/promotions", promote)
    app.router.add_get("/api/v1/promotions", promotions)
