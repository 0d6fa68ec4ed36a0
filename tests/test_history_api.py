"""History, DORA metrics, dead-letter retry and the causal trace, through the real services.

One run: a good commit, a broken one (render fails), a fix, then a commit whose apply keeps
failing transiently until the runtime declares it dead. ``conveyor retry`` hands the dead
letter back to the applier, which deploys it. The log then tells the whole story.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from conveyor.app import Conveyor
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.commands import history as history_cmd
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.errors import TransientError
from orchestrator.ports import ApplyRequest, ApplyResult
from orchestrator.secrets import SecretPolicy
from orchestrator.settings import Settings
from orchestrator.targets.git.target import GitTarget
from services.api.app import ApiService
from services.git_watcher.service import GitWatcher
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

TOKEN = "history-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = """\
environments:
  dev:
    path: envs/dev
    target: {git: {branch: deploy/dev}}
    retry: {limit: 100, base: 0.01, factor: 1, max: 0.01}
  prod:
    path: envs/prod
    target: {git: {branch: deploy/prod}}
notifiers:
  ops:
    type: webhook
    url: ${OPS_WEBHOOK_URL}
"""


def cm(env: str, version: str) -> str:
    return (f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  namespace: {env}\n"
            f"data:\n  version: {version}\n")


def has(type_: str, sha: str, env: str = "dev", n: int = 1) -> Callable[[list[Event]], bool]:
    def check(events: list[Event]) -> bool:
        return sum(e.type == type_ and e.correlationid == sha and e.subject == env
                   for e in events) >= n

    return check


@contextlib.asynccontextmanager
async def webhook() -> AsyncIterator[str]:
    async def hook(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


def printed(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What the command printed (the services' log lines share stdout in this process)."""
    return [line for line in capsys.readouterr().out.splitlines() if not LOG_LINE.match(line)]


def edges(nodes: list[dict[str, Any]], out: set[tuple[str, str]] | None = None,
          parent: str = "") -> set[tuple[str, str]]:
    """(parent type, child type) pairs of a trace tree."""
    out = set() if out is None else out
    for node in nodes:
        if parent:
            out.add((parent, node["type"]))
        edges(node["children"], out, node["type"])
    return out


def count(nodes: list[dict[str, Any]], type_: str) -> int:
    return sum((n["type"] == type_) + count(n["children"], type_) for n in nodes)


async def test_history_metrics_retry_and_trace_tell_the_story(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CONVEYOR_API_TOKEN", TOKEN)
    read_only: set[str] = set()  # revisions the dev target refuses, transiently
    original_apply = GitTarget.apply

    async def apply(self: GitTarget, request: ApplyRequest) -> ApplyResult:
        if request.revision in read_only:
            raise TransientError(f"{self.branch} is read-only", delay=0.01)
        return await original_apply(self, request)

    monkeypatch.setattr(GitTarget, "apply", apply)
    async with webhook() as url:
        monkeypatch.setenv("OPS_WEBHOOK_URL", url)
        c1 = repo.commit({"conveyor.yaml": CONFIG, "envs/dev/cm.yaml": cm("dev", "'1'"),
                          "envs/prod/cm.yaml": cm("prod", "'1'")}, "initial")
        conveyor = Conveyor(Settings(nats_url=nats_server.url, data_dir=tmp_path / "data",
                                     repo=str(repo.path), branch="main", listen="127.0.0.1:0",
                                     interval=3600.0, api_token=TOKEN,
                                     secrets=SecretPolicy(env_allow=("OPS_*",))))
        await conveyor.start()
        try:
            watcher = conveyor.service("git-watcher")
            api = conveyor.service("api")
            assert isinstance(watcher, GitWatcher) and isinstance(api, ApiService)
            await wait_for_events(bus, has(ev.APPLY_SUCCEEDED, c1))
            c2 = repo.commit({"envs/dev/cm.yaml": cm("dev", "[unclosed")}, "break dev")
            await watcher.poll()
            await wait_for_events(bus, has(ev.RENDER_FAILED, c2))
            c3 = repo.commit({"envs/dev/cm.yaml": cm("dev", "'3'")}, "fix dev")
            await watcher.poll()
            await wait_for_events(bus, has(ev.APPLY_SUCCEEDED, c3))
            c4 = repo.commit({"envs/dev/cm.yaml": cm("dev", "'4'")}, "dev 4 (target read-only)")
            read_only.add(c4)
            await watcher.poll()
            events = await wait_for_events(bus, has(ev.APPLY_DEAD, c4))
            dead = next(e for e in events if e.type == ev.APPLY_DEAD)
            retrying = [e for e in events if e.type == ev.APPLY_RETRYING]
            assert len(retrying) == 12 and dead.data["original"]["type"] == ev.RENDER_SUCCEEDED
            read_only.clear()  # the target is writable again: retry the dead letter

            async with aiohttp.ClientSession(headers=AUTH) as http:
                retry_url = f"{api.url}/api/v1/events/{dead.id}/retry"
                async with aiohttp.ClientSession() as anonymous, \
                        anonymous.post(retry_url) as resp:
                    assert resp.status == 401
                code = await history_cmd.retry(argparse.Namespace(
                    api=api.url, event_id=dead.id, output="text"))
                assert code == 0
                assert f"retry 1 of apply.dead {dead.id[:12]}" in "\n".join(printed(capsys))
                events = await wait_for_events(bus, has(ev.APPLY_SUCCEEDED, c4))
                again = next(e for e in events if e.data.get("retry_of") == dead.id)
                assert (again.type, again.causationid) == (ev.RENDER_SUCCEEDED, dead.id)
                assert again.id != dead.data["original"]["id"]
                assert "nginx" not in (repo.read("deploy/dev", "dev/configmap-app.yaml") or "")
                assert "'4'" in (repo.read("deploy/dev", "dev/configmap-app.yaml") or "")
                await wait_for_events(bus, has(ev.NOTIFY_SENT, c4, n=2))  # dead + succeeded

                # -- history: every attempt, newest first, failures included --------------
                async with http.get(f"{api.url}/api/v1/environments/dev/history") as resp:
                    assert resp.status == 200
                    body = await resp.json()
                got = [(a["revision"], a["outcome"]) for a in body["attempts"]]
                assert got == [(c4, "succeeded"), (c3, "succeeded"), (c2, "render-failed"),
                               (c1, "succeeded")]
                latest, _, broken, _ = body["attempts"]
                assert (latest["retries"], latest["attempts"], latest["error"]) == (12, 2, "")
                assert latest["message"] == "dev 4 (target read-only)"
                assert latest["author"] == "Dev Eloper <dev@example.com>"
                assert latest["duration_ms"] > 0 and latest["committed_at"]
                assert "envs/dev/cm.yaml" in broken["error"]
                async with http.get(f"{api.url}/api/v1/environments/dev/history",
                                    params={"limit": "1"}) as resp:
                    body = await resp.json()
                assert (body["total"], len(body["attempts"])) == (4, 1)
                async with http.get(f"{api.url}/api/v1/environments/nope/history") as resp:
                    assert resp.status == 404

                code = await history_cmd.history(argparse.Namespace(
                    api=api.url, env="dev", limit=0, output="text"))
                lines = printed(capsys)
                assert code == 0
                assert lines[0].startswith("TIME (UTC)")
                assert c4[:7] in lines[1] and "succeeded (12 retries) x2" in lines[1]
                assert c2[:7] in lines[3] and "render-failed" in lines[3]
                assert "Dev Eloper" in lines[3] and "break dev: envs/dev/cm.yaml" in lines[3]

                # -- DORA: 3 deployments of dev; 1 of 4 changes failed, restored once --------
                async with http.get(f"{api.url}/api/v1/metrics/dora") as resp:
                    body = await resp.json()
                m = {x["env"]: x for x in body["environments"]}
                assert (m["dev"]["deployments"], m["dev"]["change_attempts"],
                        m["dev"]["change_failures"]) == (3, 4, 1)
                assert m["dev"]["change_failure_rate"] == 0.25
                assert m["dev"]["restores"] == 1 and m["dev"]["failing_since"] == ""
                assert m["dev"]["lead_time_samples"] == 3
                assert m["prod"]["deployments"] == 1
                assert m["dev"]["deployment_frequency_per_day"] == pytest.approx(3 / 30)
                async with http.get(f"{api.url}/api/v1/metrics/dora",
                                    params={"window": "nonsense"}) as resp:
                    assert resp.status == 400
                code = await history_cmd.metrics(argparse.Namespace(
                    api=api.url, window="7d", env="dev", output="text"))
                out = "\n".join(printed(capsys))
                assert code == 0 and "dev" in out and "25%" in out and "prod" not in out

                # -- trace: retries and notify hops hang under their causes ----------------
                async with http.get(f"{api.url}/api/v1/trace/{c4}") as resp:
                    tree = (await resp.json())["tree"]
                pairs = edges(tree)
                assert {(ev.COMMIT_DETECTED, ev.RENDER_SUCCEEDED),
                        (ev.RENDER_SUCCEEDED, ev.APPLY_RETRYING),
                        (ev.RENDER_SUCCEEDED, ev.APPLY_DEAD),
                        (ev.APPLY_DEAD, ev.RENDER_SUCCEEDED),  # the retry
                        (ev.RENDER_SUCCEEDED, ev.APPLY_SUCCEEDED),
                        (ev.APPLY_DEAD, ev.NOTIFY_SENT),
                        (ev.APPLY_SUCCEEDED, ev.NOTIFY_SENT)} <= pairs
                assert count(tree, ev.APPLY_RETRYING) == 12
                assert [n["type"] for n in tree] == [ev.COMMIT_DETECTED]  # one root

                # -- retrying a failure hands its cause back; errors are 404 / 409 ---------
                failed = next(e for e in events if e.type == ev.RENDER_FAILED)
                async with http.post(f"{api.url}/api/v1/events/{failed.id}/retry") as resp:
                    assert resp.status == 202
                    body = await resp.json()
                assert (body["type"], body["attempt"]) == (ev.COMMIT_DETECTED, 1)
                await wait_for_events(bus, has(ev.RENDER_FAILED, c2, n=2))
                ok = next(e for e in events if e.type == ev.APPLY_SUCCEEDED)
                async with http.post(f"{api.url}/api/v1/events/{ok.id}/retry") as resp:
                    assert resp.status == 409
                    assert "not a dead letter or failure" in (await resp.json())["error"]
                async with http.post(f"{api.url}/api/v1/events/{'f' * 32}/retry") as resp:
                    assert resp.status == 404
                code = await history_cmd.retry(argparse.Namespace(
                    api=api.url, event_id="0" * 32, output="text"))
                assert code == 1 and "404" in capsys.readouterr().err
        finally:
            await conveyor.stop()
