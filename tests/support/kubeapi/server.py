"""``FakeKubeAPI``: an aiohttp server that answers enough of the Kubernetes API for our client
and for the real ``kubectl`` (discovery, get, list, server-side apply, create, patch, delete).

Test hooks: ``set_status``, ``establish`` (CRDs), ``inject_failure``, ``requests`` (a log of
every request, without credentials) and ``write_kubeconfig`` for pointing ``kubectl`` at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import BasicAuth, web

from .catalog import api_group_list, api_resource_list
from .openapi import openapi_v3_group, openapi_v3_root
from .store import ApiError, Store

JSON = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "conveyor-fake",
           "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24",
           "compiler": "gc", "platform": "linux/amd64"}


@dataclass
class RequestRecord:
    """One request as the server saw it; ``user`` names the credential kind, never its value."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    accept: str
    user: str
    status: int = 0
    body: Any = None


_RECORD = web.RequestKey("record", RequestRecord)


@dataclass
class _Failure:
    pattern: re.Pattern[str]
    code: int
    times: int
    retry_after: float | None
    method: str | None
    message: str


@dataclass
class _Identity:
    tokens: set[str] = field(default_factory=set)
    basic: tuple[str, str] | None = None


_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # libyaml when built with it


def _json(doc: Any, status: int = 200) -> web.Response:
    """A JSON answer, compact as the API server writes it."""
    return web.Response(status=status, body=json.dumps(doc, separators=(",", ":")).encode(),
                        content_type="application/json")


def _not_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode(raw: bytes, *, yaml_ok: bool) -> Any:
    """A request body: JSON, or for ``yaml_ok`` YAML too (JSON is YAML; clients such as kubectl
    send apply patches as JSON, so JSON is tried first, ``NaN``-like constants left to YAML)."""
    if not yaml_ok:
        return json.loads(raw)
    try:
        return json.loads(raw, parse_constant=_not_json_constant)
    except ValueError:
        return yaml.load(raw, Loader=_YAML_LOADER)


def _error(exc: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    resp = _json(exc.status(), exc.code)
    resp.headers.update(headers or {})
    return resp


class FakeKubeAPI:
    """A contract-faithful, in-memory Kubernetes API server on 127.0.0.1 (a free port).

    ``crd_establish``: seconds until a new CRD is Established (``0`` at once, ``None`` only
    when a test calls ``establish(name)``). ``tokens``/``basic``: accepted credentials; with
    neither, requests are anonymous (unless the TLS context demands a client certificate).
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None,
                 tokens: set[str] | None = None, basic: tuple[str, str] | None = None,
                 crd_establish: float | None = 0.0) -> None:
        self.store = Store()
        self.store.on_crd = self._crd_created
        self.requests: list[RequestRecord] = []
        self.identity = _Identity(set(tokens or ()), basic)
        self._ssl = ssl_context
        self._crd_establish = crd_establish
        self._failures: list[_Failure] = []
        self._runner: web.AppRunner | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._changed = asyncio.Condition()
        self.url = ""

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(middlewares=[self._record, self._inject, self._authenticate])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, ssl_context=self._ssl).start()
        self.url = f"{'https' if self._ssl else 'http'}://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeKubeAPI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- test hooks ----------------------------------------------------------------------

    def set_tokens(self, *tokens: str) -> None:
        """Replace the accepted bearer tokens (simulates a credential rotation)."""
        self.identity.tokens = set(tokens)

    def inject_failure(self, path_regex: str, code: int, times: int = 1, *,
                       retry_after: float | None = None, method: str | None = None,
                       message: str | None = None) -> None:
        """Answer the next ``times`` requests whose path matches with a ``code`` Status."""
        self._failures.append(_Failure(re.compile(path_regex), code, times, retry_after,
                                       method, message or f"injected failure ({code})"))

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> JSON | None:
        try:
            return self.store.get(self.store.kind(api_version, kind), namespace, name)
        except ApiError:
            return None

    def set_status(self, api_version: str, kind: str, namespace: str, name: str,
                   status: JSON) -> JSON:
        return self.store.set_status(self.store.kind(api_version, kind), namespace, name, status)

    def establish(self, crd_name: str) -> None:
        self.store.establish(crd_name)

    def requests_to(self, method: str, path_regex: str = "") -> list[RequestRecord]:
        return [r for r in self.requests
                if r.method == method and re.search(path_regex, r.path)]

    def write_kubeconfig(self, path: Path, *, token: str | None = None,
                         ca_pem: bytes | None = None, client_cert_pem: bytes | None = None,
                         client_key_pem: bytes | None = None,
                         namespace: str = "default") -> Path:
        """A kubeconfig with one context (``fake``) pointing at this server."""
        import base64

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        cluster: JSON = {"server": self.url}
        if ca_pem:
            cluster["certificate-authority-data"] = b64(ca_pem)
        user: JSON = {}
        if token:
            user["token"] = token
        if client_cert_pem and client_key_pem:
            user["client-certificate-data"] = b64(client_cert_pem)
            user["client-key-data"] = b64(client_key_pem)
        doc = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
               "clusters": [{"name": "fake", "cluster": cluster}],
               "users": [{"name": "fake", "user": user}],
               "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                         "namespace": namespace}}]}
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path

    def _crd_created(self, name: str) -> None:
        if self._crd_establish == 0:
            self.store.establish(name)
        elif self._crd_establish is not None:
            loop = asyncio.get_running_loop()
            self._timers.append(loop.call_later(self._crd_establish, self._establish_quietly,
                                                name))

    def _establish_quietly(self, name: str) -> None:
        with contextlib.suppress(ApiError):   # deleted before it was established
            self.store.establish(name)

    # -- middlewares ---------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        record = RequestRecord(request.method, request.path, dict(request.query),
                               request.headers.get("Content-Type", ""),
                               request.headers.get("Accept", ""), "anonymous")
        request[_RECORD] = record
        self.requests.append(record)
        try:
            response = await handler(request)
            record.status = response.status
            return response
        finally:
            async with self._changed:  # every request may change what a test awaits
                self._changed.notify_all()

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Await ``condition`` on the server's state (requests, objects), checked after each
        request it answers; no polling."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(condition), timeout)

    @web.middleware
    async def _inject(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        for failure in self._failures:
            if (failure.times > 0 and failure.pattern.search(request.path)
                    and failure.method in (None, request.method)):
                failure.times -= 1
                headers = {}
                if failure.retry_after is not None:
                    headers["Retry-After"] = f"{failure.retry_after:g}"
                return _error(ApiError(failure.code, failure.message), headers)
        return await handler(request)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        record: RequestRecord = request[_RECORD]
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        header = request.headers.get("Authorization", "")
        if peer:
            subject = dict(item[0] for item in peer.get("subject", ()))
            record.user = f"cert:{subject.get('commonName', '')}"
        elif header.startswith("Bearer ") and header[7:] in self.identity.tokens:
            record.user = "bearer"
        elif header.startswith("Basic ") and self.identity.basic:
            try:
                basic = BasicAuth.decode(header)
            except ValueError:
                basic = None
            if basic and (basic.login, basic.password) == self.identity.basic:
                record.user = f"basic:{basic.login}"
        needs_auth = bool(self.identity.tokens or self.identity.basic or header)
        if needs_auth and record.user == "anonymous":
            return _error(ApiError(401, "Unauthorized"))
        return await handler(request)

    # -- routing -------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        try:
            if request.method == "GET":
                doc = self._discovery(parts)
                if doc is not None:
                    return _json(doc)
            if parts[:1] == ["api"] and len(parts) >= 3 and parts[1] == "v1":
                return await self._resource(request, "", "v1", parts[2:])
            if parts[:1] == ["apis"] and len(parts) >= 4:
                return await self._resource(request, parts[1], parts[2], parts[3:])
            raise ApiError(404, "the server could not find the requested resource")
        except ApiError as exc:
            return _error(exc)

    def _discovery(self, parts: list[str]) -> JSON | None:
        types = list(self.store.all_types())
        host = self.url.split("://", 1)[-1]
        match parts:
            case ["version"]:
                return VERSION
            case ["healthz"] | ["livez"] | ["readyz"]:
                return {"status": "ok"}
            case ["api"]:
                return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs":
                        [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]}
            case ["api", "v1"]:
                return api_resource_list("v1", [t for t in types if not t.group])
            case ["apis"]:
                return api_group_list(types)
            case ["apis", group]:
                for g in api_group_list(types)["groups"]:
                    if g["name"] == group:
                        return {"kind": "APIGroup", "apiVersion": "v1", **g}
                raise ApiError(404, "the server could not find the requested resource")
            case ["apis", group, version]:
                found = [t for t in types if (t.group, t.version) == (group, version)]
                if not found:
                    raise ApiError(404, "the server could not find the requested resource")
                return api_resource_list(f"{group}/{version}", found)
            case ["openapi", "v3"]:
                return openapi_v3_root(types)
            case ["openapi", "v3", *gv]:
                return openapi_v3_group("/".join(gv), types)
        return None

    async def _resource(self, request: web.Request, group: str, version: str,
                        parts: list[str]) -> web.StreamResponse:
        namespace = ""
        if parts[0] == "namespaces" and len(parts) >= 3:
            namespace, parts = parts[1], parts[2:]
        if len(parts) > 2:
            raise ApiError(404, "the server could not find the requested resource")
        rt = self.store.resource(group, version, parts[0])
        name = parts[1] if len(parts) == 2 else ""
        if rt.namespaced is False and namespace:
            raise ApiError(404, "the server could not find the requested resource")
        q = request.query
        dry_run = q.get("dryRun") == "All"
        manager = q.get("fieldManager") or request.headers.get("User-Agent", "unknown").split(
            "/")[0]
        store = self.store
        match request.method, bool(name):
            case "GET", True:
                return _json(store.get(rt, namespace, name))
            case "GET", False:
                return _json(self._list(rt, namespace, q))
            case "POST", False:
                body = await self._body(request, yaml_ok=False)
                return _json(store.create(rt, namespace, body, manager, dry_run=dry_run), 201)
            case "PUT", True:
                body = await self._body(request, yaml_ok=False)
                return _json(store.update(rt, namespace, name, body, manager, patch=False,
                                          dry_run=dry_run))
            case "PATCH", True:
                return await self._patch(request, rt, namespace, name, dry_run)
            case "DELETE", True:
                body = await self._body(request, yaml_ok=False, optional=True) or {}
                policy = q.get("propagationPolicy") or body.get("propagationPolicy", "Background")
                return _json(store.delete(rt, namespace, name, propagation=policy,
                                          dry_run=dry_run))
        raise ApiError(405, f"{request.method} is not supported on this path")

    def _list(self, rt: Any, namespace: str, q: Any) -> JSON:
        items = self.store.select(rt, namespace or None, q.get("labelSelector", ""),
                                q.get("fieldSelector", ""))
        meta: JSON = {"resourceVersion": str(self.store.revision)}
        start = int(q.get("continue") or 0)
        limit = int(q.get("limit") or 0)
        if limit and start + limit < len(items):
            meta["continue"] = str(start + limit)
            meta["remainingItemCount"] = len(items) - start - limit
            items = items[start:start + limit]
        else:
            items = items[start:]
        return {"kind": f"{rt.kind}List", "apiVersion": rt.group_version, "metadata": meta,
                "items": items}

    async def _patch(self, request: web.Request, rt: Any, namespace: str, name: str,
                     dry_run: bool) -> web.Response:
        ctype = request.content_type
        q = request.query
        if ctype == "application/apply-patch+yaml":
            manager = q.get("fieldManager")
            if not manager:
                raise ApiError(422, "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: "
                                    "Required value: is required for apply patch")
            if q.get("force", "false") not in ("true", "false"):
                raise ApiError(400, f"invalid force value {q.get('force')!r}")
            body = await self._body(request, yaml_ok=True)
            obj, created = self.store.apply(rt, namespace, name, body, manager,
                                            force=q.get("force") == "true", dry_run=dry_run)
            return _json(obj, 201 if created else 200)
        if ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            body = await self._body(request, yaml_ok=False)
            manager = q.get("fieldManager") or request.headers.get("User-Agent", "unknown").split(
                "/")[0]
            return _json(self.store.update(rt, namespace, name, body, manager, patch=True,
                                           dry_run=dry_run))
        raise ApiError(415, f"the body of the request was in an unknown format - accepted media "
                            f"types include: application/merge-patch+json, "
                            f"application/strategic-merge-patch+json, "
                            f"application/apply-patch+yaml (got {ctype})")

    @staticmethod
    async def _body(request: web.Request, *, yaml_ok: bool, optional: bool = False) -> Any:
        raw = await request.read()
        record: RequestRecord = request[_RECORD]
        if raw and "protobuf" in request.content_type:
            raise ApiError(415, f"the body of the request was in an unknown format - accepted "
                                f"media types include: application/json, application/yaml "
                                f"(got {request.content_type})")
        if not raw.strip():
            if optional:
                return None
            raise ApiError(400, "the request body is empty")
        try:
            body = _decode(raw, yaml_ok=yaml_ok)
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError(400, f"the request body could not be decoded: {exc}") from None
        record.body = body
        return body
