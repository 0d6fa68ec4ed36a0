"""Send one event to one route. The provider modules decide the payload; this does the I/O."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from orchestrator.domain.config import expand_all
from orchestrator.domain.events import Event
from orchestrator.errors import PermanentError, TransientError


async def send(session: aiohttp.ClientSession, route: dict[str, Any], event: Event) -> str:
    """Deliver; returns the provider's short answer. Raises Transient/PermanentError."""
    cfg = expand_all(route)
    kind = cfg.get("type")
    if kind != "webhook":
        raise PermanentError(f"notifier type {kind!r} is not supported", reason="BadRoute")
    url = str(cfg.get("url") or "")
    if not url.startswith(("http://", "https://")):
        raise PermanentError("webhook notifier needs an http(s) url", reason="BadRoute")
    body = event.to_json()
    headers = {"Content-Type": "application/cloudevents+json; charset=utf-8"}
    secret = cfg.get("secret")
    if secret:
        mac = hmac.new(str(secret).encode(), body, hashlib.sha256).hexdigest()
        headers["X-Conveyor-Signature"] = f"sha256={mac}"
    async for attempt in AsyncRetrying(retry=retry_if_exception_type(TransientError),
                                       stop=stop_after_attempt(3),
                                       wait=wait_exponential(multiplier=0.2, max=2),
                                       reraise=True):
        with attempt:
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    text = (await resp.text())[:200]
                    if resp.status == 429 or resp.status >= 500:
                        raise TransientError(f"HTTP {resp.status}: {text}")
                    if resp.status >= 400:
                        raise PermanentError(f"HTTP {resp.status}: {text}", reason="Rejected")
                    return f"HTTP {resp.status}"
            except aiohttp.ClientError as exc:
                raise TransientError(f"cannot reach webhook: {type(exc).__name__}") from None
    raise AssertionError("unreachable")
