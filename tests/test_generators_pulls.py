"""The pullRequests generator: one preview environment per open pull request.

The forge is a contract server written from GitHub's, GitLab's, Gitea's and Bitbucket
Cloud's published REST references (``tests/support/forges.py``); the repository, the watcher,
the renderer and the applier are real. Opening a pull request deploys its head branch to its
own environment; closing it removes the environment (and prunes its target with
``onRemove: prune``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.config import parse_config
from orchestrator.domain.events import Event
from orchestrator.domain.generator_pulls import PullRequest
from orchestrator.domain.generators import wanted_pulls
from orchestrator.errors import ConfigError, TransientError
from orchestrator.gitops.forge import ForgeSettings, PullLister
from tests.support.forges import ForgeServer, Opened
from tests.support.repos import Repo
from tests.support.waits import wait_for_events
from tests.test_spine import running, settings_for, trigger

TOKEN = "forge-t0ken"
CONFIG = """
environments:
  main-env: {path: apps/web}
generators:
  - name: previews
    pullRequests: {labels: [preview]}
    onRemove: prune
    template:
      name: "pr-{{number}}"
      path: apps/web
      target: {git: {branch: "preview/{{number}}"}}
"""
CM = ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n  namespace: apps\n"
      "data:\n  version: \"{v}\"\n")


def pr(number: int, branch: str, labels: tuple[str, ...] = ("preview",),
       updated: float = 1_000.0) -> PullRequest:
    return PullRequest(number, branch, "main", f"{number:040x}", labels, updated)


def test_each_selected_pull_request_is_an_environment_on_its_own_branch() -> None:
    config = parse_config(CONFIG, pulls=[pr(7, "feature/Login"), pr(9, "fix")])
    assert sorted(config.environments) == ["main-env", "pr-7", "pr-9"]
    env = config.environments["pr-7"]
    assert env.source == "pr-7" and env.generator == "previews"
    assert env.target == {"git": {"branch": "preview/7"}}
    assert (config.sources["pr-7"].url, config.sources["pr-7"].branch) == ("", "feature/Login")
    assert config.reads_pulls and [p.number for p in config.pulls] == [7, 9]


def test_labels_and_ttl_select_pull_requests() -> None:
    config = parse_config(CONFIG.replace("{labels: [preview]}", "{labels: [preview], ttl: 1h}"))
    pulls = [pr(1, "a", updated=9_000.0), pr(2, "b", labels=(), updated=9_000.0),
             pr(3, "c", updated=1_000.0)]  # updated 2h15 before now: past the ttl
    assert [p.number for p in wanted_pulls(config.generators, pulls, now=10_000.0)] == [1]
    slug = parse_config(CONFIG.replace('"pr-{{number}}"', '"pr-{{branch_slug}}"'),
                        pulls=[pr(4, "Feature/Add_Login")])
    assert "pr-feature-add-login" in slug.environments


def test_a_declared_source_cannot_take_a_pull_requests_name() -> None:
    text = CONFIG.replace("environments:", "sources:\n  pr-7: {url: '', branch: x}\n"
                          "environments:")
    with pytest.raises(ConfigError, match="kept for pull request 7"):
        parse_config(text, pulls=[pr(7, "x")])
    with pytest.raises(ConfigError, match="pullRequests"):
        parse_config(CONFIG.replace("{labels: [preview]}", "{branches: [main]}"))


@pytest.mark.parametrize("kind", ["github", "gitlab", "gitea", "bitbucket"])
async def test_the_lister_pages_through_open_pull_requests_and_leaves_forks_out(
        kind: str, tmp_path: Path) -> None:
    async with ForgeServer(kind, tmp_path, TOKEN) as forge:
        for n in range(1, 131):
            forge.pulls.append(Opened("team/app", n, f"pr {n}", f"b{n}", "main", "",
                                      f"{n:040x}", labels=["preview"] if n % 2 else [],
                                      fork=n == 5, state="closed" if n == 9 else "open"))
        lister = PullLister(ForgeSettings(kind, forge.api_url, "team/app", TOKEN),
                            "https://example.invalid/team/app.git")
        found = await lister.open_pulls()
        assert [p.number for p in found] == [n for n in range(1, 131) if n not in (5, 9)]
        assert found[0].branch == "b1" and found[0].updated_at > 0
        assert found[1].labels == () and found[0].target_branch == "main"
        if kind == "bitbucket":  # no labels on Bitbucket; its commit hashes are 12 digits
            assert found[0].labels == () and found[0].head_sha == f"{1:040x}"[:12]
            assert forge.requests == 3  # 129 open ones (the fork left out after), 50 a page
        else:
            assert found[0].labels == ("preview",) and found[0].head_sha == f"{1:040x}"
        forge.rate_limited = 1  # each forge's own rate-limit answer: retried later
        with pytest.raises(TransientError) as limited:
            await lister.open_pulls()
        assert limited.value.reason == "RateLimited" and (limited.value.delay or 0) > 0
        if kind == "bitbucket":  # a 429 naming no delay: its limits are per rolling hour
            assert limited.value.delay == 60.0
        bad = PullLister(ForgeSettings(kind, forge.api_url, "team/app", "wrong"),
                         "https://example.invalid/team/app.git")
        with pytest.raises(Exception, match="refused the token") as caught:
            await bad.open_pulls()
        assert "wrong" not in str(caught.value)


def happened(kind: str, env: str) -> object:
    def check(events: list[Event]) -> bool:
        return any(e.type == kind and e.subject == env for e in events)
    return check


async def test_opening_and_closing_a_pull_request_deploys_and_removes_its_preview(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    repo.commit({"conveyor.yaml": CONFIG, "apps/web/cm.yaml": CM.format(v="1")}, "main")
    feature = Repo(repo.path, branch="feature-x")
    feature.repo.references.create("refs/heads/feature-x", repo.repo.head.target)
    head = feature.commit({"apps/web/cm.yaml": CM.format(v="2-preview")}, "try a change")
    async with ForgeServer("github", tmp_path / "forge", TOKEN) as forge:
        for key, value in {"CONVEYOR_FORGE": "github", "CONVEYOR_FORGE_API_URL": forge.api_url,
                           "CONVEYOR_FORGE_TOKEN": TOKEN,
                           "CONVEYOR_FORGE_REPO": "team/app"}.items():
            monkeypatch.setenv(key, value)
        async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
            await wait_for_events(bus, happened(ev.APPLY_SUCCEEDED, "main-env"))
            forge.pulls.append(Opened("team/app", 1, "try", "feature-x", "main", "", head,
                                      labels=["preview"]))
            forge.pulls.append(Opened("team/app", 2, "no label", "feature-x", "main", "", head))
            await trigger(conveyor)
            await trigger(conveyor)  # the new source pr-1 is polled from now on
            events = await wait_for_events(bus, happened(ev.APPLY_SUCCEEDED, "pr-1"))
            loaded = [e for e in events if e.type == ev.CONFIG_LOADED and "pulls" in e.data]
            assert loaded[-1].data["environments"] == ["main-env", "pr-1"]
            applied = next(e for e in events if e.type == ev.APPLY_SUCCEEDED
                           and e.subject == "pr-1")
            assert applied.correlationid == head
            assert "2-preview" in (repo.read("preview/1", "apps/configmap-web.yaml") or "")

            # a forge that cannot answer keeps the previews (an outage is not a close)
            forge.pulls[0].state = "closed"
            forge.rate_limited = 3
            before = await bus.last_seq()
            await trigger(conveyor)
            assert forge.rate_limited < 3  # it was asked, and refused
            after = [s.event async for s in bus.read(start_seq=before + 1)]
            assert not [e for e in after if e.type == ev.ENV_REMOVED]
            forge.rate_limited = 0
            await trigger(conveyor)
            await wait_for_events(bus, happened(ev.ENV_PRUNED, "pr-1"))
        assert repo.files("preview/1") == []
        assert "pr-2" not in {e.subject for e in events}
