"""``conveyor diff ENV [--nats URL | --api URL]``: the latest rendered bundle vs the live cluster.

Desired is the bundle of the environment's last ``conveyor.render.succeeded`` (read from the
event log with ``last_event``, the bundle from the bundle store); live is what a server-side
dry-run apply of it would change, compared with ``orchestrator.domain.diff`` (server-managed
fields ignored, Secret values redacted). Objects that would be pruned show as removed. The
cluster is reached with the environment's ``target.kubernetes`` settings from that event,
``${VAR}``s expanded with *this* shell's environment, so the credentials are the caller's.

Output is one unified diff per object (``-o json``: a list of ``{kind, namespace, name, change,
diff}``) then a summary line. Exit status as ``kubectl diff``: 0 no differences, 1 differences,
2 an error (printed on stderr).

``--api`` reads the event through the api's ``/api/v1/events`` and the bundle from
``/api/v1/bundles/{digest}``; an api that does not serve bundles is an error (use ``--nats``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, TextIO

import aiohttp
import nats
from nats.js.errors import NotFoundError, ObjectNotFoundError

from orchestrator import subjects
from orchestrator.adapters.nats_bus import (
    EventBus,
    inbox_of,
    is_auth_error,
    redact,
    server_list,
    unauthorized,
)
from orchestrator.domain import events as ev
from orchestrator.domain.bundle import decode_bundle
from orchestrator.domain.diff import summarise
from orchestrator.errors import ConveyorError, PermanentError
from orchestrator.secrets import SecretPolicy
from orchestrator.targets.kube.clients import KubePool
from orchestrator.targets.kube.compare import compare
from orchestrator.targets.kube.settings import expanded_target
from orchestrator.targets.kube.target import kube_target


@dataclass(frozen=True, slots=True)
class Desired:
    env: dict[str, Any]
    revision: str
    digest: str
    payload: bytes


async def from_nats(url: str, env: str) -> Desired:
    # Not EventBus.connect: that reconciles the stream's config (its retention) with defaults,
    # which a read-only command must never do. The bundle is read from the store directly.
    refused: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        if is_auth_error(exc):
            refused.append(exc)

    try:
        nc = await nats.connect(servers=server_list(url), name="conveyor-diff",
                                connect_timeout=5, max_reconnect_attempts=3, error_cb=on_error,
                                inbox_prefix=inbox_of(url))
    except Exception as exc:
        if refused or is_auth_error(exc):
            raise unauthorized(server_list(url)) from None
        shown = ", ".join(map(redact, server_list(url)))
        raise PermanentError(f"cannot connect to NATS at {shown}: {exc}",
                             reason="Unreachable") from None
    try:
        bus = EventBus(nc, nc.jetstream(timeout=10))
        stored = await bus.last_event(env, ev.RENDER_SUCCEEDED)
        if stored is None:
            raise PermanentError(f"environment {env} has no successful render yet",
                                 reason="NotRendered")
        data = stored.event.data
        digest = str(data["digest"])
        try:
            store = await bus.js.object_store(subjects.BUNDLE_BUCKET)
            payload = bytes((await store.get(digest.replace(":", "-"))).data or b"")
        except (ObjectNotFoundError, NotFoundError):
            raise PermanentError(f"bundle {digest} is missing from the store",
                                 reason="BundleMissing") from None
    finally:
        await nc.close()
    return Desired(dict(data.get("env") or {}), stored.event.correlationid, digest, payload)


async def from_api(url: str, env: str, token: str | None = None) -> Desired:
    base = url.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(f"{base}/api/v1/events",
                                params={"env": env, "type": ev.RENDER_SUCCEEDED}) as resp:
                if resp.status != 200:
                    raise PermanentError(f"the api at {url} answered {resp.status} for the "
                                         f"events of {env}", reason="ApiError")
                found = (await resp.json()).get("events") or []
            if not found:
                raise PermanentError(f"environment {env} has no successful render yet",
                                     reason="NotRendered")
            last = found[-1]
            digest = str(last["data"]["digest"])
            async with http.get(f"{base}/api/v1/bundles/{digest}") as resp:
                if resp.status == 404:
                    raise PermanentError(f"the api at {url} does not serve bundles (GET "
                                         f"/api/v1/bundles/{digest} answered 404); use --nats URL",
                                         reason="ApiError")
                if resp.status != 200:
                    raise PermanentError(f"the api at {url} answered {resp.status} for bundle "
                                         f"{digest}", reason="ApiError")
                payload = await resp.read()
    except aiohttp.ClientError as exc:
        raise PermanentError(f"cannot reach the api at {url}: {exc}",
                             reason="Unreachable") from None
    return Desired(dict(last["data"].get("env") or {}), str(last.get("correlationid", "")),
                   digest, payload)


async def compute(env: str, desired: Desired) -> list[Any]:
    """The differences (``ObjectDiff``) between the desired bundle and the live cluster."""
    target_cfg = desired.env.get("target") or {}
    if "kubernetes" not in target_cfg:
        raise PermanentError(f"environment {env} does not have a kubernetes target "
                             f"({', '.join(sorted(target_cfg)) or 'none'})",
                             reason="UnsupportedTarget")
    try:
        objects = decode_bundle(desired.payload)
    except ValueError as exc:
        raise PermanentError(f"bundle {desired.digest}: {exc}", reason="BundleInvalid") from None
    pool = KubePool()  # this command's own clients, closed when it is done
    try:
        # the config came from the repository: its references reach what the operator
        # allows (CONVEYOR_ENV_ALLOW, CONVEYOR_SECRETS_DIR), as in the applier
        scope = SecretPolicy.from_env().scope()
        target = kube_target(env, expanded_target(env, target_cfg["kubernetes"], scope),
                             desired.env.get("sync") or {}, pool)
        stored = await target.stored()
        diffs, _ = await compare(target, objects, stored.inventory)
    finally:
        await pool.close()
    return diffs


async def diff_command(env: str, *, nats: str = "", api: str = "", output: str = "text",
                       token: str | None = None, stdout: TextIO | None = None,
                       stderr: TextIO | None = None) -> int:
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        if nats:
            desired = await from_nats(nats, env)
        elif api:
            desired = await from_api(api, env, token)
        else:
            raise PermanentError("give --nats URL or --api URL (or CONVEYOR_NATS / "
                                 "CONVEYOR_API)", reason="Usage")
        diffs = await compute(env, desired)
    except ConveyorError as exc:
        print(f"conveyor diff: {exc}", file=err)
        return 2
    if output == "json":
        json.dump([{"kind": d.key.kind, "namespace": d.key.namespace, "name": d.key.name,
                    "change": d.change, "diff": d.unified_text} for d in diffs], out, indent=2)
        out.write("\n")
    else:
        for d in diffs:
            out.write(d.unified_text)
        print(f"{env} at {desired.revision[:12]} ({desired.digest[:19]}): {summarise(diffs)}",
              file=out)
    return 1 if diffs else 0
