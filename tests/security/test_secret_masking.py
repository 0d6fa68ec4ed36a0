"""A malformed Secret's value never reaches render.failed (review: medium finding).

The schema check's message starts with the offending value (``{'nested': 'hunter2'} is not
of type 'string'``), and ``render.failed`` is kept in the log forever. Now a Secret's
``data``/``stringData`` failures say which rule failed, not the value, and every render error
is scrubbed of the Secret values of the render (as written and base64-decoded).
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.errors import ManifestError
from orchestrator.rendering import render
from orchestrator.rendering.parse import parse_yaml
from orchestrator.rendering.validate import REDACTED, mask
from tests.security.pipeline import finished, good_files, next_good_commit_deploys, of, poll
from tests.support.conveyors import running, settings_for
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

VALUE = "hunter2-must-stay-secret"
MALFORMED = f"""\
apiVersion: v1
kind: Secret
metadata:
  name: db
stringData:
  password:
    nested: {VALUE}
"""
VALIDATE = "environments:\n  app:\n    path: app\n    render:\n      validate: {schema: true}\n"


def test_the_schema_error_of_a_secret_names_the_rule_not_the_value(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "secret.yaml").write_text(MALFORMED)
    with pytest.raises(ManifestError) as info:
        render(tmp_path, "app", {"validate": {"schema": True}})
    message = str(info.value)
    assert "app/secret.yaml:6:3: Secret/db: stringData.password:" in message
    assert "the value fails 'type" in message and VALUE not in message  # the rule, not the value


def test_any_error_quoting_a_secret_value_is_masked() -> None:
    encoded = base64.b64encode(VALUE.encode()).decode()
    items, _ = parse_yaml(f"apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\n"
                          f"data: {{password: {encoded}}}\n", "s.yaml")
    errors = [f"template: cannot use {VALUE!r}", f"tool said {encoded}"]
    assert mask(errors, items) == [f"template: cannot use '{REDACTED}'", f"tool said {REDACTED}"]


async def test_render_failed_never_holds_the_value(repo: Repo, nats_server: EmbeddedNats,
                                                   bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(good_files("v1", VALIDATE), "initial")
    async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
        await wait_for_events(bus, finished(first, {"app"}))
        attack = repo.commit({"app/secret.yaml": MALFORMED}, "a malformed Secret")
        await poll(conveyor)
        events = await wait_for_events(bus, finished(attack, {"app"}))
        assert of(events, attack, "app")[-1] == ev.RENDER_FAILED
        repo.commit({"app/secret.yaml": None}, "drop it")
        events = await next_good_commit_deploys(conveyor, bus, repo)
    assert all(VALUE not in e.to_json().decode() for e in events)
