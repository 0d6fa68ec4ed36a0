"""Typed, versioned payloads: one class per event type, one codec, old logs still read.

``tests/fixtures/event-log-v1.json`` is a log written by Conveyor before payloads were typed
(main at 3f5f9e4: a pipeline on the demo repository with a render failure, an invalid
conveyor.yaml, notifications to a working and a failing webhook, a health verdict and dead
letters). Today's code must read all of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.domain import events as ev
from orchestrator.domain import history as hist
from orchestrator.domain.codec import (
    build,
    carry,
    decode,
    decode_as,
    decode_data,
    encode,
    version_of,
)
from orchestrator.domain.events import Event, new_event, schema_for
from orchestrator.domain.payload_docs import DOC, rendered
from orchestrator.domain.payloads import (
    BY_TYPE,
    ApplyFailed,
    ApplyFields,
    ApplySucceeded,
    CommitDetected,
    ConfigInvalid,
    DeadLetter,
    HealthProgressing,
    NotifySent,
    RenderFailed,
    RenderSucceeded,
    Unknown,
)
from orchestrator.domain.state import project
from orchestrator.domain.trace import summary

FIXTURE = Path(__file__).parent / "fixtures" / "event-log-v1.json"


def v1_log() -> list[Event]:
    return [Event.from_dict(raw) for raw in json.loads(FIXTURE.read_text())]


def test_every_event_type_has_one_payload_class() -> None:
    assert set(BY_TYPE) == set(ev.KNOWN_TYPES)
    assert all(t == cls.TYPE for t, cls in BY_TYPE.items())


def test_a_log_written_before_payloads_were_typed_decodes() -> None:
    events = v1_log()
    assert {version_of(e) for e in events} == {1}   # no dataschema then
    for e in events:
        payload = decode(e)
        assert type(payload) is BY_TYPE[e.type], e.type
        assert payload.extra == {}, (e.type, sorted(payload.extra))  # every key is named
        # nothing is lost: encoding gives back every key the old event had a value for
        assert {k: v for k, v in e.data.items() if v is not None}.items() <= encode(
            payload).items(), e.type
    by_type = {e.type: decode(e) for e in events}
    detected = by_type[ev.COMMIT_DETECTED]
    assert isinstance(detected, CommitDetected) and len(detected.revision) == 40
    assert detected.env is not None and detected.env["name"] in ("dev", "prod")
    failed = by_type[ev.RENDER_FAILED]
    assert isinstance(failed, RenderFailed) and failed.errors and failed.error
    invalid = by_type[ev.CONFIG_INVALID]
    assert isinstance(invalid, ConfigInvalid) and invalid.file == "conveyor.yaml"
    sent = by_type[ev.NOTIFY_SENT]
    assert isinstance(sent, NotifySent) and sent.for_type.startswith("conveyor.")
    health = by_type[ev.HEALTH_PROGRESSING]
    assert isinstance(health, HealthProgressing) and health.objects[0]["name"] == "web"
    assert health.children == ()  # recorded before the applier listed live children


def test_a_health_verdict_without_children_decodes_and_one_with_them_round_trips() -> None:
    old = new_event(ev.HEALTH_HEALTHY, env="dev", key="h", data={
        "status": "Healthy", "message": "1 object(s) healthy", "unhealthy": 0, "objects": []})
    payload = decode(old)
    assert isinstance(payload, BY_TYPE[ev.HEALTH_HEALTHY]) and payload.extra == {}
    assert payload.children == ()
    tree = {"kind": "Deployment", "namespace": "apps", "name": "web", "children": [
        {"kind": "ReplicaSet", "name": "web-1", "status": "Healthy", "message": "",
         "children": [{"kind": "Pod", "name": "web-1-a", "status": "Healthy", "message": ""}]}]}
    new = new_event(ev.HEALTH_HEALTHY, env="dev", key="h2", data={"status": "Healthy",
                                                                 "children": [tree]})
    assert decode(new).children == (tree,)  # type: ignore[attr-defined]


def test_version_1_dead_letters_are_upcast_with_a_code() -> None:
    dead = [e for e in v1_log() if e.type == ev.RENDER_DEAD]
    assert dead and all("code" not in e.data for e in dead)
    for e in dead:
        payload = decode(e)
        assert isinstance(payload, DeadLetter) and payload.code == "Exhausted"
        assert payload.original is not None and payload.original["type"] == ev.COMMIT_DETECTED
        assert hist.dead_original(e).id == payload.original["id"]


def test_version_1_unhealthy_objects_move_out_of_the_object_count() -> None:
    unhealthy = [{"kind": "Deployment", "name": "web", "status": "Progressing"}]
    old = decode_data(ev.APPLY_FAILED, {"reason": "HealthCheckTimeout", "objects": unhealthy},
                      version=1)
    assert isinstance(old, ApplyFailed)
    assert old.unhealthy_objects == tuple(unhealthy) and old.objects == 0
    new = decode_data(ev.APPLY_FAILED, {"objects": 3, "unhealthy_objects": unhealthy})
    assert isinstance(new, ApplyFailed) and new.objects == 3


def test_the_projections_fold_the_old_log() -> None:
    events = v1_log()
    projection = project((i + 1, e) for i, e in enumerate(events))
    fixed = next(e for e in reversed(events) if e.type == ev.COMMIT_DETECTED)
    for env in ("dev", "prod"):
        assert projection.envs[env].last_applied_revision == fixed.correlationid
    attempts = hist.build((i + 1, e) for i, e in enumerate(events))
    prod = attempts["prod"]
    assert [a.outcome for a in prod] == [hist.SUCCEEDED, hist.SKIPPED, hist.SKIPPED]
    assert all(a.author and a.message and a.apply_ms is not None for a in prod)
    # the fixture's last step dead-lettered every dev commit: the newest outcome wins
    dev = attempts["dev"]
    assert len(dev) == 4 and {a.outcome for a in dev} == {hist.DEAD}
    assert all(a.error == "renderer backend unavailable: connection refused" for a in dev)
    assert summary(next(e for e in events if e.type == ev.RENDER_DEAD)).startswith("reason: ")


def test_new_events_name_their_payload_version_and_round_trip() -> None:
    payload = RenderFailed(revision="a" * 40, error="bad", errors=("x.yaml:3: bad",))
    event = new_event(ev.RENDER_FAILED, env="dev", correlation="a" * 40, data=encode(payload))
    assert event.dataschema == schema_for(ev.RENDER_FAILED) == (
        "urn:conveyor:payload:conveyor.render.failed:v2")
    assert version_of(event) == 2
    back = Event.from_json(event.to_json())
    assert back.dataschema == event.dataschema and decode(back) == payload
    assert isinstance(decode_data("conveyor.future.thing", {"a": 1}), Unknown)


def test_the_event_log_doc_is_generated_from_the_payload_classes() -> None:
    text = DOC.read_text()
    assert rendered(text) == text, "run: python -m orchestrator.domain.payload_docs"


def test_build_writes_exactly_the_fields_given_and_refuses_unknown_names() -> None:
    data = build(RenderSucceeded, revision="a" * 40, source_config=None, objects=3,
                 extra={"later": 1})
    # a None given is written (null), a field not given is left out, extra comes after
    assert data == {"revision": "a" * 40, "source_config": None, "objects": 3, "later": 1}
    assert decode_data(ev.RENDER_SUCCEEDED, data) == RenderSucceeded(
        revision="a" * 40, objects=3, extra={"later": 1})
    with pytest.raises(TypeError, match="revison"):  # a misspelt field never reaches the log
        build(RenderSucceeded, revison="a" * 40)


def test_decode_as_reads_a_base_class_and_carry_copies_keys_as_written() -> None:
    event = new_event(ev.APPLY_SKIPPED, env="dev", correlation="b" * 40,
                      data={"digest": "sha256:x", "objects": 2, "revision": "b" * 40})
    assert isinstance(decode_as(event, ApplySucceeded), ApplySucceeded)
    assert decode_as(event, ApplyFields).digest == "sha256:x"
    other = decode_as(new_event(ev.CONFIG_LOADED, env=ev.NO_ENV, data={"digest": "d"}),
                      ApplyFields)  # another type: read by the class's fields
    assert type(other) is ApplyFields and other.digest == "d"
    assert carry(event, ("digest", "message", "objects")) == {"digest": "sha256:x",
                                                               "objects": 2}
