"""A Conveyor for a test's duration: started, handed over, stopped (even when the test fails)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from conveyor.app import Conveyor
from orchestrator.settings import Settings


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Conveyor]:
    conveyor = Conveyor(settings)
    await conveyor.start()
    try:
        yield conveyor
    finally:
        await conveyor.stop()
