"""The GitOps workflow end to end on a real pipeline: release to dev, promote dev to prod,
roll prod back, every step a commit on the served repository and an event in the log.

The whole of Conveyor runs (watcher, renderer, applier with git targets pushing to
``deploy/<env>`` of the same ``git daemon`` repository); the watcher is triggered instead of
polling, and each step awaits its outcome in the log.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from conveyor.demo import demo_files
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.domain.trace import build_trace
from orchestrator.errors import PermanentError
from orchestrator.gitops.auto import AutoPromoter
from orchestrator.gitops.forge import ForgeSettings
from orchestrator.gitops.workflow import GitOps
from orchestrator.resources import Resources
from orchestrator.settings import Settings
from services.api.app import ApiService
from tests.support.conveyors import running
from tests.support.forges import ForgeServer
from tests.support.gitservers import GitDaemon, Upstream, git
from tests.support.waits import wait_for_events

PROMOTION = """\
promotion:
  prod:
    from: dev
    after: {healthyFor: 0s}   # git targets report no health: deployed is healthy
    files: [settings.txt]
"""


def deployed(sha: str, env: str) -> Callable[[list[Event]], bool]:
    def check(events: list[Event]) -> bool:
        return any(e.correlationid == sha and e.subject == env and e.type in (
            ev.APPLY_SUCCEEDED, ev.APPLY_FAILED, ev.RENDER_FAILED) for e in events)

    return check


def rendered_image(bare: Path, env: str) -> str:
    text = git(bare, "show", f"deploy/{env}:{env}/deployment.apps-web.yaml")
    return next(line.split("image:")[1].strip() for line in text.splitlines()
                if "image:" in line)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], capture_output=True,
                          text=True, check=False, cwd=Path(__file__).parent.parent)


async def test_release_promote_rollback(nats_server: EmbeddedNats, bus: EventBus,
                                        tmp_path: Path) -> None:
    up = Upstream(tmp_path / "srv", "config")
    files = demo_files()
    files["conveyor.yaml"] += PROMOTION
    files["envs/dev/settings.txt"] = "checkout=v2\n"  # promoted along with the images
    files["envs/prod/settings.txt"] = "checkout=v1\n"
    first = up.push(files, "initial")
    async with GitDaemon(up.root, receive_pack=True) as daemon:
        url = daemon.url("config.git")
        settings = Settings(nats_url=nats_server.url, data_dir=tmp_path / "data", repo=url,
                            branch="main", listen="127.0.0.1:0", interval=3600.0)
        ops = GitOps(Resources.around(bus, settings), environ={})
        async with running(settings) as conveyor:
            await wait_for_events(bus, deployed(first, "prod"))
            await wait_for_events(bus, deployed(first, "dev"))
            assert rendered_image(up.bare, "dev") == "nginx:1.27"

            # 1. release to dev: a commit on main, deployed like any other (the release asks
            # the watcher to fetch: no poll interval to wait for)
            released = await ops.release("dev", ["nginx=nginx:1.28"])
            events = await wait_for_events(bus, deployed(str(released.commit), "dev"))
            assert rendered_image(up.bare, "dev") == "nginx:1.28"
            assert rendered_image(up.bare, "prod") == "nginx:1.27"
            chain = [e for e in events if e.correlationid == released.commit]
            kinds = [e.type for e in chain]
            assert kinds[0] == ev.RELEASE_COMMITTED and ev.APPLY_SUCCEEDED in kinds
            assert {n.event.type for n in build_trace(chain)} >= {ev.RELEASE_COMMITTED,
                                                                ev.COMMIT_DETECTED}

            # 2. promotion, with the CLI through the api: prod gets what dev runs now, plus
            # the listed file
            api = conveyor.service("api")
            assert isinstance(api, ApiService)
            done = await asyncio.to_thread(cli, "promote", "dev", "prod", "--api", api.url,
                                           "-o", "json")
            assert done.returncode == 0, done.stderr
            promoted = json.loads(done.stdout)
            assert promoted["changed"] and promoted["images"] == ["nginx=nginx:1.28"]
            assert promoted["files"] == ["envs/prod/kustomization.yaml",
                                         "envs/prod/settings.txt"]
            assert git(up.bare, "show", "main:envs/prod/settings.txt") == "checkout=v2"
            events = await wait_for_events(bus, deployed(promoted["commit"], "prod"))
            assert rendered_image(up.bare, "prod") == "nginx:1.28"
            message = git(up.bare, "log", "-1", "--format=%B", "main")
            assert f"Conveyor-Promotion: dev@{released.commit} -> prod" in message
            types = [e.type for e in events if e.subject == "prod"
                     and e.type.startswith("conveyor.promotion")]
            assert types == [ev.PROMOTION_REQUESTED, ev.PROMOTION_COMMITTED]
            again = await ops.promote("dev", "prod")
            assert not again.changed  # prod already runs what dev runs
            shown = await asyncio.to_thread(cli, "promotions", "--api", api.url)
            assert shown.returncode == 0, shown.stderr
            [row] = shown.stdout.splitlines()[1:]
            assert row.split()[:6] == ["dev", "->", "prod", str(released.commit)[:7],
                                       promoted["commit"][:7], "no"]
            assert "open: dev healthy on" in row

            # 3. rollback in Git: prod's inputs as they were at its previous deployment
            with pytest.raises(PermanentError, match="never deployed to prod") as info:
                await ops.rollback("prod", to=str(released.commit))  # a dev-only commit
            assert info.value.reason == "RollbackRefused"
            async with aiohttp.ClientSession() as http, http.post(
                    f"{api.url}/api/v1/environments/prod/rollback", json={"steps": 1}) as resp:
                back = await resp.json()
                assert resp.status == 201, back
            assert back["to"] == first
            events = await wait_for_events(bus, deployed(back["commit"], "prod"))
            assert rendered_image(up.bare, "prod") == "nginx:1.27"
            assert rendered_image(up.bare, "dev") == "nginx:1.28"  # dev untouched
            [event] = [e for e in events if e.type == ev.ROLLBACK_COMMITTED]
            assert event.correlationid == back["commit"] and event.data["to"] == first
            # the history marks what Conveyor committed
            shown = await asyncio.to_thread(cli, "history", "prod", "--api", api.url)
            assert shown.returncode == 0, shown.stderr
            rows = shown.stdout.splitlines()[1:]
            assert f"[rollback to {first[:7]}] Roll back prod to {first[:7]}" in rows[0]
            assert "[promotion from dev] Promote dev" in rows[1]
            assert "[" not in rows[2]  # the first deployment: an ordinary commit
            for name in ("kustomization.yaml", "settings.txt"):
                assert git(up.bare, "show", f"main:envs/prod/{name}") == \
                    files[f"envs/prod/{name}"].rstrip("\n")
    log = git(up.bare, "log", "--format=%s", "main").splitlines()
    assert len(log) == 4 and log[-1] == "initial"  # never forced: every step is on top


async def test_auto_promotion_fires_once_per_revision(nats_server: EmbeddedNats, bus: EventBus,
                                                      tmp_path: Path) -> None:
    up = Upstream(tmp_path / "srv", "config")
    files = demo_files()
    files["conveyor.yaml"] += "promotion:\n  prod: {from: dev, auto: true}\n"
    first = up.push(files, "initial")
    async with GitDaemon(up.root, receive_pack=True) as daemon:
        settings = Settings(nats_url=nats_server.url, data_dir=tmp_path / "data",
                            repo=daemon.url("config.git"), branch="main",
                            listen="127.0.0.1:0", interval=3600.0)
        async with running(settings) as conveyor:
            promoter = conveyor.service("promoter")
            assert isinstance(promoter, AutoPromoter)
            await wait_for_events(bus, deployed(first, "dev"))
            await wait_for_events(bus, deployed(first, "prod"))
            released = await GitOps(Resources.around(bus, settings), environ={}).release(
                "dev", ["nginx=nginx:1.29"])

            def promoted(events: list[Event]) -> bool:
                return any(e.type == ev.PROMOTION_COMMITTED for e in events)

            events = await wait_for_events(bus, promoted)
            [event] = [e for e in events if e.type == ev.PROMOTION_COMMITTED]
            assert event.subject == "prod" and event.data["auto"] is True
            assert event.data["revision"] == released.commit and event.source == \
                "conveyor/promoter"
            await wait_for_events(bus, deployed(event.correlationid, "prod"))
            assert rendered_image(up.bare, "prod") == "nginx:1.29"
            await promoter.check_once()  # dev still runs that revision: nothing more
            head = git(up.bare, "rev-parse", "main")
    assert head == event.correlationid
    every = [s.event async for s in bus.read()]
    assert len([e for e in every if e.type == ev.PROMOTION_COMMITTED]) == 1


@pytest.mark.parametrize("kind", ["github", "bitbucket"])
async def test_journey_release_auto_promotion_pull_request_merge_rollback(
        kind: str, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's journey: release to dev, dev deployed, the automatic promotion opens a
    pull request to prod, it is merged, prod deploys, prod is rolled back and runs the
    previous image again; each step in the trace and the history."""
    up = Upstream(tmp_path / "srv", "config")
    files = demo_files()
    files["conveyor.yaml"] += "promotion:\n  prod: {from: dev, auto: true, via: pull-request}\n"
    first = up.push(files, "initial")
    async with GitDaemon(up.root, receive_pack=True) as daemon, \
            ForgeServer(kind, up.root, "journey-token") as forge:
        monkeypatch.setenv("CONVEYOR_FORGE", kind)
        monkeypatch.setenv("CONVEYOR_FORGE_API_URL", forge.api_url)
        monkeypatch.setenv("CONVEYOR_FORGE_TOKEN", "journey-token")
        monkeypatch.setenv("CONVEYOR_FORGE_REPO", "team/config")
        settings = Settings(nats_url=nats_server.url, data_dir=tmp_path / "data",
                            repo=daemon.url("config.git"), branch="main",
                            listen="127.0.0.1:0", interval=3600.0)
        async with running(settings) as conveyor, aiohttp.ClientSession() as http:
            api = conveyor.service("api")
            assert isinstance(api, ApiService)
            await wait_for_events(bus, deployed(first, "dev"))
            await wait_for_events(bus, deployed(first, "prod"))
            released = await GitOps(Resources.around(bus, settings), environ={}).release(
                "dev", ["nginx=nginx:1.29"])
            await wait_for_events(bus, deployed(str(released.commit), "dev"))

            def proposed(events: list[Event]) -> bool:
                return any(e.type == ev.PROMOTION_PROPOSED for e in events)

            events = await wait_for_events(bus, proposed)
            [event] = [e for e in events if e.type == ev.PROMOTION_PROPOSED]
            [pr] = forge.pulls
            assert (pr.base, pr.sha, event.data["auto"]) == ("main", event.correlationid, True)
            assert rendered_image(up.bare, "prod") == "nginx:1.27"  # not merged: not deployed

            # the pull request is merged (fast-forward), and the push webhook asks to fetch
            git(up.bare, "update-ref", "refs/heads/main", pr.sha, str(released.commit))
            async with http.post(f"{api.url}/api/v1/refresh") as resp:
                assert resp.status == 202
            await wait_for_events(bus, deployed(pr.sha, "prod"))
            assert rendered_image(up.bare, "prod") == "nginx:1.29"

            # a rollback proposed for review first: a pull request, main untouched
            async with http.post(f"{api.url}/api/v1/environments/prod/rollback",
                                 json={"via": "pull-request"}) as resp:
                proposal = await resp.json()
                assert resp.status == 201, proposal
            assert proposal["pull_request"]["base"] == "main" and len(forge.pulls) == 2
            assert git(up.bare, "rev-parse", "main") == pr.sha
            assert forge.pulls[1].title.startswith(f"Roll back prod to {first[:7]}")
            await wait_for_events(bus, lambda es: any(
                e.type == ev.ROLLBACK_PROPOSED and e.correlationid == proposal["commit"]
                for e in es))
            async with http.post(f"{api.url}/api/v1/environments/prod/rollback",
                                 json={}) as resp:
                back = await resp.json()
                assert resp.status == 201, back
            await wait_for_events(bus, deployed(back["commit"], "prod"))
            assert rendered_image(up.bare, "prod") == "nginx:1.27"  # the previous image

            async with http.get(f"{api.url}/api/v1/trace/{pr.sha}") as resp:
                trace = await resp.json()
            kinds = {e["type"] for e in trace["events"]}
            assert {ev.PROMOTION_PROPOSED, ev.COMMIT_DETECTED, ev.APPLY_SUCCEEDED} <= kinds
            shown = await asyncio.to_thread(cli, "history", "prod", "--api", api.url)
            rows = shown.stdout.splitlines()[1:]
            assert f"[rollback to {first[:7]}]" in rows[0]
            assert "[promotion from dev]" in rows[1] and pr.sha[:7] in rows[1]


async def test_a_pull_request_merged_with_its_own_merge_commit_is_marked_in_the_history(
        nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A release proposed as a pull request and merged with a merge commit (GitHub's "Create
    a merge commit"): the merge commit deploys, and the history marks it as that release,
    naming the proposed commit it merged; an ordinary merge commit stays unmarked."""
    up = Upstream(tmp_path / "srv", "config")
    first = up.push(demo_files(), "initial")
    async with GitDaemon(up.root, receive_pack=True) as daemon, \
            ForgeServer("github", up.root, "merge-token") as forge:
        monkeypatch.setenv("CONVEYOR_FORGE_REPO", "team/config")
        settings = Settings(nats_url=nats_server.url, data_dir=tmp_path / "data",
                            repo=daemon.url("config.git"), branch="main",
                            listen="127.0.0.1:0", interval=3600.0)
        async with running(settings) as conveyor, aiohttp.ClientSession() as http:
            api = conveyor.service("api")
            assert isinstance(api, ApiService)
            await wait_for_events(bus, deployed(first, "dev"))
            proposed = await GitOps(
                Resources.around(bus, settings), environ={},
                forge=ForgeSettings("github", forge.api_url, "team/config", "merge-token"),
            ).release("dev", ["nginx=nginx:1.29"], via="pull-request")
            [pr] = forge.pulls
            assert proposed.pull_request is not None and pr.sha == proposed.commit

            def merge(head: str, subject: str) -> str:
                tree = git(up.bare, "rev-parse", f"{head}^{{tree}}")
                sha = git(up.bare, "commit-tree", tree, "-p", "main", "-p", head,
                          "-m", subject)
                git(up.bare, "update-ref", "refs/heads/main", sha)
                return sha

            merged = merge(pr.sha, f"Merge pull request #{pr.number} from {pr.head}")
            async with http.post(f"{api.url}/api/v1/refresh") as resp:
                assert resp.status == 202
            await wait_for_events(bus, deployed(merged, "dev"))
            assert rendered_image(up.bare, "dev") == "nginx:1.29"
            # a merge of a branch nobody proposed through Conveyor
            git(up.bare, "branch", "topic", first)
            other = merge("topic", "Merge branch topic")
            async with http.post(f"{api.url}/api/v1/refresh") as resp:
                assert resp.status == 202
            await wait_for_events(bus, deployed(other, "dev"))

            async with http.get(f"{api.url}/api/v1/environments/dev/history") as resp:
                attempts = {a["revision"]: a for a in (await resp.json())["attempts"]}
            assert attempts[merged]["action"] == "release"
            assert attempts[merged]["merged"] == pr.sha
            assert "action" not in attempts[other] and "merged" not in attempts[other]
            shown = await asyncio.to_thread(cli, "history", "dev", "--api", api.url)
            row = next(r for r in shown.stdout.splitlines() if r.split()[2] == merged[:7])
            assert f"[release, merged {pr.sha[:7]}] Merge pull request" in row
