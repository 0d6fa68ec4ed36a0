"""What keeps a web page in someone's browser from using the api: Host, Origin, headers.

- **Host allowlist** (DNS rebinding): a page on ``evil.example`` whose name is re-pointed at
  127.0.0.1 reaches a loopback api as a *same-origin* request; only its ``Host`` header still
  says ``evil.example``. Requests are answered only for loopback names, the ``--listen``
  address, the operator's ``--allowed-hosts`` (``.example.com`` = the domain and every
  subdomain, ``*`` = any) and the IP address the connection actually arrived on (kubelet probes
  and Prometheus use the pod IP; an IP literal cannot be rebound). Others get 421 Misdirected
  Request. Probes are exempt: they carry no data.
- **Cross-origin writes**: a state-changing request (anything but GET/HEAD/OPTIONS) whose
  ``Sec-Fetch-Site`` is not ``same-origin``/``none``, or whose ``Origin`` is not this Host, is
  refused with 403 before authentication, so a tokenless loopback instance cannot be driven by
  a form or a fetch on another site. Git hosts' webhooks send neither header.
- **Security headers** on every response, dashboard and API alike: a Content-Security-Policy
  (the dashboard's allows this origin's scripts and styles only; everything else
  ``default-src 'none'``), both with ``frame-ancestors 'none'``; ``X-Frame-Options: DENY``,
  ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``; API answers are
  ``Cache-Control: no-store`` unless the handler said otherwise.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from orchestrator.settings import Settings
from services.api.auth import PROBES

LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS: Final = frozenset({"", "0.0.0.0", "::"})
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
SAME_SITE_FETCH: Final = frozenset({"same-origin", "none"})

DASHBOARD_CSP: Final = ("default-src 'self'; script-src 'self'; style-src 'self'; "
                        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                        # the page's forms are handled by its script and never submitted: a
                        # login form submitted by the browser would put the token in a URL
                        "form-action 'none'; frame-ancestors 'none'")
API_CSP: Final = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


def host_name(header: str) -> str:
    """The name in a Host header, lowercased, without port, brackets or a trailing dot."""
    text = header.strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text
    name, sep, port = text.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        text = name
    return text.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostAllowlist:
    """The names the api answers to (see the module docstring)."""

    def __init__(self, listen: str, extra: Iterable[str]) -> None:
        bind = host_name(listen.rpartition(":")[0])
        names = set(LOOPBACK_NAMES) | {host_name(h) for h in extra if h.strip()}
        if bind not in WILDCARD_BINDS:
            names.add(bind)
        self.any = "*" in names
        self.domains = tuple(n for n in names if n.startswith("."))
        self.names = frozenset(n for n in names if not n.startswith("."))

    def allows(self, name: str, local_ip: str | None = None) -> bool:
        if self.any or name in self.names or (local_ip is not None and name == local_ip):
            return True
        return any(name == d[1:] or name.endswith(d) for d in self.domains)


def _local_ip(request: web.Request) -> str | None:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple) and sockname and isinstance(sockname[0], str):
        return sockname[0].lower()
    return None


def host_middleware(settings: Settings) -> Middleware:
    allowlist = HostAllowlist(settings.listen, settings.allowed_hosts)

    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Host")
        if header is not None and request.path not in PROBES:
            name = host_name(header)
            local = _local_ip(request)
            if not allowlist.allows(name, local if local and _is_ip(name) else None):
                return web.json_response(
                    {"error": f"this api does not answer to the host name {name!r}; the "
                              "operator can allow it with --allowed-hosts"}, status=421)
        return await handler(request)

    return check_host


def cross_origin(request: web.Request) -> str | None:
    """Why a state-changing request comes from another site, or None."""
    if request.method in SAFE_METHODS:
        return None
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site.strip().lower() not in SAME_SITE_FETCH:
        return f"Sec-Fetch-Site: {site}"
    origin = request.headers.get("Origin")
    if origin is None:
        return None  # not a browser's cross-origin request (curl, git hosts, the CLI)
    host = request.headers.get("Host", "")
    netloc = urlsplit(origin.strip()).netloc.lower() if origin.strip() != "null" else ""
    if not netloc or netloc != host.strip().lower():
        return f"Origin: {origin}"
    return None


@web.middleware
async def same_origin_writes(request: web.Request, handler: Handler) -> web.StreamResponse:
    reason = cross_origin(request)
    if reason is not None:
        return web.json_response({"error": f"cross-origin request refused ({reason})"},
                                 status=403)
    return await handler(request)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer, streams and static files and errors included."""
    headers = response.headers
    page = response.content_type == "text/html"
    headers.setdefault("Content-Security-Policy", DASHBOARD_CSP if page else API_CSP)
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    if request.path.startswith("/api/"):
        headers.setdefault("Cache-Control", "no-store")


def install(app: web.Application) -> None:
    app.on_response_prepare.append(security_headers)
