"""Delivering one event to one route: expand, render, build, send with retries, read.

``deliver`` is the only I/O in the package. It never raises for a delivery problem and never
reports success for a send that failed: the ``DeliveryResult`` says delivered or not, whether a
later redelivery may succeed (``retryable``, ``retry_after``), and the reference to the posted
message.

Retries are one layer (STYLE: tenacity inside the adapter, for one call's transient failure):
a bounded number of attempts with exponential backoff and jitter, waiting exactly what a 429's
``Retry-After`` (or Discord's/Slack's ``retry_after``) asks. A wait longer than
``RetryPolicy.max_retry_after`` is not slept here: the result is returned ``retryable`` with
``retry_after`` so the caller can ``nak(delay)`` instead of holding the message. 4xx other than
408/425/429 are permanent and not retried.

Updates: pass the reference an earlier delivery of the same deployment (correlation +
environment) returned as ``previous_ref``; providers that can edit (Slack bot, Discord) or
thread (Google Chat) use it, the others post anew. When the old message is gone or can no
longer be edited, a new one is posted. The caller persists ``DeliveryResult.message_ref``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import aiohttp
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.wait import wait_exponential_jitter
from yarl import URL

from orchestrator.domain.events import Event
from orchestrator.errors import PermanentError, TransientError
from orchestrator.notify import providers
from orchestrator.notify.message import Answer, Request, Response
from orchestrator.notify.providers.base import Provider
from orchestrator.notify.providers.webhook import REDELIVERY_HEADER, Webhook
from orchestrator.notify.routing import Route
from orchestrator.notify.templates import render_route
from orchestrator.secrets import SecretScope

log = structlog.get_logger(__name__)

MAX_ANSWER_BYTES = 1024 * 1024  # Slack echoes the whole message back
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts per delivery and how long to wait between them (seconds)."""

    attempts: int = 4
    initial: float = 0.5
    maximum: float = 8.0
    max_retry_after: float = 30.0
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """How one delivery ended.

    ``status`` is the last HTTP status (``None`` when nothing answered). ``provider_answer`` is
    the provider's reading in words, safe to log and to put in a ``notify.failed`` event (it
    never holds the URL or token). ``message_ref`` is what to pass as ``previous_ref`` next
    time for the same deployment (on failure, the previous one is kept). ``template_error`` is
    set when the route's template failed and the default was sent instead.
    """

    ok: bool
    status: int | None
    provider_answer: str
    message_ref: str | None = None
    retryable: bool = False
    retry_after: float | None = None
    attempts: int = 0
    template_error: str = ""


DEFAULT_POLICY = RetryPolicy()


class _Retry(TransientError):
    """One attempt's retryable failure, carrying the provider's answer."""

    def __init__(self, answer: Answer, status: int | None) -> None:
        super().__init__(answer.detail, reason="NotifyRetry", delay=answer.retry_after)
        self.answer = answer
        self.status = status


async def deliver(
    route: Route,
    event: Event,
    session: aiohttp.ClientSession,
    *,
    previous_ref: str | None = None,
    environ: Mapping[str, str] | None = None,
    scope: SecretScope | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.time,
    redelivery: bool = False,
) -> DeliveryResult:
    """Send ``event`` through ``route``; see the module docstring. Never raises for delivery
    problems (an unset ``${VAR}`` or a bad setting is a permanent, non-retryable result).

    ``redelivery``: an earlier attempt of this very delivery may have reached the receiver;
    the generic webhook says so (``X-Conveyor-Redelivery: 1``, same CloudEvent id)."""
    logger = log.bind(route=route.name, provider=route.type, event_id=event.id,
                      env=event.subject, type=event.type)
    if not providers.accepts(route.type, event):
        return DeliveryResult(False, None, f"a {route.type} notifier cannot report {event.type}"
                                           " (no commit status for it)",
                              message_ref=previous_ref)
    try:
        # conveyor.yaml's references reach only what the operator allows (``scope``);
        # an explicit ``environ`` is the caller's own
        reach = scope if scope is not None else SecretScope.operator(environ or {})
        settings = reach.expand_all(dict(route.settings))
        provider = providers.create(route.type, settings, route.name)
    except PermanentError as exc:
        logger.warning("notify.misconfigured", reason=str(exc))
        return DeliveryResult(False, None, str(exc), message_ref=previous_ref)
    message = render_route(route, event)
    if message.template_error:
        logger.warning("notify.template_failed", reason=message.template_error)
    ref = previous_ref if provider.updates else None
    try:
        request = provider.build(message, event, ref)
        answer, status, attempts = await _send(session, provider, request,
                                               ref, policy, sleep, clock, repeated=redelivery)
        if not answer.ok and answer.stale_ref and ref:
            logger.info("notify.stale_ref", reason=answer.detail)
            ref = None
            answer, status, more = await _send(session, provider,
                                               provider.build(message, event, None),
                                               None, policy, sleep, clock)
            attempts += more
    except PermanentError as exc:  # build found the event or settings unusable
        logger.warning("notify.unbuildable", reason=str(exc))
        return DeliveryResult(False, None, str(exc), message_ref=previous_ref,
                              template_error=message.template_error)
    result = DeliveryResult(
        ok=answer.ok,
        status=status,
        provider_answer=answer.detail,
        # on failure keep the reference unless the old message turned out to be gone
        message_ref=answer.message_ref if answer.ok else (ref if provider.updates
                                                          else previous_ref),
        retryable=not answer.ok and answer.retryable,
        retry_after=None if answer.ok else answer.retry_after,
        attempts=attempts,
        template_error=message.template_error,
    )
    if result.ok:
        logger.info("notify.delivered", status=status, attempts=attempts)
    else:
        logger.warning("notify.failed", status=status, attempts=attempts,
                       retryable=result.retryable, reason=answer.detail)
    return result


def _flagged(provider: Provider, request: Request) -> Request:
    """The request as a possible repeat: the generic webhook says so in a header (the same
    CloudEvent id lets its receiver drop it); the chat and forge APIs get it unchanged."""
    if provider.kind != Webhook.kind:
        return request
    return replace(request, headers={**request.headers, REDELIVERY_HEADER: "1"})


async def _send(session: aiohttp.ClientSession, provider: Provider, request: Request,
                ref: str | None, policy: RetryPolicy, sleep: Sleep,
                clock: Callable[[], float], *,
                repeated: bool = False) -> tuple[Answer, int | None, int]:
    """The request, retried while the answer is retryable; (answer, status, attempts).
    Every attempt after the first, and the first when ``repeated``, may repeat one that
    reached the receiver (a timeout, a 5xx from a receiver that acted anyway)."""
    repeat = _flagged(provider, request)
    backoff = wait_exponential_jitter(multiplier=policy.initial, max=policy.maximum,
                                      jitter=policy.initial)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retry) and exc.delay is not None:
            return exc.delay
        return float(backoff(state))

    def stop(state: RetryCallState) -> bool:
        if state.attempt_number >= policy.attempts:
            return True
        exc = state.outcome.exception() if state.outcome else None
        return isinstance(exc, _Retry) and (exc.delay or 0.0) > policy.max_retry_after

    attempts = 0
    retrying = AsyncRetrying(stop=stop, wait=wait, retry=retry_if_exception_type(_Retry),
                             sleep=sleep, reraise=True)
    try:
        async for attempt in retrying:
            with attempt:
                attempts += 1
                status, answer = await _once(session, provider,
                                             repeat if repeated or attempts > 1 else request,
                                             ref, policy.timeout, clock)
                if not answer.ok and answer.retryable:
                    raise _Retry(answer, status)
    except _Retry as exc:
        return exc.answer, exc.status, attempts
    return answer, status, attempts


async def _once(session: aiohttp.ClientSession, provider: Provider, request: Request,
                ref: str | None, seconds: float,
                clock: Callable[[], float]) -> tuple[int | None, Answer]:
    host = urlsplit(request.url).hostname or "?"
    try:
        async with session.request(
            request.method, URL(request.url, encoded=True), data=request.body,
            headers=dict(request.headers), allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=seconds),
        ) as resp:
            body = bytearray()
            while len(body) < MAX_ANSWER_BYTES:  # read(n) may stop short: loop to EOF or cap
                chunk = await resp.content.read(MAX_ANSWER_BYTES - len(body))
                if not chunk:
                    break
                body += chunk
            response = Response(resp.status, {k.lower(): v for k, v in resp.headers.items()},
                                bytes(body))
    except (aiohttp.ClientError, TimeoutError) as exc:
        # Never str(exc): some aiohttp errors quote the URL, and webhook URLs are secrets.
        return None, Answer(ok=False, retryable=True,
                            detail=f"{type(exc).__name__} while sending to {host}")
    return response.status, provider.read(response, ref=ref, now=clock())
