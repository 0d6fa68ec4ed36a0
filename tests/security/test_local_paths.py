"""Local repositories are opt-in, and no target writes a watched branch.

The attacks (review, medium findings): a target ``repo:`` or a source ``url:`` named any
repository on the host (reading another team's, or writing into it), and a target branch
equal to the watched branch overwrote conveyor.yaml. Now a local path outside the operator's
``--allow-local-path`` is ``config.invalid`` naming the field, and so is a git target on a
branch Conveyor watches; the last good config stays in force.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.config import parse_config
from orchestrator.domain.events import Event
from orchestrator.errors import ConfigError
from services.git_watcher.config_check import Bounds, check_config
from tests.security.pipeline import (
    CONFIG,
    DEPLOYED,
    finished,
    good_files,
    next_good_commit_deploys,
    of,
    poll,
)
from tests.support.conveyors import running, settings_for
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

PRIMARY = "/srv/conveyor/config"


def refused(text: str, bounds: Bounds) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        check_config(parse_config(text), bounds)
    return info.value


def test_a_local_source_outside_the_allowed_dirs_is_refused(tmp_path: Path) -> None:
    text = CONFIG + f"sources:\n  other:\n    url: {tmp_path}/team-b.git\n    branch: main\n"
    err = refused(text, Bounds((), PRIMARY, "main"))
    assert err.field == "sources.other.url" and err.line == 6
    assert "--allow-local-path" in str(err)
    check_config(parse_config(text), Bounds((str(tmp_path),), PRIMARY, "main"))
    file_url = CONFIG + "sources:\n  other:\n    url: file:///etc/team-b.git\n"
    assert refused(file_url, Bounds((str(tmp_path),), PRIMARY, "main")).field \
        == "sources.other.url"
    remote = CONFIG + "sources:\n  other:\n    url: https://git.example/b.git\n"
    check_config(parse_config(remote), Bounds((), PRIMARY, "main"))


def test_a_local_target_repo_outside_the_allowed_dirs_is_refused(tmp_path: Path) -> None:
    text = ("environments:\n  app:\n    path: app\n    target:\n      git:\n"
            f"        repo: {tmp_path}/../victim\n        branch: deploy/app\n")
    err = refused(text, Bounds((str(tmp_path),), PRIMARY, "main"))
    assert err.field == "environments.app.target.git.repo" and err.line == 6
    # the primary repository itself (--repo) is the operator's: always allowed
    own = text.replace(f"{tmp_path}/../victim", PRIMARY)
    check_config(parse_config(own), Bounds((), PRIMARY, "main"))


@pytest.mark.parametrize(("target", "why"), [
    ("      git: {branch: main}\n", "the primary source"),
    ("      git: {branch: release}\n", "source 'same'"),
    ("      git: {branch: main, repo: 'https://git.example/apps.git'}\n", "source 'apps'"),
])
def test_a_target_on_a_watched_branch_is_refused(target: str, why: str) -> None:
    text = ("sources:\n  same: {url: '', branch: release}\n"
            "  apps: {url: 'https://git.example/apps', branch: main}\n"
            f"environments:\n  app:\n    path: app\n    target:\n{target}")
    err = refused(text, Bounds((), PRIMARY, "main"))
    assert err.field == "environments.app.target.git.branch"
    assert why in str(err) and "never writes a branch Conveyor reads from" in str(err)


def refused_and_done(sha: str) -> Callable[[list[Event]], bool]:
    return lambda evs: ev.CONFIG_INVALID in of(evs, sha) and finished(sha, {"app"})(evs)


async def test_local_attacks_change_nothing(repo: Repo, nats_server: EmbeddedNats,
                                            bus: EventBus, tmp_path: Path) -> None:
    victim = Repo(tmp_path / "victims" / "team-b")
    victim_head = victim.commit({"secret.txt": "team b"}, "team b's repository")
    first = repo.commit(good_files("v1"), "initial")
    async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
        await wait_for_events(bus, finished(first, {"app"}))
        attacks = {
            "environments.app.target.git.branch":
                "environments:\n  app:\n    path: app\n    target: {git: {branch: main}}\n",
            "environments.app.target.git.repo":
                "environments:\n  app:\n    path: app\n    target:\n      git:\n"
                f"        repo: {victim.path}\n        branch: main\n",
            "sources.other.url":
                CONFIG + f"sources:\n  other: {{url: '{victim.path}', branch: main}}\n",
        }
        for field, text in attacks.items():
            attack = repo.commit({"conveyor.yaml": text}, f"attack {field}")
            await poll(conveyor)
            events = await wait_for_events(bus, refused_and_done(attack))
            invalid = next(e for e in events if e.type == ev.CONFIG_INVALID
                           and e.correlationid == attack)
            assert invalid.data["field"] == field
            assert repo.read("main", "conveyor.yaml") == text  # not overwritten by a render
            assert victim.head() == victim_head
        await next_good_commit_deploys(conveyor, bus, repo, config=CONFIG)
    assert victim.head("main") == victim_head and victim.head("deploy/app") is None


async def test_an_allowed_local_target_is_deployed(repo: Repo, nats_server: EmbeddedNats,
                                                   bus: EventBus, tmp_path: Path) -> None:
    target = Repo(tmp_path / "allowed" / "deployments")
    target.commit({"README": "deployments"}, "init")
    config = ("environments:\n  app:\n    path: app\n    target:\n      git:\n"
              f"        repo: {target.path}\n        branch: deploy/app\n")
    first = repo.commit(good_files("v1", config), "initial")
    settings = replace(settings_for(repo, nats_server, tmp_path / "data"),
                       allow_local_paths=(str(tmp_path / "allowed"),))
    async with running(settings):
        events = await wait_for_events(bus, finished(first, {"app"}))
    assert of(events, first, "app")[-1] == ev.APPLY_SUCCEEDED
    assert target.read("deploy/app", DEPLOYED) is not None
