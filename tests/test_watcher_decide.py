"""The git-watcher's pure decisions: sources, intervals, backoff, affected environments,
signature verdicts."""

from __future__ import annotations

import pytest

from orchestrator.adapters.git_local import CommitInfo
from orchestrator.domain import events as ev
from orchestrator.domain.config import EnvironmentConfig, parse_config
from services.git_watcher import decide
from services.git_watcher.decide import SourceRef, Verdict

CONFIG = """\
sources:
  default:
    interval: 10
  apps:
    url: git://git.example/apps.git
    branch: main
    interval: 1m
    credentials:
      token: ${APPS_TOKEN}
  same:
    url: ""
    branch: release
environments:
  cfg: {path: cfg}
  web: {path: web, source: apps}
  api: {path: api, source: apps}
  rel: {path: rel, source: same}
"""


def commit(sha: str = "a" * 40) -> CommitInfo:
    return CommitInfo(sha, None, "subject", "A <a@x>", "2024-01-01T00:00:00Z")


def no_refs(env: EnvironmentConfig) -> frozenset[str]:
    return frozenset()


def test_watched_sources_include_the_primary_and_every_entry() -> None:
    sources = decide.watched_sources(parse_config(CONFIG), "/srv/config", "main")
    assert set(sources) == {"default", "apps", "same"}
    primary = sources["default"]
    assert (primary.primary, primary.repo, primary.interval, primary.credentials) == (
        True, "/srv/config", 10.0, None)
    apps = sources["apps"]
    assert (apps.repo, apps.branch, apps.credentials) == (
        "git://git.example/apps.git", "main", {"token": "${APPS_TOKEN}"})
    # an empty url is the primary's repository on the source's own branch
    assert (sources["same"].repo, sources["same"].branch) == ("/srv/config", "release")
    assert decide.watched_sources(None, "/r", "")["default"].branch == ""


def test_poll_intervals() -> None:
    sources = decide.watched_sources(parse_config(CONFIG), "/srv/config", "main")
    assert decide.poll_interval(sources["apps"], None) == 60.0
    assert decide.poll_interval(sources["apps"], 2.0) == 2.0  # --interval overrides
    bare = decide.WatchedSource("x", "https://h/r.git")
    assert decide.poll_interval(bare, None) == decide.DEFAULT_REMOTE_INTERVAL == 180.0
    local = decide.WatchedSource("x", "/srv/repo")
    assert decide.poll_interval(local, None) == decide.DEFAULT_LOCAL_INTERVAL == 5.0
    assert decide.jittered(100, 0.0) == 90.0 and decide.jittered(100, 0.999) < 110.0


def test_backoff_grows_exponentially_to_the_interval_with_jitter() -> None:
    steps = [decide.backoff_delay(n, 160.0, 0.999999) for n in range(1, 9)]
    assert [round(s) for s in steps] == [10, 20, 40, 80, 160, 160, 160, 160]
    lows = [decide.backoff_delay(n, 160.0, 0.0) for n in range(1, 9)]
    assert lows == [s / 2 for s in (10, 20, 40, 80, 160, 160, 160, 160)]
    assert decide.backoff_delay(1, 5.0, 1.0) == 1.0  # never below a second
    assert decide.backoff_delay(100, 5.0, 0.5) <= 5.0
    assert decide.backoff_delay(0, 100.0, 0.5) == 100.0  # healthy: the jittered interval


def test_only_environments_of_the_source_are_announced() -> None:
    config = parse_config(CONFIG)
    ref = SourceRef("apps", "git://git.example/apps.git", "main")
    events = decide.events_for_source_commit(commit(), ref, ["web/deploy.yaml"], config,
                                             no_refs, lambda: None)
    assert [(e.type, e.subject) for e in events] == [(ev.COMMIT_DETECTED, "web")]
    # conveyor.yaml in another source's repository means nothing
    assert decide.events_for_source_commit(commit(), ref, ["conveyor.yaml"], config, no_refs,
                                           lambda: None) == []
    first = decide.events_for_source_commit(commit(), ref, None, config, no_refs, lambda: None)
    assert {e.subject for e in first} == {"web", "api"}
    assert first[0].data["source"] == "apps" and first[0].data["repo"] == ref.repo


def test_kustomize_references_make_an_environment_affected() -> None:
    env = parse_config("environments:\n  dev: {path: envs/dev}\n").environments["dev"]

    def refs(e: EnvironmentConfig) -> frozenset[str]:
        return frozenset({"base/app"})

    assert decide.is_affected(env, ["base/app/deploy.yaml"], refs)
    assert not decide.is_affected(env, ["base/application/x.yaml"], refs)
    assert not decide.is_affected(env, ["envs/development/x"], refs)
    assert decide.is_affected(env, ["conveyor.yaml"], refs)
    assert not decide.is_affected(env, ["conveyor.yaml"], refs, config_counts=False)


def test_rejected_commit_is_announced_as_rejected_and_never_detected() -> None:
    config = parse_config(CONFIG)
    ref = SourceRef("apps", "git://git.example/apps.git", "main")
    bad = Verdict(False, "UnknownSigner", "the signing key is not in allowed_signers")
    events = decide.events_for_source_commit(commit(), ref, ["web/a", "api/b"], config,
                                             no_refs, lambda: bad)
    assert {(e.type, e.subject) for e in events} == {(ev.COMMIT_REJECTED, "web"),
                                                     (ev.COMMIT_REJECTED, "api")}
    assert "UnknownSigner" in events[0].data["error"]
    assert events[0].data["signature"]["ok"] is False
    good = Verdict(True, "Verified", signer="ops@example")
    events = decide.events_for_source_commit(commit(), ref, ["web/a"], config, no_refs,
                                             lambda: good)
    assert [e.type for e in events] == [ev.COMMIT_DETECTED]
    assert events[0].data["signature"]["signer"] == "ops@example"


def test_verdict_is_asked_only_when_a_commit_matters() -> None:
    config = parse_config(CONFIG)
    ref = SourceRef("apps", "git://git.example/apps.git", "main")

    def never() -> Verdict | None:
        raise AssertionError("verified a commit that affects nothing")

    assert decide.events_for_source_commit(commit(), ref, ["docs/x"], config, no_refs,
                                           never) == []


VERIFIED = """\
sources:
  default:
    verify: {mode: ssh, allowedSigners: /keys}
environments:
  cfg: {path: cfg}
"""


def test_a_rejected_commit_does_not_change_the_config() -> None:
    current = parse_config(VERIFIED)
    ref = SourceRef("default", "/r", "main")
    unverified = "environments:\n  cfg: {path: cfg}\n  new: {path: new}\n"
    policies: list[object] = []

    def verdict(policy: object) -> Verdict | None:
        policies.append(policy)
        return Verdict(False, "Unsigned")

    result = decide.events_for_commit(commit(), ref, ["conveyor.yaml"], lambda: unverified,
                                      current, no_refs, verdict)
    assert result.rejected and result.config is current
    assert [(e.type, e.subject) for e in result.events] == [(ev.COMMIT_REJECTED, "cfg")]
    # the policy in force is the one before the commit, which the commit tried to drop
    assert policies == [current.sources["default"].verify]


def test_stale_environments_follow_their_config_block() -> None:
    config = parse_config(CONFIG)
    digests = {e.name: decide.env_digest(e) for e in decide.envs_of(config, "apps")}
    assert decide.stale_envs(config, "apps", digests) == []
    moved = parse_config(CONFIG.replace("api: {path: api, source: apps}",
                                        "api: {path: api2, source: apps}"))
    assert [e.name for e in decide.stale_envs(moved, "apps", digests)] == ["api"]


@pytest.mark.parametrize("rand", [0.0, 0.5, 0.99])
def test_backoff_never_exceeds_the_interval(rand: float) -> None:
    for failures in range(1, 50):
        assert 0 < decide.backoff_delay(failures, 180.0, rand) <= 180.0
