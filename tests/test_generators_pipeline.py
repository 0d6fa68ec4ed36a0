"""Generated environments appear and disappear with commits, through the real services.

A directory generator over ``envs/*``: adding a directory deploys a new environment without any
edit of conveyor.yaml; a commit inside one environment's directory changes no configuration;
removing a directory removes its environment, and ``onRemove: prune`` clears its target (the
deploy branch gets a commit without manifests, its history kept) while ``orphan`` leaves it.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from tests.support.repos import Repo
from tests.support.waits import wait_for_events
from tests.test_spine import finished, running, settings_for, trigger


def config(on_remove: str) -> str:
    return f"""
generators:
  - name: teams
    directories: [{{path: envs/*}}]
    onRemove: {on_remove}
    template:
      name: "{{{{path.basename}}}}"
      path: "{{{{path}}}}"
"""


def cm(name: str, value: str = "1") -> str:
    return (f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: apps\n"
            f"data:\n  v: \"{value}\"\n")


def removed(env: str, sha: str, then: str | None) -> object:
    def check(events: list[Event]) -> bool:
        seen = {e.type for e in events if e.subject == env and e.correlationid == sha}
        return ev.ENV_REMOVED in seen and (then is None or then in seen)
    return check


async def test_directories_come_and_go_as_environments(repo: Repo, nats_server: EmbeddedNats,
                                                       bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit({"conveyor.yaml": config("prune"), "envs/dev/cm.yaml": cm("dev"),
                         "envs/qa/cm.yaml": cm("qa"), "README.md": "fleet\n"}, "two teams")
    async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
        await wait_for_events(bus, finished(first, {"dev", "qa"}))
        assert repo.files("deploy/qa") and repo.files("deploy/dev")

        added = repo.commit({"envs/prod/cm.yaml": cm("prod")}, "a third team, no config edit")
        await trigger(conveyor)
        events = await wait_for_events(bus, finished(added, {"prod"}))
        loaded = [e for e in events if e.type == ev.CONFIG_LOADED and e.correlationid == added]
        assert loaded and loaded[0].data["environments"] == ["dev", "prod", "qa"]
        assert loaded[0].data["dirs"] == ["envs/dev", "envs/prod", "envs/qa"]
        assert {e.subject for e in events if e.correlationid == added
                and e.type == ev.COMMIT_DETECTED} == {"prod"}
        assert repo.files("deploy/prod") == ["apps/configmap-prod.yaml"]

        inside = repo.commit({"envs/dev/cm.yaml": cm("dev", "2")}, "inside one environment")
        await trigger(conveyor)
        events = await wait_for_events(bus, finished(inside, {"dev"}))
        assert [e.type for e in events if e.correlationid == inside
                and e.subject == ev.NO_ENV] == []  # no config event: nothing generated changed

        gone = repo.commit({"envs/qa/cm.yaml": None}, "qa is retired")
        await trigger(conveyor)
        events = await wait_for_events(bus, removed("qa", gone, ev.ENV_PRUNED))
        drop = next(e for e in events if e.type == ev.ENV_REMOVED and e.subject == "qa")
        assert (drop.data["onRemove"], drop.data["generator"]) == ("prune", "teams")
    assert repo.files("deploy/qa") == []  # cleared by a commit, not by deleting the branch
    assert len(repo.log("deploy/qa")) == 2
    assert repo.files("deploy/dev")


async def test_orphan_leaves_the_target_of_a_removed_environment(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit({"conveyor.yaml": config("orphan"), "envs/qa/cm.yaml": cm("qa"),
                         "envs/dev/cm.yaml": cm("dev")}, "two teams")
    async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
        await wait_for_events(bus, finished(first, {"dev", "qa"}))
        before = repo.files("deploy/qa")
        gone = repo.commit({"envs/qa/cm.yaml": None}, "qa is retired")
        await trigger(conveyor)
        await wait_for_events(bus, removed("qa", gone, None))
        after = repo.commit({"envs/dev/cm.yaml": cm("dev", "2")}, "later work")
        await trigger(conveyor)
        events = await wait_for_events(bus, finished(after, {"dev"}))
    assert not [e for e in events if e.type == ev.ENV_PRUNED]
    assert repo.files("deploy/qa") == before
