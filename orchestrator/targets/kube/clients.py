"""The kubernetes target's resources: API clients and per-environment locks, in a ``KubePool``.

The applier builds a target for every delivery (``target_for``), but a ``KubeClient`` is worth
keeping: it holds the HTTP connection pool, the discovery cache and the credentials (an exec
plugin's token). Clients are cached per (kubeconfig file, its mtime, context), so an edited
kubeconfig (a rotated static token) gets a fresh client. The pool belongs to one Conveyor's
``Resources`` (``orchestrator/resources.py``), which closes it on stop.

``env_lock`` serialises everything that writes one environment's cluster state inside this
process: the applier's consumer lane and the drift loop's self-heal both hold it while they
apply, so a heal can never interleave with a commit's apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from orchestrator.adapters.kube import KubeClient, load_config, load_kubeconfig
from orchestrator.errors import PermanentError

from .settings import KubeSettings

_Key = tuple[str, int, str]


def _key(settings: KubeSettings) -> _Key:
    if settings.kubeconfig is None:
        return ("", 0, settings.context or "")
    try:
        mtime = os.stat(settings.kubeconfig).st_mtime_ns
    except OSError as exc:
        raise PermanentError(f"environment {settings.env}: cannot read the kubeconfig "
                             f"{settings.kubeconfig}: {exc.strerror}",
                             reason="InvalidConfig") from None
    return (settings.kubeconfig, mtime, settings.context or "")


class KubePool:
    """The kubernetes clients and per-environment locks of one Conveyor (one event loop)."""

    def __init__(self) -> None:
        self.clients: dict[_Key, KubeClient] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def client_for(self, settings: KubeSettings) -> KubeClient:
        """The cached client for the settings' cluster and identity (made on first use).

        Without a kubeconfig: the pod's service account when running in a cluster, else
        ``$KUBECONFIG`` or ``~/.kube/config`` (so a laptop run behaves like kubectl).
        """
        key = _key(settings)
        client = self.clients.get(key)
        if client is None:
            config = (load_kubeconfig(settings.kubeconfig, settings.context)
                      if settings.kubeconfig is not None
                      else load_config(None, settings.context))
            for old in [k for k in self.clients if (k[0], k[2]) == (key[0], key[2])]:
                stale = self.clients.pop(old)   # the file changed: its client is replaced
                task = asyncio.get_running_loop().create_task(stale.close())
                self._closing.add(task)          # awaited by close(), never left pending
                task.add_done_callback(self._closing.discard)
            client = self.clients[key] = KubeClient(config)
        return client

    def env_lock(self, env: str) -> asyncio.Lock:
        lock = self.locks.get(env)
        if lock is None:
            lock = self.locks[env] = asyncio.Lock()
        return lock

    async def close(self) -> None:
        """Close every client (the Conveyor is stopping)."""
        clients, self.clients = list(self.clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
