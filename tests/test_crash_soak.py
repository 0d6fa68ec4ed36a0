"""The crash soak, short: five SIGKILLs at random points of a commit burst, black-box.

``python -m benchmarks.crash_soak --runs 50`` is the long version (see its docstring for the
procedure). Here five runs (three of ``conveyor up``, two of one process per service: about a
minute) must show no commit without exactly one terminal event, no replay difference, no fact
notified under two ids, and no notification posted twice unless its sender was killed between
the two posts and said so on the second (``X-Conveyor-Redelivery``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.crash_soak import problem, soak

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("mode", "runs"), [("up", 3), ("services", 2)])
async def test_sigkills_mid_burst_lose_nothing(tmp_path: Path, mode: str, runs: int) -> None:
    totals, results = await soak(runs, mode, seed=16, workdir=tmp_path)
    problems = [r for r in results if problem(r)]
    assert not problems, problems
    assert totals.runs == runs and totals.commits == runs * 6
