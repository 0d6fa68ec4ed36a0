"""``KubeClient``: the Kubernetes API over aiohttp, in Conveyor's terms.

Four verbs the applier needs — ``get``, ``list``, ``apply`` (server-side apply) and ``delete``
— addressed by (apiVersion, kind), resolved through ``Discovery``. This is the one retry layer
for a single call: tenacity retries ``TransientError`` (429, 5xx, 409 races, timeouts, broken
connections) a few times, sleeping ``Retry-After`` when the server sends one. A 401 makes the
credential provider refresh (token file re-read, exec plugin re-run) and the request is sent
once more. Everything else surfaces as ``PermanentError`` with the server's message.

A sync sends one request per object, so the CPU a request costs in this process bounds a sync's
throughput as much as the API server does. Hence, on the path every request takes: the first
attempt runs outside tenacity, which steps in only once that attempt has failed transiently
(same attempt numbers, waits and log lines as if it had made it); the URL is built already
encoded; an apply body is compact JSON of a shallow copy (JSON is YAML, so it is a valid
``application/apply-patch+yaml`` body, the form kubectl sends too); and no cookies are kept
(client-go keeps none either).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import structlog
import yarl
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from orchestrator.errors import ManifestError, PermanentError, TransientError

from .discovery import Discovery, Resource
from .errors import classify
from .kubeconfig import KubeConfig

JSON = dict[str, Any]
Sleep = Callable[[float], Awaitable[None]]

log = structlog.get_logger("conveyor.kube")

APPLY_PATCH = "application/apply-patch+yaml"
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_PATH_SAFE = "/:@!$&'()*+,;=%"
"""Left as they are in a path (``%``: a caller's own escapes; Kubernetes names have none)."""


@functools.lru_cache(maxsize=64)
def _query(params: tuple[tuple[str, str], ...]) -> str:
    """The encoded query string (cached: an apply's parameters are the same for every object)."""
    return urlencode(params)


class KubeClient:
    """An async Kubernetes API client for one server and one identity.

    ``attempts`` bounds tenacity's retries of transient failures for each call; ``max_delay``
    caps any wait including ``Retry-After``; ``sleep`` is injectable so tests need not wait.
    """

    def __init__(self, config: KubeConfig, *, timeout: float = 30.0, attempts: int = 4,
                 max_delay: float = 30.0, sleep: Sleep = asyncio.sleep,
                 user_agent: str = "conveyor/0.1") -> None:
        self.config = config
        self._ssl = config.ssl_context()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._attempts = attempts
        self._max_delay = max_delay
        self._backoff = wait_exponential_jitter(multiplier=0.2, max=max_delay, jitter=0.2)
        self._sleep = sleep
        self._user_agent = user_agent
        self._http: aiohttp.ClientSession | None = None
        server = yarl.URL(config.server)   # encoded once (an IDNA host, escapes in a prefix)
        self._origin = (server.scheme, server.raw_authority, server.raw_path.rstrip("/"))
        self.discovery = Discovery(lambda path: self.request("GET", path, missing_ok=True))

    def __repr__(self) -> str:
        return f"KubeClient({self.config!r})"

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- the four verbs ------------------------------------------------------------------

    async def resource(self, api_version: str, kind: str) -> Resource:
        return await self.discovery.resolve(api_version, kind)

    def _namespace(self, res: Resource, namespace: str | None) -> str | None:
        return (namespace or self.config.namespace) if res.namespaced else None

    async def get(self, api_version: str, kind: str, namespace: str | None,
                  name: str) -> JSON | None:
        res = await self.resource(api_version, kind)
        return await self.request("GET", res.path(self._namespace(res, namespace), name),
                                  missing_ok=True)

    async def list(self, api_version: str, kind: str, namespace: str | None = None, *,
                   label_selector: str | Mapping[str, str] | None = None,
                   field_selector: str | None = None, page_size: int = 500) -> list[JSON]:
        """Every matching object (all namespaces when ``namespace`` is None), paged."""
        res = await self.resource(api_version, kind)
        params: dict[str, str] = {"limit": str(page_size)}
        if isinstance(label_selector, Mapping):
            label_selector = ",".join(f"{k}={v}" for k, v in label_selector.items())
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        path = res.path(namespace if res.namespaced else None)
        items: list[JSON] = []
        while True:
            page = await self.request("GET", path, params=params) or {}
            for item in page.get("items") or ():
                items.append({"apiVersion": api_version, "kind": kind, **item})
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items
            params["continue"] = token

    async def apply(self, obj: Mapping[str, Any], *, field_manager: str = "conveyor",
                    force: bool = False, dry_run: bool = False) -> JSON:
        """Server-side apply ``obj``; returns the object as the server now has it."""
        meta = obj.get("metadata")
        if not obj.get("apiVersion") or not obj.get("kind") or not isinstance(meta, Mapping) \
                or not meta.get("name"):
            raise ManifestError(["an applied object needs apiVersion, kind and metadata.name"])
        meta = dict(meta)   # the only part changed below: ``obj`` is not
        body = {**obj, "metadata": meta}
        res = await self.resource(body["apiVersion"], body["kind"])
        namespace = self._namespace(res, meta.get("namespace"))
        if namespace is None:
            meta.pop("namespace", None)
        params = {"fieldManager": field_manager, "force": "true" if force else "false"}
        if dry_run:
            params["dryRun"] = "All"
        out = await self.request("PATCH", res.path(namespace, meta["name"]), params=params,
                                 body=_COMPACT.encode(body).encode(), content_type=APPLY_PATCH)
        assert out is not None
        return out

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str, *,
                     propagation: str = "Background", dry_run: bool = False) -> bool:
        """Delete; ``False`` if it was already gone.

        A retried DELETE whose first attempt reached the server but lost its answer sees 404
        and reports ``False``: the object is gone either way.
        """
        res = await self.resource(api_version, kind)
        options = {"kind": "DeleteOptions", "apiVersion": "v1",
                   "propagationPolicy": propagation}
        params = {"dryRun": "All"} if dry_run else None
        out = await self.request("DELETE", res.path(self._namespace(res, namespace), name),
                                 params=params, body=json.dumps(options).encode(),
                                 content_type="application/json", missing_ok=True)
        return out is not None

    async def version(self) -> JSON:
        return await self.request("GET", "/version") or {}

    # -- one call, retried ---------------------------------------------------------------

    async def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                      body: bytes | None = None, content_type: str | None = None,
                      missing_ok: bool = False) -> JSON | None:
        """Send one API call with retries; ``None`` for a 404 when ``missing_ok``."""
        url = self._url(path, params)
        try:
            return await self._send(method, path, url, body, content_type, missing_ok)
        except TransientError as exc:
            failed: TransientError | None = exc
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts), wait=self._wait,
            retry=retry_if_exception_type(TransientError), sleep=self._sleep, reraise=True,
            before_sleep=self._log_retry)
        async for attempt in retrying:
            with attempt:
                if failed is not None:   # attempt 1, already made: tenacity takes it from here
                    first, failed = failed, None
                    raise first
                return await self._send(method, path, url, body, content_type, missing_ok)
        raise AssertionError("unreachable")   # pragma: no cover

    def _url(self, path: str, params: Mapping[str, str] | None) -> yarl.URL:
        scheme, authority, prefix = self._origin
        return yarl.URL.build(scheme=scheme, authority=authority,
                              path=prefix + quote(path, safe=_PATH_SAFE),
                              query_string=_query(tuple(params.items())) if params else "",
                              encoded=True)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientError) and exc.delay is not None:
            return min(exc.delay, self._max_delay)
        return float(self._backoff(state))

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("kube.retry", attempt=state.attempt_number, error=str(exc),
                    delay=round(state.upcoming_sleep, 3))

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl else True),
                timeout=self._timeout, headers={"User-Agent": self._user_agent},
                cookie_jar=aiohttp.DummyCookieJar())
        return self._http

    async def _send(self, method: str, path: str, url: yarl.URL, body: bytes | None,
                    content_type: str | None, missing_ok: bool) -> JSON | None:
        creds = self.config.credentials
        refreshed = False
        while True:
            headers = {"Accept": "application/json"}
            auth = await creds.authorization()
            if auth:
                headers["Authorization"] = auth
            if content_type:
                headers["Content-Type"] = content_type
            started = time.monotonic()
            try:
                async with self._session().request(
                        method, url, data=body, headers=headers,
                        server_hostname=self.config.tls_server_name) as resp:
                    data = await resp.read()
                    code, retry_after = resp.status, resp.headers.get("Retry-After")
            except aiohttp.ClientSSLError as exc:
                raise PermanentError(f"{method} {path}: TLS with {self.config.server} failed: "
                                     f"{exc}", reason="TLSError") from None
            except aiohttp.ClientError as exc:
                raise TransientError(f"{method} {path}: {type(exc).__name__}: {exc}",
                                     reason="Unavailable") from None
            except TimeoutError:
                raise TransientError(f"{method} {path}: no answer within "
                                     f"{self._timeout.total:g}s", reason="Timeout") from None
            log.debug("kube.request", method=method, path=path, status=code,
                      ms=round((time.monotonic() - started) * 1000, 1))
            if code == 401 and not refreshed and creds.invalidate():
                refreshed = True
                continue
            break
        if 200 <= code < 300:
            try:
                out: JSON = json.loads(data)
            except ValueError:
                raise TransientError(f"{method} {path}: the server answered {code} with a body "
                                     "that is not JSON", reason="BadResponse") from None
            return out
        if code == 404 and missing_ok:
            return None
        raise classify(code, data, method=method, path=path, retry_after=retry_after)
