"""conveyor.yaml ``sources:``: url, branch, interval, credentials, webhook secret, verify."""

from __future__ import annotations

import pytest

from orchestrator.domain.config import VerifyConfig, parse_config
from orchestrator.errors import ConfigError

FULL = """\
sources:
  apps:
    url: https://git.example.com/team/apps.git
    branch: release
    interval: 30s
    credentials:
      username: deploy
      token: ${APPS_TOKEN}
    webhook:
      secret: ${APPS_HOOK_SECRET}
    verify:
      mode: ssh
      allowedSigners: /var/run/secrets/conveyor/allowed_signers
  infra:
    url: git@git.example.com:team/infra.git
    verify:
      mode: gpg
      keyring: ${KEYRING_DIR}/trusted.asc
environments:
  web: {path: web, source: apps}
  net: {path: net, source: infra}
  cfg: {path: cfg}
"""


def test_full_source_schema() -> None:
    config = parse_config(FULL)
    apps = config.sources["apps"]
    assert (apps.url, apps.branch, apps.interval) == (
        "https://git.example.com/team/apps.git", "release", 30.0)
    assert apps.credentials == {"username": "deploy", "token": "${APPS_TOKEN}"}
    assert apps.webhook_secret == "${APPS_HOOK_SECRET}"
    assert apps.verify == VerifyConfig("ssh", allowed_signers="/var/run/secrets/conveyor/"
                                              "allowed_signers")
    infra = config.sources["infra"]
    assert infra.verify == VerifyConfig("gpg", keyring="${KEYRING_DIR}/trusted.asc")
    assert infra.credentials == {} and infra.webhook_secret is None and infra.interval is None
    assert config.environments["cfg"].source == "default"


def test_sources_stay_unexpanded() -> None:
    """The text travels in events: references stay references."""
    assert "${APPS_TOKEN}" in parse_config(FULL).text


@pytest.mark.parametrize(("snippet", "field", "words"), [
    ("    webhook:\n      secret: hunter2\n", "sources.s.webhook.secret", "environment reference"),
    ("    webhook:\n      token: ${X}\n", "sources.s.webhook", "unknown key"),
    ("    verify:\n      mode: x509\n", "sources.s.verify.mode", "ssh, gpg"),
    ("    verify:\n      mode: ssh\n", "sources.s.verify", "allowedSigners"),
    ("    verify:\n      mode: gpg\n      allowedSigners: /a\n", "sources.s.verify", "keyring"),
    ("    credentials: token\n", "sources.s.credentials", "mapping"),
    ("    brnch: main\n", "sources.s.brnch", "did you mean 'branch'"),
    ("    interval: soon\n", "sources.s.interval", "not a duration"),
])
def test_invalid_sources_name_the_field(snippet: str, field: str, words: str) -> None:
    text = f"sources:\n  s:\n    url: git://h/r\n{snippet}environments:\n  e: {{path: e}}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert info.value.field == field
    assert words in str(info.value)
    assert info.value.line is not None


def test_source_names_are_subject_safe() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("sources:\n  'a b':\n    url: git://h/r\nenvironments: {}\n")
    assert "letters, digits" in str(info.value)


def test_existing_minimal_sources_still_parse() -> None:
    config = parse_config("sources:\n  s:\n    url: git://h/r\n    branch: main\n"
                          "environments:\n  e: {path: e, source: s}\n")
    assert config.sources["s"].branch == "main"
    assert config.sources["s"].verify is None
