"""A Conveyor for a test: its settings on a repository and a nats-server, and ``running`` to
start it, hand it over and stop it (even when the test fails)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from conveyor.app import Conveyor
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.settings import Settings
from tests.support.repos import Repo


def settings_for(repo: Repo, nats: EmbeddedNats, data: Path, **extra: Any) -> Settings:
    """All services on ``repo``'s main branch over ``nats``, state in ``data``, the api on a
    free loopback port; the watcher polls only when triggered. ``extra``: other settings."""
    base = Settings(nats_url=nats.url, data_dir=data, repo=str(repo.path), branch="main",
                    listen="127.0.0.1:0", interval=3600.0)
    return replace(base, **extra)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Conveyor]:
    conveyor = Conveyor(settings)
    await conveyor.start()
    try:
        yield conveyor
    finally:
        await conveyor.stop()
