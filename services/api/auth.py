"""Who may call what on the api: two roles from two bearer tokens.

- **read** (``--read-token`` / ``CONVEYOR_READ_TOKEN``): every GET: environments, events, the
  live streams, traces, history, metrics, bundles (Secret values masked).
- **operator** (``CONVEYOR_API_TOKEN``): reads, and the control endpoints that make Conveyor
  act: refresh, sync, retry, replay. The operator token also reads.

With no token configured at all the api is open, as before (``up`` and ``run api`` refuse to
listen off loopback without ``CONVEYOR_API_TOKEN``, so that is only ever a loopback instance).
With any token configured, every request needs one, except:

- ``/healthz``, ``/livez``, ``/readyz``: probes carry no data and kubelet sends no token;
- ``POST /api/v1/webhooks/*``: a git host cannot send a bearer token; each delivery is
  authenticated by its signature instead (routes_webhooks);
- the page shell ``/`` and ``/static/*``: HTML, CSS and JavaScript with no data in them, which
  must load for the login screen to be shown at all. Everything the page shows comes from
  ``/api/v1``, which needs the token.

With only a read token configured, control endpoints are refused to everyone (403): there is no
operator. The scheme is matched case-insensitively (RFC 7235: ``bearer`` is ``Bearer``), tokens
are compared in constant time, and a blank token is no token (orchestrator.settings).
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from orchestrator.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PROBES: Final = frozenset({"/healthz", "/livez", "/readyz"})
WEBHOOKS: Final = "/api/v1/webhooks/"
PAGE_SHELL: Final = "/"
STATIC: Final = "/static/"


class Role(enum.IntEnum):
    """Ordered: a role may do everything the roles below it may."""

    NONE = 0
    READ = 1
    OPERATOR = 2


def bearer_token(header: str) -> str | None:
    """The credentials of an ``Authorization: Bearer <token>`` header, any case of the scheme."""
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


def _same(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def role_of(request: web.Request, settings: Settings) -> Role:
    """The role the request's token grants (everything when no token is configured)."""
    if not settings.auth_enabled:
        return Role.OPERATOR
    given = bearer_token(request.headers.get("Authorization", ""))
    if given is None:
        return Role.NONE
    # both compared, whatever the first says: the time taken does not tell which one matched
    operator, reader = _same(given, settings.api_token), _same(given, settings.read_token)
    if operator:
        return Role.OPERATOR
    return Role.READ if reader else Role.NONE


def is_public(request: web.Request) -> bool:
    path = request.path
    if path in PROBES:
        return True
    if path.startswith(WEBHOOKS) and request.method == "POST":
        return True
    return request.method in ("GET", "HEAD") and (path == PAGE_SHELL or path.startswith(STATIC))


def unauthorised() -> web.Response:
    return web.json_response({"error": "a valid bearer token is required"}, status=401,
                             headers={"WWW-Authenticate": 'Bearer realm="conveyor"'})


def forbidden(settings: Settings) -> web.Response:
    reason = ("this token may only read: control needs the operator token (CONVEYOR_API_TOKEN)"
              if settings.api_token else
              "no operator token is configured (CONVEYOR_API_TOKEN): control is disabled")
    return web.json_response({"error": reason}, status=403)


def require(request: web.Request, settings: Settings, needed: Role) -> web.Response | None:
    """None when the request may go on, else the answer that refuses it."""
    role = role_of(request, settings)
    if role >= needed:
        return None
    return unauthorised() if role is Role.NONE else forbidden(settings)


def middleware(settings: Settings) -> Middleware:
    """Every request needs at least the read role, public paths aside."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_public(request):
            refused = require(request, settings, Role.READ)
            if refused is not None:
                return refused
        return await handler(request)

    return authenticate
