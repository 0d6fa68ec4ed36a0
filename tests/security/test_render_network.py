"""Renders have no network unless the operator allows remote bases.

Refusing remote references before kustomize runs is one wall; the second is the process: a
render tool runs in a network namespace of its own (no interface up), so even a tool that
tried to fetch could not. Where the host refuses unprivileged user namespaces the renderer
says so at start-up and only the first wall stands (skipped here, with the reason).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from orchestrator.errors import PermanentError
from orchestrator.rendering import RenderLimits
from orchestrator.rendering.safety import offline_prefix, run_tool
from tests.security.listener import recording

pytestmark = pytest.mark.skipif(not offline_prefix(),
                                reason="this host refuses unprivileged user namespaces")

CONNECT = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 3)"


async def test_a_render_tool_cannot_reach_even_loopback(tmp_path: Path) -> None:
    async with recording() as listener:
        port = listener.url.rsplit(":", 1)[1]
        with pytest.raises(PermanentError) as info:
            run_tool([sys.executable, "-c", CONNECT, port], cwd=tmp_path,
                     limits=RenderLimits(), what="fetch")
        assert "Connection refused" in str(info.value) or "unreachable" in str(info.value)
        # the operator's --allow-remote-bases opens it (renders then pass network=True)
        run_tool([sys.executable, "-c", CONNECT, port], cwd=tmp_path,
                 limits=RenderLimits(network=True), what="fetch")
