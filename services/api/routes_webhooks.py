"""api routes: webhooks from git hosts -> a fetch of the sources they name.

``POST /api/v1/webhooks/{github|gitlab|gitea|forgejo|bitbucket|generic}``

1. **Size** first: a ``Content-Length`` over the cap (``CONVEYOR_WEBHOOK_MAX_BYTES``, default
   1 MiB) is refused with 413 before reading anything, and the read itself stops at the cap
   (chunked bodies have no length to check).
2. **Sender**: the raw body is verified with ``webhooks.verify`` (constant-time) against the
   secrets that apply. ``CONVEYOR_WEBHOOK_SECRET`` (every provider) and
   ``CONVEYOR_WEBHOOK_SECRET_<PROVIDER>`` authorise a delivery for every source; a source's
   own ``webhook.secret`` (conveyor.yaml, a ``${VAR}`` of a name the operator allows)
   authorises it for that source only. No secret that verifies: 401, nothing happens.
3. **Replay**: the digest of the signed body (never the delivery header, which no signature
   covers) is remembered in the state bucket (``webhook.<provider>.<digest>``, pruned after
   ``DEDUPE_TTL``); a body seen before answers 200 ``{"ignored": "duplicate delivery"}``,
   whatever delivery id it comes with. The refresh events' ids derive from it too, so two
   copies racing are still one fetch.
4. **Match**: a push names its repository by several URLs; each is normalised and compared
   with the sources' URLs, and the pushed branch with the source's branch (a source whose
   branch is not known yet matches any). Each matching source gets a
   ``conveyor.refresh.requested`` with ``data.source``: the watcher fetches that source and
   announces what it finds. The SHA in the payload is never trusted, only fetched.

Answers: 202 ``{"matched": [...]}`` (possibly empty), 200 for a ping and for events that are
not pushes, 400 for a body that is not JSON, 404 for an unknown provider.

Configuration comes from the log: the newest ``conveyor.config.loaded`` (the watcher only
emits it for a valid conveyor.yaml), parsed once per new event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from orchestrator import subjects
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.codec import decode
from orchestrator.domain.config import DEFAULT_SOURCE, Config, parse_config
from orchestrator.domain.events import new_event
from orchestrator.domain.giturls import normalise
from orchestrator.domain.payloads import ConfigLoaded
from orchestrator.domain.webhooks import PROVIDERS, PushEvent, parse_push, verify
from orchestrator.errors import ConfigError, ConflictError, PermanentError
from orchestrator.secrets import SecretScope
from services.api.context import BUS, RESOURCES, SETTINGS

log = structlog.get_logger(__name__)

SOURCE = "conveyor/api"
DEFAULT_MAX_BYTES = 1 << 20
DEDUPE_PREFIX = "webhook."
DEDUPE_TTL = 3 * 24 * 3600.0  # GitHub lets a delivery be redelivered for 3 days
PRUNE_EVERY = 3600.0
BODY_TIMEOUT = 30.0  # seconds to receive a whole delivery (git hosts send at once)


@dataclass(frozen=True, slots=True)
class HookSource:
    """A source as webhooks see it: its repository key, branch ("" = any) and own secret."""

    name: str
    key: str | None
    branch: str
    secret: str | None = field(default=None, repr=False)  # its value, from the reference


@dataclass
class _State:
    config_seq: int = -1
    config: Config | None = None
    primary_branch: str = ""
    last_prune: float = 0.0


STATE: web.AppKey[_State] = web.AppKey("webhook_state", _State)


def add_routes(app: web.Application) -> None:
    """Register this module's routes on the api application."""
    app[STATE] = _State()
    app.router.add_post("/api/v1/webhooks/{provider}", receive)


def max_bytes(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    raw = env.get("CONVEYOR_WEBHOOK_MAX_BYTES", "")
    try:
        return int(raw) if raw.strip() else DEFAULT_MAX_BYTES
    except ValueError:
        log.warning("webhook.bad_max_bytes", value=raw)
        return DEFAULT_MAX_BYTES


def global_secrets(provider: str, environ: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    names = ("CONVEYOR_WEBHOOK_SECRET", f"CONVEYOR_WEBHOOK_SECRET_{provider.upper()}")
    return [env[n] for n in names if env.get(n)]


def _key(url: str) -> str | None:
    try:
        return normalise(url)
    except ValueError:
        return None


def hook_sources(config: Config | None, primary_repo: str, primary_branch: str,
                 scope: SecretScope | None = None) -> list[HookSource]:
    """The sources a webhook can name (the primary one is ``default``); conveyor.yaml's
    references reach only what ``scope`` allows (the operator's ``--env-allow``)."""
    reach = scope if scope is not None else SecretScope({}, ())
    cfg = config.sources if config is not None else {}
    base = cfg.get(DEFAULT_SOURCE)
    out = [HookSource(DEFAULT_SOURCE, _key(primary_repo),
                      primary_branch or (base.branch if base else ""),
                      _source_secret(base.webhook_secret if base else None, reach))]
    for name, src in cfg.items():
        if name == DEFAULT_SOURCE:
            continue
        url = src.url.strip() or primary_repo
        try:
            url = reach.expand(url)
        except ConfigError:
            continue
        branch = src.branch or ("" if src.url.strip() else primary_branch)
        out.append(HookSource(name, _key(url), branch, _source_secret(src.webhook_secret,
                                                                      reach)))
    return out


def _source_secret(ref: str | None, scope: SecretScope) -> str | None:
    if ref is None:
        return None
    try:
        return scope.expand(ref) or None
    except ConfigError as exc:
        log.warning("webhook.secret_unset", reference=ref, reason=exc.message)
        return None


def authorised_sources(provider: str, headers: Mapping[str, str], body: bytes,
                       sources: list[HookSource]) -> set[str]:
    """The sources this delivery may trigger: all of them with a global secret, else those
    whose own secret verifies it."""
    if verify(provider, headers, body, global_secrets(provider)):
        return {s.name for s in sources}
    out: set[str] = set()
    for src in sources:
        if src.secret is not None and verify(provider, headers, body, [src.secret]):
            out.add(src.name)
    return out


def matching(push: PushEvent, sources: list[HookSource], allowed: set[str]) -> list[str]:
    branches = {u.branch for u in push.updates} or ({push.branch} if push.branch else set())
    out = []
    for src in sources:
        if src.name not in allowed or src.key is None or not push.matches({src.key}):
            continue
        if src.branch and src.branch not in branches:
            continue
        out.append(src.name)
    return sorted(out)


async def _read_capped(request: web.Request, cap: int) -> bytes | None:
    """The body, or None as soon as it exceeds ``cap`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _config(app: web.Application, bus: EventBus) -> _State:
    state = app[STATE]
    found = await bus.last_event(ev.NO_ENV, ev.CONFIG_LOADED)
    if found is None or found.seq == state.config_seq:
        return state
    state.config_seq = found.seq
    loaded = decode(found.event)
    text = loaded.text if isinstance(loaded, ConfigLoaded) else ""
    state.primary_branch = loaded.branch if isinstance(loaded, ConfigLoaded) else ""
    try:
        state.config = parse_config(text)
    except ConfigError as exc:  # the watcher validated it; a newer schema than ours?
        log.warning("webhook.config_unreadable", error=str(exc))
    return state


async def _branch_of(bus: EventBus, source: HookSource) -> HookSource:
    """Fill in the branch the watcher resolved for a source configured without one."""
    if source.branch:
        return source
    found = await bus.kv_get(subjects.STATE_BUCKET, f"watcher.{source.name}")
    branch = str(found[0].get("branch") or "") if found else ""
    return HookSource(source.name, source.key, branch, source.secret)


def _delivery_key(provider: str, delivery: str) -> str:
    return f"{DEDUPE_PREFIX}{provider}.{hashlib.sha256(delivery.encode()).hexdigest()[:40]}"


async def _seen(bus: EventBus, key: str) -> bool:
    return await bus.kv_get(subjects.STATE_BUCKET, key) is not None


async def _remember(bus: EventBus, key: str, matched: list[str]) -> None:
    with contextlib.suppress(ConflictError):
        await bus.kv_put(subjects.STATE_BUCKET, key, {"at": time.time(), "matched": matched},
                         expect_revision=0)


async def prune(bus: EventBus, *, ttl: float = DEDUPE_TTL, now: float | None = None) -> int:
    """Forget delivery ids older than ``ttl``; returns how many were purged."""
    kv = bus.kv(subjects.STATE_BUCKET)
    try:
        # (keys(filters=...) of nats-py 2.x finds nothing here: filter client-side)
        keys = [k for k in await kv.keys() if k.startswith(DEDUPE_PREFIX)]
    except Exception:  # nats raises NoKeysError on an empty bucket
        return 0
    limit = (time.time() if now is None else now) - ttl
    purged = 0
    for key in keys:
        found = await bus.kv_get(subjects.STATE_BUCKET, key)
        if found is not None and float(found[0].get("at", 0)) < limit:
            await kv.purge(key)
            purged += 1
    return purged


def _maybe_prune(app: web.Application, bus: EventBus) -> None:
    state = app[STATE]
    now = time.monotonic()
    if now - state.last_prune < PRUNE_EVERY and state.last_prune:
        return
    state.last_prune = now

    async def run() -> None:
        try:
            purged = await prune(bus)
            if purged:
                log.info("webhook.pruned", deliveries=purged)
        except Exception as exc:
            log.warning("webhook.prune_failed", error=str(exc))

    app[RESOURCES].background.spawn(run(), name="webhook:prune")


async def receive(request: web.Request) -> web.Response:

    provider = request.match_info["provider"].lower()
    if provider not in PROVIDERS:
        return web.json_response({"error": f"unknown provider {provider!r}",
                                  "providers": list(PROVIDERS)}, status=404)
    cap = max_bytes()
    length = request.content_length
    if length is not None and length > cap:
        return web.json_response({"error": f"payload over {cap} bytes"}, status=413)
    try:
        async with asyncio.timeout(BODY_TIMEOUT):  # a sender trickling bytes holds no slot
            body = await _read_capped(request, cap)
    except TimeoutError:
        return web.json_response({"error": f"body not received within {BODY_TIMEOUT:.0f}s"},
                                 status=408)
    if body is None:
        return web.json_response({"error": f"payload over {cap} bytes"}, status=413)
    bus, settings = request.app[BUS], request.app[SETTINGS]
    state = await _config(request.app, bus)
    sources = hook_sources(state.config, settings.repo, settings.branch or state.primary_branch,
                           settings.secrets.scope())
    headers = dict(request.headers)
    allowed = authorised_sources(provider, headers, body, sources)
    if not allowed:
        log.warning("webhook.unauthorised", provider=provider, remote=request.remote)
        return web.json_response({"error": "missing or invalid signature"}, status=401)
    try:
        push = parse_push(provider, headers, body)
    except PermanentError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    if push.kind == "ping":
        return web.json_response({"ok": True, "event": "ping"})
    if push.kind != "push":
        return web.json_response({"ignored": "not a branch push"})
    # Replays are recognised by the signed body, never by the delivery header: the signature
    # does not cover headers, so a captured delivery re-sent with a fresh id would pass a
    # header-keyed check. (A redelivery from the git host is the same body.)
    signed = "body:" + hashlib.sha256(body).hexdigest()
    delivery = (push.delivery_id or signed)[:128]  # an unsigned header: bounded
    seen_key = _delivery_key(provider, signed)
    if await _seen(bus, seen_key):
        return web.json_response({"ignored": "duplicate delivery", "delivery": delivery})
    _maybe_prune(request.app, bus)
    resolved = [await _branch_of(bus, s) for s in sources]
    matched = matching(push, resolved, allowed)
    published = [await bus.publish(new_event(
        ev.REFRESH_REQUESTED, env=ev.NO_ENV, source=SOURCE,
        key=f"webhook:{provider}:{signed}:{name}",
        data={"source": name, "by": f"webhook:{provider}", "delivery": delivery,
              "branches": sorted({u.branch for u in push.updates})}))
        for name in matched]
    await _remember(bus, seen_key, matched)
    if published and all(p.duplicate for p in published):
        return web.json_response({"ignored": "duplicate delivery", "delivery": delivery})
    log.info("webhook.received", provider=provider, delivery=delivery, matched=matched)
    return web.json_response({"matched": matched, "delivery": delivery}, status=202)
