"""One operational server per process: /healthz and /metrics from orchestrator/ops.py, served by
the api itself or, in a process without the api, by the small OpsServer."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from conveyor.app import Conveyor
from orchestrator.adapters.embedded_nats import EmbeddedNats, free_port
from orchestrator.ops import OpsServer
from orchestrator.settings import Settings
from services.api.app import ApiService


async def probe(base: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as resp:
            health = resp.status
        async with http.get(f"{base}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            return health, await resp.text()


async def test_a_process_without_the_api_serves_healthz_and_metrics(
        nats_server: EmbeddedNats, tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    conveyor = Conveyor(Settings(nats_url=nats_server.url, data_dir=tmp_path, listen=listen),
                        names=("renderer",), health_server=True)
    await conveyor.start()
    try:
        assert isinstance(conveyor.service("health"), OpsServer)
        health, text = await probe(f"http://{listen}")
    finally:
        await conveyor.stop()
    assert health == 200
    assert "# HELP conveyor_events_total" in text
    assert "conveyor_consumer_pending{" not in text  # queue depth is the api's to report


async def test_the_api_serves_the_same_endpoints_with_queue_depth(
        nats_server: EmbeddedNats, tmp_path: Path) -> None:
    conveyor = Conveyor(Settings(nats_url=nats_server.url, data_dir=tmp_path,
                                 listen="127.0.0.1:0"), names=("api", "renderer"),
                        health_server=True)
    await conveyor.start()
    try:
        api = conveyor.service("api")
        assert isinstance(api, ApiService)
        assert [n for n, _ in conveyor.services] == ["api", "renderer"]  # no second server
        health, text = await probe(api.url)
    finally:
        await conveyor.stop()
    assert health == 200
    assert 'conveyor_consumer_pending{consumer="renderer"}' in text
