"""Renders that arrive together for one commit go to the renderer in one batch.

A commit to a shared base makes every environment render at once. Each lane of the renderer's
consumer hands its render to ``RenderBatcher.render`` and waits; requests for the same snapshot
that arrive in the same turn of the event loop (or within ``window`` seconds, 0 by default: a
lone render waits for nothing), or while every tool slot is busy, leave together (at most
``max_batch``) for one ``render_many`` in a worker thread, which runs the Kustomize
overlays among them in as few tool runs as it faithfully can. Each request still gets its own
result or error, so a lane's ordering, its render cache entry and its outcome event are what
they were; only the tool runs are shared. ``slots`` bounds the batches (tool processes) at
once.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.rendering import RenderRequest, RenderResult, RenderTools, render_many


@dataclass
class _Waiting:
    request: RenderRequest
    done: asyncio.Future[RenderResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class RenderBatcher:
    def __init__(self, tools: RenderTools, *, slots: int, max_batch: int = 32,
                 window: float = 0.0) -> None:
        self.tools = tools
        self.max_batch = max_batch
        self.window = window
        self._slots = asyncio.Semaphore(slots)
        self._threads = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="render")
        self._pending: dict[Path, list[_Waiting]] = {}
        self._flushing: set[Path] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # tool batches sent (for tests and benchmarks)

    async def render(self, root: Path, env_path: str,
                     settings: dict[str, Any] | None) -> RenderResult:
        """``render(root, env_path, settings)``, shared with whatever arrives alongside."""
        waiting = _Waiting(RenderRequest(env_path, settings))
        self._pending.setdefault(root, []).append(waiting)
        if root not in self._flushing:
            self._schedule(root, self.window)
        return await asyncio.shield(waiting.done)

    def _schedule(self, root: Path, delay: float) -> None:
        self._flushing.add(root)
        task = asyncio.create_task(self._flush(root, delay), name=f"render-batch:{root.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, root: Path, delay: float) -> None:
        await asyncio.sleep(delay)  # 0: what arrives in this turn of the loop comes along
        async with self._slots:
            queue = self._pending.pop(root, [])
            batch, rest = queue[:self.max_batch], queue[self.max_batch:]
            self._flushing.discard(root)
            if rest:
                self._pending[root] = rest
                self._schedule(root, 0.0)
            if not batch:
                return
            self.batches += 1
            loop = asyncio.get_running_loop()
            try:
                results = await loop.run_in_executor(
                    self._threads, lambda: render_many(root, [w.request for w in batch],
                                                       tools=self.tools))
            except BaseException as exc:  # cancelled, or a bug: every waiter hears of it
                for w in batch:
                    if not w.done.done():
                        w.done.set_exception(exc if isinstance(exc, Exception)
                                             else asyncio.CancelledError())
                raise
        for w, result in zip(batch, results, strict=True):
            if w.done.done():
                continue
            if isinstance(result, Exception):
                w.done.set_exception(result)
            else:
                w.done.set_result(result)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for queue in self._pending.values():
            for w in queue:
                if not w.done.done():
                    w.done.cancel()
        self._pending.clear()
        self._threads.shutdown(wait=False, cancel_futures=True)
