"""Credentials for the Kubernetes API: static token, rotating token file, exec plugin, basic.

Every provider answers ``authorization()`` with the value of an ``Authorization`` header (or
``None``) and ``invalidate()`` after a 401, so the client can refresh once and retry. Secret
values live in ``Secret`` so that no ``repr``, log line or exception message can show them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from orchestrator.errors import PermanentError, TransientError

EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")


class Secret:
    """A string that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Credentials(Protocol):
    async def authorization(self) -> str | None:
        """The ``Authorization`` header value for the next request, or ``None``."""

    def invalidate(self) -> bool:
        """Forget cached credentials after a 401; ``True`` if a retry may now succeed."""


class Anonymous:
    async def authorization(self) -> str | None:
        return None

    def invalidate(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "Anonymous()"


class StaticToken:
    def __init__(self, token: str) -> None:
        self._token = Secret(token)

    async def authorization(self) -> str | None:
        return f"Bearer {self._token.reveal()}"

    def invalidate(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "StaticToken(***)"


class BasicAuth:
    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self._encoded = Secret(base64.b64encode(f"{username}:{password}".encode()).decode())

    async def authorization(self) -> str | None:
        return f"Basic {self._encoded.reveal()}"

    def invalidate(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"BasicAuth(username={self.username!r}, password=***)"


class TokenFile:
    """A bearer token read from a file and re-read every ``reload_after`` seconds or after a 401.

    Projected service-account tokens are rotated by the kubelet (about hourly); client-go
    re-reads the file every minute, which is the default here too.
    """

    def __init__(self, path: Path, *, reload_after: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._reload_after = reload_after
        self._clock = clock
        self._token: Secret | None = None
        self._read_at = 0.0

    async def authorization(self) -> str | None:
        if self._token is None or self._clock() - self._read_at >= self._reload_after:
            try:
                text = await asyncio.to_thread(self.path.read_text)
            except OSError as exc:
                raise PermanentError(f"cannot read the token file {self.path}: "
                                     f"{exc.strerror}", reason="Unauthorized") from None
            self._token = Secret(text.strip())
            self._read_at = self._clock()
        return f"Bearer {self._token.reveal()}"

    def invalidate(self) -> bool:
        self._token = None
        return True

    def __repr__(self) -> str:
        return f"TokenFile(path={str(self.path)!r})"


@dataclass(frozen=True)
class ExecSpec:
    """The ``users[].user.exec`` stanza of a kubeconfig (secrets in ``env`` stay hidden)."""

    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    api_version: str = EXEC_API_VERSIONS[0]
    install_hint: str = ""
    provide_cluster_info: bool = False
    cluster: Mapping[str, Any] | None = None

    def __repr__(self) -> str:
        return f"ExecSpec(command={self.command!r}, api_version={self.api_version!r})"


class ExecPlugin:
    """A client-go credential plugin: run a command that prints an ``ExecCredential``.

    The token is cached until ``status.expirationTimestamp`` (for ever without one) and the
    command is run again after a 401. Concurrent callers share one run. Plugins that return a
    client certificate instead of a token are refused (see ``README``).
    """

    def __init__(self, spec: ExecSpec, *, timeout: float = 60.0,
                 now: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self._timeout = timeout
        self._now = now
        self._token: Secret | None = None
        self._expires: float | None = None
        self._lock = asyncio.Lock()
        self.runs = 0

    async def authorization(self) -> str | None:
        if self._valid():   # every request asks: no lock while the token is good
            assert self._token is not None
            return f"Bearer {self._token.reveal()}"
        async with self._lock:
            if not self._valid():
                await self._run()
            assert self._token is not None
            return f"Bearer {self._token.reveal()}"

    def _valid(self) -> bool:
        return self._token is not None and (self._expires is None or self._now() < self._expires)

    def invalidate(self) -> bool:
        self._token = None
        return True

    async def _run(self) -> None:
        spec = self.spec
        info: dict[str, Any] = {"apiVersion": spec.api_version, "kind": "ExecCredential",
                                "spec": {"interactive": False}}
        if spec.provide_cluster_info and spec.cluster is not None:
            info["spec"]["cluster"] = dict(spec.cluster)
        env = {**os.environ, **dict(spec.env), "KUBERNETES_EXEC_INFO": json.dumps(info)}
        self.runs += 1
        try:
            proc = await asyncio.create_subprocess_exec(
                spec.command, *spec.args, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            hint = f" ({spec.install_hint.strip()})" if spec.install_hint else ""
            raise PermanentError(f"cannot run the credential plugin {spec.command!r}: "
                                 f"{exc.strerror}{hint}", reason="ExecPluginFailed") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self._timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise TransientError(f"the credential plugin {spec.command!r} did not answer within "
                                 f"{self._timeout:g}s", reason="ExecPluginTimeout") from None
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip()[-300:]
            raise PermanentError(f"the credential plugin {spec.command!r} exited with "
                                 f"{proc.returncode}: {tail}", reason="ExecPluginFailed")
        self._token, self._expires = self._parse(out)

    def _parse(self, out: bytes) -> tuple[Secret, float | None]:
        name = self.spec.command
        try:
            doc = json.loads(out)
        except ValueError:
            raise PermanentError(f"the credential plugin {name!r} printed something that is "
                                 "not an ExecCredential", reason="ExecPluginFailed") from None
        if not isinstance(doc, dict) or doc.get("kind") != "ExecCredential":
            raise PermanentError(f"the credential plugin {name!r} printed no ExecCredential",
                                 reason="ExecPluginFailed")
        if doc.get("apiVersion") != self.spec.api_version:
            raise PermanentError(f"the credential plugin {name!r} answered with apiVersion "
                                 f"{doc.get('apiVersion')!r}, expected {self.spec.api_version!r}",
                                 reason="ExecPluginFailed")
        status = doc.get("status") or {}
        token = status.get("token")
        if not token:
            what = ("a client certificate, which Conveyor does not support from plugins"
                    if status.get("clientCertificateData") else "no token")
            raise PermanentError(f"the credential plugin {name!r} returned {what}",
                                 reason="ExecPluginFailed")
        expires = status.get("expirationTimestamp")
        when = None
        if expires:
            try:
                when = datetime.fromisoformat(str(expires).replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise PermanentError(f"the credential plugin {name!r} returned an unreadable "
                                     f"expirationTimestamp {expires!r}",
                                     reason="ExecPluginFailed") from None
        return Secret(str(token)), when

    def __repr__(self) -> str:
        return f"ExecPlugin({self.spec!r})"


def exec_spec(stanza: Mapping[str, Any], *, base_dir: Path | None,
              cluster: Mapping[str, Any] | None) -> ExecSpec:
    """Build an ``ExecSpec`` from a kubeconfig ``exec`` stanza, resolving a relative command."""
    command = str(stanza.get("command") or "")
    if not command:
        raise PermanentError("the kubeconfig exec stanza has no command", reason="InvalidConfig")
    if base_dir is not None and os.sep in command and not os.path.isabs(command):
        command = str(base_dir / command)
    api_version = str(stanza.get("apiVersion") or "")
    if api_version not in EXEC_API_VERSIONS:
        raise PermanentError(f"exec plugin apiVersion {api_version!r} is not supported "
                             f"(use one of {', '.join(EXEC_API_VERSIONS)})",
                             reason="InvalidConfig")
    env: Sequence[Mapping[str, Any]] = stanza.get("env") or ()
    return ExecSpec(
        command=command, args=tuple(str(a) for a in stanza.get("args") or ()),
        env=tuple((str(e["name"]), str(e["value"])) for e in env),
        api_version=api_version, install_hint=str(stanza.get("installHint") or ""),
        provide_cluster_info=bool(stanza.get("provideClusterInfo")), cluster=cluster)
