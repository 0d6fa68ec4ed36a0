"""Shared per-process state of the kubernetes target: API clients and per-environment locks.

The applier builds a target for every delivery (``target_for``), but a ``KubeClient`` is worth
keeping: it holds the HTTP connection pool, the discovery cache and the credentials (an exec
plugin's token). Clients are cached per event loop and per (kubeconfig file, its mtime,
context), so an edited kubeconfig (a rotated static token) gets a fresh client, and closed by
``close_all`` when the applier stops.

``env_lock`` serialises everything that writes one environment's cluster state inside this
process: the applier's consumer lane and the drift loop's self-heal both hold it while they
apply, so a heal can never interleave with a commit's apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref

from orchestrator.adapters.kube import KubeClient, load_config, load_kubeconfig
from orchestrator.errors import PermanentError

from .settings import KubeSettings

_Key = tuple[str, int, str]


class _LoopState:
    def __init__(self) -> None:
        self.clients: dict[_Key, KubeClient] = {}
        self.locks: dict[str, asyncio.Lock] = {}


_STATE: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
    weakref.WeakKeyDictionary())


def _state() -> _LoopState:
    loop = asyncio.get_running_loop()
    state = _STATE.get(loop)
    if state is None:
        state = _STATE[loop] = _LoopState()
    return state


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


def client_for(settings: KubeSettings) -> KubeClient:
    """The cached client for the settings' cluster and identity (made on first use).

    Without a kubeconfig: the pod's service account when running in a cluster, else
    ``$KUBECONFIG`` or ``~/.kube/config`` (so a laptop run behaves like kubectl).
    """
    state = _state()
    key = _key(settings)
    client = state.clients.get(key)
    if client is None:
        config = (load_kubeconfig(settings.kubeconfig, settings.context)
                  if settings.kubeconfig is not None else load_config(None, settings.context))
        for old in [k for k in state.clients if (k[0], k[2]) == (key[0], key[2])]:
            stale = state.clients.pop(old)   # the file changed: its client is replaced
            asyncio.get_running_loop().create_task(stale.close())
        client = state.clients[key] = KubeClient(config)
    return client


def env_lock(env: str) -> asyncio.Lock:
    state = _state()
    lock = state.locks.get(env)
    if lock is None:
        lock = state.locks[env] = asyncio.Lock()
    return lock


async def close_all() -> None:
    """Close every cached client of the running loop (the applier is stopping)."""
    state = _state()
    clients, state.clients = list(state.clients.values()), {}
    for client in clients:
        with contextlib.suppress(Exception):
            await client.close()
