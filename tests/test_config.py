"""conveyor.yaml: parsed with positions, errors name file, line and field."""

from __future__ import annotations

import pytest

from orchestrator.domain.config import expand, expand_all, parse_config, parse_duration
from orchestrator.errors import ConfigError

GOOD = """\
environments:
  dev:
    path: envs/dev
    target:
      git:
        branch: deploy/dev
  prod:
    path: ./envs/prod/
    retry: {limit: 3, base: 1s, factor: 3, max: 2m}
notifiers:
  ops:
    type: webhook
    url: ${OPS_WEBHOOK_URL}
"""


def test_a_good_config() -> None:
    config = parse_config(GOOD)
    assert set(config.environments) == {"dev", "prod"}
    prod = config.environments["prod"]
    assert prod.path == "envs/prod"
    assert prod.target == {"git": {"branch": "deploy/prod"}}  # the default target
    assert (prod.retry.limit, prod.retry.base, prod.retry.factor, prod.retry.max) == (
        3, 1.0, 3.0, 120.0)
    assert [prod.retry.delay(n) for n in (1, 2, 3, 9)] == [1.0, 3.0, 9.0, 120.0]
    assert config.notifiers["ops"]["url"] == "${OPS_WEBHOOK_URL}"  # never expanded here


@pytest.mark.parametrize(("text", "line", "field", "words"), [
    ("environments:\n  dev:\n    paht: envs/dev\n", 3, "environments.dev.paht",
     "did you mean 'path'"),
    ("environments:\n  dev:\n    path: ../../etc\n", 3, "environments.dev.path",
     "outside the repository"),
    ("environments:\n  dev: {}\n", 2, "environments.dev", "missing 'path'"),
    ("environments:\n  dev:\n    path: a\n    target: {helm: {}}\n", 4,
     "environments.dev.target", "git, kubernetes"),
    ("environments:\n  dev:\n    path: a\n    retry:\n      limit: -1\n", 5,
     "environments.dev.retry.limit", "whole number"),
    ("environments:\n  dev:\n    path: a\n    source: nope\n", 4, "environments.dev.source",
     "unknown source"),
    ("environments:\n  dev:\n    path: a\nnotifiers:\n  x: {url: y}\n", 5, "notifiers.x",
     "missing 'type'"),
    ("environments:\n  bad.name:\n    path: a\n", 2, "environments.bad.name", "letters"),
    ("enviroments:\n  dev:\n    path: a\n", 1, "enviroments", "unknown top-level key"),
])
def test_errors_name_file_line_and_field(text: str, line: int, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    err = info.value
    assert (err.file, err.line, err.field) == ("conveyor.yaml", line, field)
    assert words in str(err)
    assert str(err).startswith(f"conveyor.yaml:{line}: ")


def test_yaml_syntax_error_names_the_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("environments:\n  dev:\n    path: [unclosed\n  prod:\n")
    assert info.value.line == 4


def test_empty_file() -> None:
    with pytest.raises(ConfigError, match="empty"):
        parse_config("")


def test_expansion_uses_the_environment_and_never_leaks_values() -> None:
    env = {"TOKEN": "s3cr3t"}
    assert expand("Bearer ${TOKEN}", env) == "Bearer s3cr3t"
    assert expand("${MISSING:-fallback}", env) == "fallback"
    assert expand_all({"a": ["${TOKEN}", 1]}, env) == {"a": ["s3cr3t", 1]}
    with pytest.raises(ConfigError) as info:
        expand("${MISSING}", env)
    assert "MISSING" in str(info.value) and "s3cr3t" not in str(info.value)


@pytest.mark.parametrize(("value", "seconds"), [(30, 30.0), ("30s", 30.0), ("5m", 300.0),
                                                ("1h", 3600.0), ("250ms", 0.25)])
def test_durations(value: int | str, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(("text", "line", "field", "words"), [
    ("environments:\n  dev:\n    path: a\n    render:\n      exlude: [x]\n", 4,
     "environments.dev.render", "exlude"),
    ("environments:\n  dev:\n    path: a\nnotifiers:\n  ops:\n    type: webhok\n", 6,
     "notifiers.ops.type", "unknown notifier type"),
    ("environments:\n  dev:\n    path: a\n    target:\n      kubernetes:\n        namspace: x\n",
     4, "environments.dev.target", "did you mean 'namespace'"),
])
def test_deep_settings_are_checked_when_the_config_arrives(
        text: str, line: int, field: str, words: str) -> None:
    from services.git_watcher.config_check import check_config

    with pytest.raises(ConfigError) as info:
        check_config(parse_config(text))
    assert (info.value.line, info.value.field) == (line, field)
    assert words in str(info.value)


def test_a_source_url_with_a_password_is_refused() -> None:
    text = ("environments:\n  dev:\n    path: a\n    source: charts\nsources:\n  charts:\n"
            "    url: https://bob:hunter2@git.example.com/charts.git\n")
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert (info.value.line, info.value.field) == (7, "sources.charts.url")
    assert "hunter2" not in str(info.value)
