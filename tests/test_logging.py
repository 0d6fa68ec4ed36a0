"""Logging follows ``sys.stderr`` as it is at each write (an in-process caller may swap it)."""

from __future__ import annotations

import io
import logging
import sys

import pytest
import structlog

from orchestrator import logging as clog


def test_logs_follow_a_swapped_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    try:
        clog.configure("info", json_logs=True)
        structlog.get_logger("t").info("to.first")
        first.close()  # as pytest closes a test's captured stream
        monkeypatch.setattr(sys, "stderr", second)
        structlog.get_logger("t").info("to.second")  # was: I/O operation on closed file
        logging.getLogger("aiohttp.test").warning("stdlib too")
        assert '"event": "to.second"' in second.getvalue()
    finally:
        structlog.reset_defaults()
        for handler in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(handler)
