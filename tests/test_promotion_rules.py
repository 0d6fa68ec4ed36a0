"""Promotion and rollback decisions (pure): conveyor.yaml's ``promotion:`` block, the gates
on FROM's events, and which revision a rollback restores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.domain import events as ev
from orchestrator.domain import history as hist
from orchestrator.domain import promotion
from orchestrator.domain.config import parse_config
from orchestrator.domain.events import Event, new_event
from orchestrator.domain.rollback import RollbackRefused, choose
from orchestrator.errors import ConfigError

ENVS = """\
environments:
  dev: {path: envs/dev}
  staging: {path: envs/staging}
  prod: {path: envs/prod}
"""
T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def test_promotion_config_parses_with_defaults() -> None:
    config = parse_config(ENVS + """\
promotion:
  staging: {from: dev, auto: true}
  prod:
    from: staging
    after: {healthyFor: 10m}
    via: pull-request
    files: [config/flags.yaml]
""")
    staging, prod = config.promotion["staging"], config.promotion["prod"]
    assert (staging.source, staging.auto, staging.healthy_for, staging.via) == (
        "dev", True, 0.0, "commit")
    assert (prod.source, prod.healthy_for, prod.via, prod.files) == (
        "staging", 600.0, "pull-request", ("config/flags.yaml",))


@pytest.mark.parametrize(("block", "line", "field", "reason"), [
    ("promotion:\n  qa: {from: dev}\n", 6, "promotion.qa", "unknown environment 'qa'"),
    ("promotion:\n  prod: {auto: true}\n", 6, "promotion.prod", "missing 'from'"),
    ("promotion:\n  prod: {from: prod}\n", 6, "promotion.prod.from", "from itself"),
    ("promotion:\n  prod:\n    from: dev\n    aftr: {}\n", 8, "promotion.prod.aftr",
     "did you mean 'after'"),
    ("promotion:\n  prod:\n    from: dev\n    after: {healthyFor: soon}\n", 8,
     "promotion.prod.after.healthyFor", "not a duration"),
    ("promotion:\n  prod:\n    from: dev\n    via: email\n", 8, "promotion.prod.via",
     "commit, pull-request"),
    ("promotion:\n  prod:\n    from: dev\n    files: [../../etc/passwd]\n", 8,
     "promotion.prod.files.0", "outside the repository"),
    ("promotion:\n  prod: {from: staging}\n  staging: {from: prod}\n", 6,
     "promotion.prod.from", "cycle"),
])
def test_promotion_config_errors_name_file_line_and_field(block: str, line: int, field: str,
                                                          reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(ENVS + block)
    assert (info.value.line, info.value.field) == (line, field)
    assert reason in str(info.value) and str(info.value).startswith(f"conveyor.yaml:{line}:")


def event(type_: str, sha: str, minutes: float, env: str = "dev", **data: object) -> Event:
    e = new_event(type_, env=env, correlation=sha, key=f"{type_}{sha}{minutes}",
                  data=dict(data))
    return e.with_time((T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z"))


def test_gates_refuse_with_the_reason_until_the_soak_is_over() -> None:
    now = T0 + timedelta(minutes=12)
    assert "no deployment" in promotion.check("dev", [], soak=600, now=now).reason
    applied = [event(ev.APPLY_SUCCEEDED, "a" * 40, 0)]
    # a kubernetes target reports health: none yet -> wait
    progressing = [*applied, event(ev.HEALTH_PROGRESSING, "a" * 40, 1)]
    verdict = promotion.check("dev", progressing, soak=600, now=now)
    assert not verdict.allowed and "is progressing" in verdict.reason
    healthy = [*progressing, event(ev.HEALTH_HEALTHY, "a" * 40, 5),
               event(ev.HEALTH_HEALTHY, "a" * 40, 6)]
    verdict = promotion.check("dev", healthy, soak=600, now=now)
    assert not verdict.allowed and "for 7m00s of the 10m00s required" in verdict.reason
    verdict = promotion.check("dev", healthy, soak=600, now=now + timedelta(minutes=3))
    assert verdict.allowed and verdict.revision == "a" * 40
    # a degraded spell restarts the clock
    flapping = [*healthy, event(ev.HEALTH_DEGRADED, "a" * 40, 8, status="Degraded"),
                event(ev.HEALTH_HEALTHY, "a" * 40, 9)]
    verdict = promotion.check("dev", flapping, soak=600, now=now + timedelta(minutes=3))
    assert not verdict.allowed and "for 6m00s" in verdict.reason


def test_gates_refuse_after_a_failure_and_judge_the_running_revision() -> None:
    now = T0 + timedelta(hours=1)
    events = [event(ev.APPLY_SUCCEEDED, "a" * 40, 0), event(ev.HEALTH_HEALTHY, "a" * 40, 1),
              event(ev.APPLY_FAILED, "b" * 40, 2)]
    verdict = promotion.check("dev", events, soak=60, now=now)
    assert not verdict.allowed and "apply.failed of bbbbbbb" in verdict.reason
    # a git target reports no health: deployed counts as healthy from the apply on
    git_only = [event(ev.APPLY_SUCCEEDED, "a" * 40, 0), event(ev.APPLY_SUCCEEDED, "c" * 40, 50)]
    verdict = promotion.check("dev", git_only, soak=600, now=now)
    assert verdict.allowed and verdict.revision == "c" * 40
    heal = event(ev.APPLY_SUCCEEDED, "c" * 40, 55, cause="drift")
    assert promotion.check("dev", [*git_only, heal], soak=0, now=now).revision == "c" * 40


def attempts(*rows: tuple[str, str, str]) -> list[hist.Attempt]:
    return [hist.Attempt(env="prod", revision=rev, outcome=outcome, digest=digest)
            for rev, outcome, digest in rows]


def test_rollback_chooses_a_deployment_of_this_environment() -> None:
    done = attempts(("a" * 40, "succeeded", "d1"), ("b" * 40, "succeeded", "d2"),
                    ("c" * 40, "skipped", "d2"), ("e" * 40, "failed", "d3"),
                    ("f" * 40, "succeeded", "d4"))
    assert choose("prod", done).revision == "c" * 40  # one step back: what ran before f
    assert choose("prod", done, steps=2).revision == "a" * 40  # c and b ran the same bundle
    assert choose("prod", done, to="bbbb").revision == "b" * 40
    with pytest.raises(RollbackRefused, match="eeeeeee never deployed to prod"):
        choose("prod", done, to="e" * 7)  # its apply failed: it never ran
    with pytest.raises(RollbackRefused, match="reaches past"):
        choose("prod", done, steps=3)
    with pytest.raises(RollbackRefused, match="no deployment"):
        choose("prod", attempts(("a" * 40, "render-failed", "")))
