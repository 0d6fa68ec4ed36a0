"""api route: pull-request previews from signed ``pull_request`` webhooks.

``POST /api/v1/previews/{github|gitlab|gitea|forgejo|bitbucket}``: configure it as the pull
request webhook of the repository (event "Pull requests"; Bitbucket Cloud: the triggers "Pull
request: Created" and "Updated"), content type JSON, the same secret as the push webhook
(``CONVEYOR_WEBHOOK_SECRET[_<PROVIDER>]`` or the primary source's ``webhook.secret``). A delivery
that no secret verifies is refused (401) before its body is read as JSON. Opened, synchronized
and reopened pull requests are previewed in the background (202); other actions are ignored
(200), and so are Bitbucket pull requests from forks (Bitbucket serves their head only in the
fork, whose URL the operator never configured). The preview posts with the operator's forge
settings (``CONVEYOR_FORGE`` of the same forge, ``CONVEYOR_FORGE_TOKEN``...). Previews of one
pull request run one at a time (the comment is found, then updated or created: two at once
could create two). See ``orchestrator.gitops.preview``.
"""

from __future__ import annotations

import asyncio
from types import MappingProxyType

import structlog
from aiohttp import web

from orchestrator.domain import events as ev
from orchestrator.domain.codec import decode_as
from orchestrator.domain.config import Config, parse_config
from orchestrator.domain.events import new_event
from orchestrator.domain.payloads import ConfigLoaded
from orchestrator.domain.preview import PullRequestEvent, parse_pull_request
from orchestrator.errors import ConfigError, ConveyorError
from orchestrator.gitops.forge import ForgeSettings
from orchestrator.gitops.preview import SOURCE, Previewer
from orchestrator.resources import Resources
from services.api.context import RESOURCES
from services.api.routes_webhooks import authorised_sources, hook_sources

log = structlog.get_logger(__name__)
MAX_BODY = 5 << 20  # GitHub caps deliveries at 25 MB; a pull_request one is a few kB
FORGE_OF = MappingProxyType({"github": "github", "gitea": "gitea", "forgejo": "gitea",
                             "gitlab": "gitlab", "bitbucket": "bitbucket"})
PreviewLocks = dict[tuple[str, int], asyncio.Lock]
LOCKS: web.AppKey[PreviewLocks] = web.AppKey("preview_locks")


async def _config(resources: Resources) -> Config | None:
    found = await resources.bus.last_event(ev.NO_ENV, ev.CONFIG_LOADED)
    if found is None:
        return None
    try:
        return parse_config(decode_as(found.event, ConfigLoaded).text)
    except ConfigError:
        return None


async def _preview(resources: Resources, previewer: Previewer, event: PullRequestEvent,
                   lock: asyncio.Lock) -> None:
    try:
        async with lock:
            await previewer.run(event)
    except ConveyorError as exc:
        log.warning("preview.failed", number=event.number, error=exc.message)
        await resources.bus.publish(new_event(
            ev.PREVIEW_FAILED, env=ev.NO_ENV, correlation=event.head_sha, source=SOURCE,
            key=f"preview-failed:{event.repo}:{event.number}",
            data={"pull_request": event.number, "error": exc.message, "reason": exc.reason}))


async def preview(request: web.Request) -> web.Response:
    provider = request.match_info["provider"]
    if provider not in FORGE_OF:
        return web.json_response({"error": f"previews come from {', '.join(FORGE_OF)}"},
                                 status=404)
    resources = request.app[RESOURCES]
    if request.content_length is not None and request.content_length > MAX_BODY:
        return web.json_response({"error": "the delivery is too large"}, status=413)
    body = await request.read()
    settings = resources.settings
    sources = hook_sources(await _config(resources), settings.repo, settings.branch)[:1]
    if not authorised_sources(provider, request.headers, body, sources):
        return web.json_response({"error": "no webhook secret verifies this delivery"},
                                 status=401)
    try:
        event = parse_pull_request(request.headers, body, provider)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    if event is None:
        return web.json_response({"ignored": "not an opened or updated pull request"})
    if event.fork:
        return web.json_response({"ignored": "a pull request from a fork: its head is not "
                                  "in the repository Conveyor fetches"})
    try:
        forge = ForgeSettings.from_env()
        if forge is None or forge.kind != FORGE_OF[provider]:
            raise ConveyorError(f"previews of {provider} pull requests post to {provider}: "
                                f"the operator sets CONVEYOR_FORGE={provider} and "
                                "CONVEYOR_FORGE_TOKEN", reason="InvalidForge")
        previewer = Previewer(resources, forge)
    except ConveyorError as exc:
        return web.json_response({"error": exc.message}, status=503)
    lock = request.app[LOCKS].setdefault((event.repo, event.number), asyncio.Lock())
    resources.background.spawn(_preview(resources, previewer, event, lock),
                               name=f"preview-{event.number}")
    return web.json_response({"accepted": event.number, "head": event.head_sha}, status=202)


def add_routes(app: web.Application) -> None:
    """Register this module's routes on the api application."""
    app[LOCKS] = {}
    app.router.add_post("/api/v1/previews/{provider}", preview)
