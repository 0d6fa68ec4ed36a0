"""A conveyor.yaml that the deep checks refuse never takes effect.

The attack: a commit adds an environment whose ``render:`` block the deep checks
(``check_config``) refuse. Before the fix the watcher announced ``config.invalid`` and then
deployed the new environment anyway, and kept the refused config for later commits.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.git_local import CommitInfo
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.config import parse_config
from services.git_watcher import decide
from tests.security.pipeline import (
    CONFIG,
    configmap,
    good_files,
    next_good_commit_deploys,
    of,
    poll,
)
from tests.support.conveyors import running, settings_for
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

REFUSED = CONFIG + "  evil:\n    path: app\n    render:\n      typo: true\n"


def test_a_refused_config_is_not_the_config_after_the_commit() -> None:
    current = parse_config(CONFIG)
    commit = CommitInfo("b" * 40, "a" * 40, "add evil", "A <a@x>", "2024-01-01T00:00:00Z")
    result = decide.events_for_commit(
        commit, decide.SourceRef("default", "/r", "main"), ["conveyor.yaml"], lambda: REFUSED,
        current, lambda env: frozenset())
    assert [e.type for e in result.events] == [ev.CONFIG_INVALID, ev.COMMIT_DETECTED]
    assert result.events[0].data["field"] == "environments.evil.render"
    assert result.config is current
    assert {e.subject for e in result.events[1:]} == {"app"}  # never "evil"


async def test_refused_environment_is_never_deployed(repo: Repo, nats_server: EmbeddedNats,
                                                     bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(good_files("v1"), "initial")
    async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
        await wait_for_events(bus, lambda evs: ev.APPLY_SUCCEEDED in of(evs, first, "app"))
        attack = repo.commit({"conveyor.yaml": REFUSED, "app/cm.yaml": configmap("v2")},
                             "add an environment the checks refuse")
        await poll(conveyor)
        events = await wait_for_events(
            bus, lambda evs: ev.CONFIG_INVALID in of(evs, attack)
            and ev.APPLY_SUCCEEDED in of(evs, attack, "app"))
        assert of(events, attack, "evil") == []
        events = await next_good_commit_deploys(conveyor, bus, repo)
    assert all(e.subject != "evil" for e in events)
    assert repo.head("deploy/evil") is None
