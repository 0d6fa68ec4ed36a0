"""The fsync policy is an explicit setting: ``conveyor up --sync`` and k8s/base's nats.conf.

What each policy loses on power failure is in docs/event-log.md (Durability); the cost of
each is measured by ``python -m benchmarks.failover``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conveyor import cli, options
from orchestrator.adapters.embedded_nats import EmbeddedNats, jetstream_sync
from orchestrator.errors import PermanentError
from tests.support.cluster import NatsCluster

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("policy", "always", "interval_ns"),
                         [("always", True, None), ("interval", False, 120 * 10**9)])
async def test_the_servers_run_with_the_policy_asked(tmp_path: Path, policy: str, always: bool,
                                                     interval_ns: int | None) -> None:
    cluster = NatsCluster(tmp_path / "c", size=1, sync=policy)
    try:
        await cluster.start()
        jetstream = (await cluster.varz(cluster.nodes[0]))["jetstream"]["config"]
    finally:
        await cluster.stop()
    assert bool(jetstream.get("sync_always")) is always
    if interval_ns is not None:
        assert jetstream["sync_interval"] == interval_ns


async def test_the_embedded_server_loads_the_policy(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", sync="interval")
    await server.start()
    try:
        log = (tmp_path / "nats" / "nats-server.log").read_text()
        loaded = re.search(r"Using configuration file: (\S+)", log)
        assert loaded is not None, log
        assert re.search(r'^\s*sync_interval: "2m"$', Path(loaded.group(1)).read_text(), re.M)
    finally:
        await server.stop()


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(PermanentError, match="sync policy 'sometimes'"):
        jetstream_sync("sometimes")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["up", "--repo", ".", "--sync", "sometimes"])


def test_always_is_the_default_and_the_environment_can_choose(
        monkeypatch: pytest.MonkeyPatch) -> None:
    args = cli.build_parser().parse_args(["up", "--repo", "."])
    assert options.settings_from_args(args).sync == "always"
    monkeypatch.setenv("CONVEYOR_SYNC", "interval")
    args = cli.build_parser().parse_args(["up", "--repo", "."])
    assert options.settings_from_args(args).sync == "interval"


def test_k8s_base_states_its_policy() -> None:
    text = (ROOT / "k8s" / "base" / "nats.yaml").read_text()
    assert re.search(r"^\s+jetstream \{[^}]*\n\s+sync_interval: always\n", text, re.M)
