"""Delivery through every provider to a real HTTP receiver on 127.0.0.1.

Each test starts an aiohttp server that records every request (method, raw path, headers,
body) and answers from a script. ``deliver`` talks to it with a real ``ClientSession``; only
the retry *sleep* is replaced, by one that records the waits it was asked for, so a
``Retry-After: 3`` is checked without waiting three seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from orchestrator.domain import events as ev
from orchestrator.domain.events import Event, new_event
from orchestrator.notify.providers.googlechat import thread_key
from orchestrator.notify.ratelimit import digest
from orchestrator.notify.routing import Route
from orchestrator.notify.sender import DeliveryResult, RetryPolicy, deliver

FIXTURES = Path(__file__).parent / "fixtures" / "notify"
SHA = "9fceb02d0ae598e95dc970b74767f19372d61af8"
FAST = RetryPolicy(attempts=4, initial=0.01, maximum=0.05, max_retry_after=30.0, timeout=5.0)


def load_event(name: str) -> Event:
    return Event.from_dict(json.loads((FIXTURES / "events" / f"{name}.json").read_text()))


@dataclass
class Seen:
    method: str
    path: str  # raw: percent-encoding and query as sent
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: Any = "ok"
    headers: Mapping[str, str] = field(default_factory=dict)


class Receiver:
    """Records requests; answers with scripted replies, then with ``default``."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.replies: deque[Reply] = deque()
        self.default = Reply()
        self.base = ""

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.raw_path, dict(request.headers),
                              await request.read()))
        reply = self.replies.popleft() if self.replies else self.default
        if isinstance(reply.body, str):
            return web.Response(status=reply.status, text=reply.body, headers=reply.headers)
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec.base = f"http://{host}:{port}"
    yield rec
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


class Sleeps:
    """Stands in for ``asyncio.sleep`` in retries: records each wait, returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


async def send(route: Route, event: Event, session: aiohttp.ClientSession, sleeps: Sleeps,
               **kwargs: Any) -> DeliveryResult:
    return await deliver(route, event, session, policy=FAST, sleep=sleeps, clock=lambda: 1e9,
                         **kwargs)


# -- Slack --------------------------------------------------------------------------------------

async def test_slack_webhook_posts_block_kit_with_escaped_text(receiver: Receiver,
                                                               session: aiohttp.ClientSession,
                                                               sleeps: Sleeps) -> None:
    route = Route("chat", "slack", {"url": "${HOOK}"})
    environ = {"HOOK": receiver.url("/services/T000/B000/XXXX")}

    result = await send(route, load_event("apply-failed"), session, sleeps, environ=environ)

    assert result == DeliveryResult(ok=True, status=200, provider_answer="HTTP 200: ok",
                                    message_ref=None, attempts=1)
    (req,) = receiver.seen
    assert (req.method, req.path) == ("POST", "/services/T000/B000/XXXX")
    assert req.headers["Content-Type"] == "application/json; charset=utf-8"
    body = req.json()
    assert set(body) == {"text", "blocks"}
    assert body["text"] == "\u274c prod: apply failed \u00b7 9fceb02"
    header, section, fields, actions, context = body["blocks"]
    assert header == {"type": "header", "text": {
        "type": "plain_text", "text": "\u274c prod: apply failed \u00b7 9fceb02", "emoji": True}}
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    # &, < and > are escaped so a commit message cannot inject links or mentions
    assert "Bump api to 1.4 &amp; raise &lt;limits&gt;" in section["text"]["text"]
    assert fields["fields"][0] == {"type": "mrkdwn", "text": "*Environment*\nprod"}
    assert actions["elements"][0]["url"].startswith("https://github.com/acme/deploy/commit/")
    assert context["type"] == "context"


async def test_slack_bot_posts_then_updates_the_same_message(receiver: Receiver,
                                                             session: aiohttp.ClientSession,
                                                             sleeps: Sleeps) -> None:
    route = Route("chat", "slack", {"token": "${SLACK_TOKEN}", "channel": "#deploys",
                                    "api": receiver.url("/api")})
    environ = {"SLACK_TOKEN": "xoxb-test-token"}
    receiver.script(Reply(body={"ok": True, "channel": "C024BE91L", "ts": "1732612443.000200"}),
                    Reply(body={"ok": True, "channel": "C024BE91L", "ts": "1732612443.000200"}))

    started = await send(route, load_event("apply-started").with_time("t"), session, sleeps,
                         environ=environ)
    # apply.started is not a default chat event, but deliver sends what it is given
    assert started.ok and started.message_ref == "C024BE91L:1732612443.000200"
    failed = await send(route, load_event("apply-failed"), session, sleeps, environ=environ,
                        previous_ref=started.message_ref)
    assert failed.ok and failed.message_ref == started.message_ref

    post, update = receiver.seen
    assert (post.method, post.path) == ("POST", "/api/chat.postMessage")
    assert post.headers["Authorization"] == "Bearer xoxb-test-token"
    assert post.headers["Content-Type"] == "application/json; charset=utf-8"
    assert post.json()["channel"] == "#deploys"
    assert post.json()["unfurl_links"] is False
    assert (update.method, update.path) == ("POST", "/api/chat.update")
    body = update.json()
    assert (body["channel"], body["ts"]) == ("C024BE91L", "1732612443.000200")
    assert body["text"].endswith("prod: apply failed \u00b7 9fceb02")
    assert body["blocks"][0]["type"] == "header"


async def test_slack_ok_false_is_a_failure_even_with_http_200(receiver: Receiver,
                                                              session: aiohttp.ClientSession,
                                                              sleeps: Sleeps) -> None:
    route = Route("chat", "slack", {"token": "xoxb-1", "channel": "#gone",
                                    "api": receiver.url("/api")})
    receiver.script(Reply(body={"ok": False, "error": "channel_not_found"}))

    result = await send(route, load_event("apply-failed"), session, sleeps)

    assert not result.ok and not result.retryable
    assert result.status == 200
    assert result.provider_answer == "Slack refused the message: channel_not_found"
    assert len(receiver.seen) == 1 and sleeps.waits == []


async def test_slack_rate_limit_waits_for_retry_after(receiver: Receiver,
                                                      session: aiohttp.ClientSession,
                                                      sleeps: Sleeps) -> None:
    route = Route("chat", "slack", {"token": "xoxb-1", "channel": "#d",
                                    "api": receiver.url("/api")})
    receiver.script(Reply(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "3"}),
                    Reply(body={"ok": True, "channel": "C1", "ts": "2.0"}))

    result = await send(route, load_event("apply-failed"), session, sleeps)

    assert result.ok and result.attempts == 2 and result.message_ref == "C1:2.0"
    assert sleeps.waits == [3.0]


async def test_slack_internal_error_with_200_is_retried(receiver: Receiver,
                                                        session: aiohttp.ClientSession,
                                                        sleeps: Sleeps) -> None:
    route = Route("chat", "slack", {"token": "xoxb-1", "channel": "#d",
                                    "api": receiver.url("/api")})
    receiver.default = Reply(body={"ok": False, "error": "internal_error"})

    result = await send(route, load_event("apply-failed"), session, sleeps)

    assert not result.ok and result.retryable and result.attempts == FAST.attempts
    assert len(receiver.seen) == FAST.attempts


async def test_a_large_answer_is_read_whole(receiver: Receiver,
                                            session: aiohttp.ClientSession,
                                            sleeps: Sleeps) -> None:
    route = Route("chat", "slack", {"token": "xoxb-1", "channel": "#d",
                                    "api": receiver.url("/api")})
    echo = {"text": "x" * 300_000, "blocks": [{"type": "section"}] * 50}
    receiver.script(Reply(body={"ok": True, "channel": "C1", "ts": "3.0", "message": echo}))

    result = await send(route, load_event("apply-failed"), session, sleeps)

    assert result.ok and result.message_ref == "C1:3.0"


async def test_slack_update_of_a_vanished_message_posts_a_new_one(
        receiver: Receiver, session: aiohttp.ClientSession, sleeps: Sleeps) -> None:
    route = Route("chat", "slack", {"token": "xoxb-1", "channel": "#d",
                                    "api": receiver.url("/api")})
    receiver.script(Reply(body={"ok": False, "error": "message_not_found"}),
                    Reply(body={"ok": True, "channel": "C1", "ts": "9.9"}))

    result = await send(route, load_event("apply-failed"), session, sleeps,
                        previous_ref="C1:1.1")

    assert result.ok and result.message_ref == "C1:9.9"
    assert [s.path for s in receiver.seen] == ["/api/chat.update", "/api/chat.postMessage"]


# -- Teams, Mattermost, Google Chat ---------------------------------------------------------------

async def test_teams_workflows_gets_an_adaptive_card(receiver: Receiver,
                                                     session: aiohttp.ClientSession,
                                                     sleeps: Sleeps) -> None:
    route = Route("teams", "teams", {"url": receiver.url("/workflows/abc/triggers/manual")})
    receiver.script(Reply(202, ""))

    result = await send(route, load_event("apply-failed"), session, sleeps)

    assert result.ok and result.status == 202 and result.message_ref is None
    (req,) = receiver.seen
    assert req.headers["Content-Type"] == "application/json; charset=utf-8"
    body = req.json()
    assert body["type"] == "message"
    (attachment,) = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    title, text, facts = card["body"]
    assert title["type"] == "TextBlock" and title["color"] == "Attention"
    assert title["text"] == "\u274c prod: apply failed \u00b7 9fceb02"
    assert text["wrap"] is True and "Bump api to 1.4 & raise <limits>" in text["text"]
    assert facts["type"] == "FactSet"
    assert facts["facts"][0] == {"title": "Environment", "value": "prod"}
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Open", "url":
                                "https://github.com/acme/deploy/commit/" + SHA}]


async def test_mattermost_gets_an_attachment(receiver: Receiver,
                                             session: aiohttp.ClientSession,
                                             sleeps: Sleeps) -> None:
    route = Route("mm", "mattermost", {"url": receiver.url("/hooks/xyz"),
                                       "channel": "deploys", "username": "conveyor"})

    result = await send(route, load_event("apply-succeeded"), session, sleeps)

    assert result.ok
    body = receiver.seen[0].json()
    assert (body["channel"], body["username"]) == ("deploys", "conveyor")
    (attachment,) = body["attachments"]
    assert attachment["fallback"] == "\u2705 dev: apply succeeded \u00b7 9fceb02"
    assert attachment["color"] == "#2EB67D"
    assert attachment["title_link"] == ("https://gitlab.example.com/acme/platform/deploy"
                                        "/commit/" + SHA)
    assert {"short": True, "title": "Duration", "value": "1m 5s"} in attachment["fields"]


async def test_google_chat_card_threads_one_deployment(receiver: Receiver,
                                                       session: aiohttp.ClientSession,
                                                       sleeps: Sleeps) -> None:
    route = Route("gchat", "googlechat",
                  {"url": receiver.url("/v1/spaces/AAA/messages?key=K&token=T")})
    receiver.default = Reply(body={"name": "spaces/AAA/messages/1",
                                   "thread": {"name": "spaces/AAA/threads/9"}})

    first = await send(route, load_event("apply-started"), session, sleeps)
    second = await send(route, load_event("apply-failed"), session, sleeps,
                        previous_ref=first.message_ref)

    assert first.ok and second.ok
    assert first.message_ref == second.message_ref == "spaces/AAA/threads/9"
    a, b = receiver.seen
    assert a.path == ("/v1/spaces/AAA/messages?key=K&token=T"
                      "&messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD")
    assert a.headers["Content-Type"] == "application/json; charset=UTF-8"
    # the first message opens a thread keyed by the deployment; the next replies in it
    assert a.json()["thread"] == {"threadKey": thread_key(f"{SHA}:prod")}
    assert b.json()["thread"] == {"name": "spaces/AAA/threads/9"}
    card = b.json()["cardsV2"][0]
    assert card["cardId"] == "conveyor"
    assert card["card"]["header"]["title"] == "\u274c prod: apply failed \u00b7 9fceb02"
    widgets = card["card"]["sections"][0]["widgets"]
    assert "raise &lt;limits&gt;" in widgets[0]["textParagraph"]["text"]
    assert widgets[1] == {"decoratedText": {"topLabel": "Environment", "text": "prod"}}
    assert widgets[-1]["buttonList"]["buttons"][0]["onClick"]["openLink"]["url"].endswith(SHA)


async def test_google_chat_text_style(receiver: Receiver, session: aiohttp.ClientSession,
                                      sleeps: Sleeps) -> None:
    route = Route("gchat", "googlechat", {"url": receiver.url("/hook"), "style": "text"})
    receiver.default = Reply(body={"name": "spaces/A/messages/1"})

    assert (await send(route, load_event("apply-failed"), session, sleeps)).ok
    body = receiver.seen[0].json()
    assert set(body) == {"text", "thread"}
    assert body["text"].startswith("*\u274c prod: apply failed \u00b7 9fceb02*\n")


# -- Discord --------------------------------------------------------------------------------------

async def test_discord_posts_with_wait_then_edits(receiver: Receiver,
                                                  session: aiohttp.ClientSession,
                                                  sleeps: Sleeps) -> None:
    route = Route("dc", "discord", {"url": receiver.url("/api/webhooks/123/tok"),
                                    "username": "Conveyor"})
    receiver.script(Reply(body={"id": "1180000000000000001", "channel_id": "55"}),
                    Reply(body={"id": "1180000000000000001", "channel_id": "55"}))

    first = await send(route, load_event("apply-started"), session, sleeps)
    second = await send(route, load_event("apply-failed"), session, sleeps,
                        previous_ref=first.message_ref)

    assert first.message_ref == second.message_ref == "1180000000000000001"
    post, patch = receiver.seen
    assert (post.method, post.path) == ("POST", "/api/webhooks/123/tok?wait=true")
    assert (patch.method, patch.path) == ("PATCH",
                                          "/api/webhooks/123/tok/messages/1180000000000000001")
    body = patch.json()
    assert body["allowed_mentions"] == {"parse": []}  # "@everyone" in a commit pings nobody
    assert "username" not in body  # not editable
    (embed,) = body["embeds"]
    assert embed["title"] == "\u274c prod: apply failed \u00b7 9fceb02"
    assert embed["color"] == 0xE01E5A
    assert embed["url"].endswith(SHA)
    assert embed["timestamp"] == "2025-11-26T09:14:03.512345Z"
    assert {"name": "Environment", "value": "prod", "inline": True} in embed["fields"]
    assert post.json()["username"] == "Conveyor"


async def test_discord_rate_limit_uses_the_json_retry_after(receiver: Receiver,
                                                            session: aiohttp.ClientSession,
                                                            sleeps: Sleeps) -> None:
    route = Route("dc", "discord", {"url": receiver.url("/api/webhooks/1/t")})
    receiver.script(Reply(429, {"message": "You are being rate limited.", "retry_after": 0.25,
                                "global": False}),
                    Reply(body={"id": "7"}))

    result = await send(route, load_event("apply-failed"), session, sleeps)

    assert result.ok and result.message_ref == "7" and sleeps.waits == [0.25]


async def test_discord_edit_of_a_deleted_message_posts_anew(receiver: Receiver,
                                                            session: aiohttp.ClientSession,
                                                            sleeps: Sleeps) -> None:
    route = Route("dc", "discord", {"url": receiver.url("/api/webhooks/1/t")})
    receiver.script(Reply(404, {"message": "Unknown Message", "code": 10008}),
                    Reply(body={"id": "8"}))

    result = await send(route, load_event("apply-failed"), session, sleeps, previous_ref="7")

    assert result.ok and result.message_ref == "8"
    assert [(s.method, s.path) for s in receiver.seen] == [
        ("PATCH", "/api/webhooks/1/t/messages/7"), ("POST", "/api/webhooks/1/t?wait=true")]


# -- generic webhook ------------------------------------------------------------------------------

async def test_webhook_sends_a_signed_structured_cloudevent(receiver: Receiver,
                                                            session: aiohttp.ClientSession,
                                                            sleeps: Sleeps) -> None:
    route = Route("audit", "webhook", {"url": receiver.url("/conveyor"),
                                       "secret": "${AUDIT_SECRET}",
                                       "headers": {"X-Team": "platform"}})
    event = load_event("apply-failed")

    result = await send(route, event, session, sleeps, environ={"AUDIT_SECRET": "s3cret"})

    assert result.ok
    (req,) = receiver.seen
    assert req.headers["Content-Type"] == "application/cloudevents+json; charset=utf-8"
    assert req.headers["X-Team"] == "platform"
    assert req.body == event.to_json()
    assert Event.from_json(req.body) == event
    assert req.json()["specversion"] == "1.0" and req.json()["type"] == ev.APPLY_FAILED
    expected = hmac.new(b"s3cret", req.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(req.headers["X-Conveyor-Signature"], f"sha256={expected}")


async def test_webhook_without_secret_is_unsigned(receiver: Receiver,
                                                  session: aiohttp.ClientSession,
                                                  sleeps: Sleeps) -> None:
    route = Route("audit", "webhook", {"url": receiver.url("/c")})
    assert (await send(route, load_event("apply-failed"), session, sleeps)).ok
    assert "X-Conveyor-Signature" not in receiver.seen[0].headers


# -- commit statuses ------------------------------------------------------------------------------

async def test_github_status_per_environment(receiver: Receiver,
                                             session: aiohttp.ClientSession,
                                             sleeps: Sleeps) -> None:
    route = Route("gh", "github", {"token": "${GH}", "api": receiver.url("/gh")},
                  link="https://conveyor.example.com/envs/{{ env }}")
    receiver.default = Reply(201, {"id": 1, "state": "failure"})
    environ = {"GH": "ghp_token"}

    started = await send(route, load_event("apply-started"), session, sleeps, environ=environ)
    failed = await send(route, load_event("apply-failed"), session, sleeps, environ=environ)

    assert started.ok and failed.ok and failed.status == 201
    pending, failure = receiver.seen
    # repo from the event's repo_url; the status is on the correlated commit
    assert failure.path == f"/gh/repos/acme/deploy/statuses/{SHA}"
    assert failure.headers["Authorization"] == "Bearer ghp_token"
    assert failure.headers["Accept"] == "application/vnd.github+json"
    assert failure.headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert failure.json() == {
        "state": "failure", "context": "conveyor/prod",
        "description": 'apply failed: deployments.apps "api" is invalid: spec.replicas: '
                       "must be >= 0",
        "target_url": "https://conveyor.example.com/envs/prod",
    }
    assert pending.json()["state"] == "pending"


async def test_github_secondary_rate_limit_403_is_retried(receiver: Receiver,
                                                          session: aiohttp.ClientSession,
                                                          sleeps: Sleeps) -> None:
    route = Route("gh", "github", {"token": "t", "repo": "acme/deploy",
                                   "api": receiver.url("")})
    receiver.script(Reply(403, {"message": "You have exceeded a secondary rate limit"},
                          {"Retry-After": "2"}),
                    Reply(201, {"id": 1}))

    result = await send(route, load_event("apply-failed"), session, sleeps)

    assert result.ok and sleeps.waits == [2.0]


async def test_github_refused_token_is_permanent(receiver: Receiver,
                                                 session: aiohttp.ClientSession,
                                                 sleeps: Sleeps) -> None:
    route = Route("gh", "github", {"token": "t", "repo": "acme/deploy",
                                   "api": receiver.url("")})
    receiver.default = Reply(401, {"message": "Bad credentials"})

    result = await send(route, load_event("apply-failed"), session, sleeps)

    assert not result.ok and not result.retryable and len(receiver.seen) == 1
    assert "Bad credentials" in result.provider_answer


async def test_gitlab_status_with_url_encoded_project(receiver: Receiver,
                                                      session: aiohttp.ClientSession,
                                                      sleeps: Sleeps) -> None:
    route = Route("gl", "gitlab", {"token": "glpat-x", "api": receiver.url("/api/v4")})
    receiver.default = Reply(201, {"id": 93, "status": "success"})
    superseded = new_event(ev.APPLY_SUPERSEDED, env="prod", correlation=SHA,
                           data={"repo_url": "https://gitlab.example.com/acme/platform/deploy",
                                 "branch": "main"})

    assert (await send(route, load_event("apply-succeeded"), session, sleeps)).ok
    assert (await send(route, superseded, session, sleeps)).ok

    success, canceled = receiver.seen
    assert success.path == f"/api/v4/projects/acme%2Fplatform%2Fdeploy/statuses/{SHA}"
    assert success.headers["PRIVATE-TOKEN"] == "glpat-x"
    assert success.json() == {
        "state": "success", "name": "conveyor/dev",
        "description": "dev: apply succeeded \u00b7 9fceb02",
        "target_url": f"https://gitlab.example.com/acme/platform/deploy/commit/{SHA}",
        "ref": "main",
    }
    assert canceled.json()["state"] == "canceled"


async def test_gitlab_same_state_answer_counts_as_delivered(receiver: Receiver,
                                                            session: aiohttp.ClientSession,
                                                            sleeps: Sleeps) -> None:
    route = Route("gl", "gitlab", {"token": "t", "project": "42", "api": receiver.url("")})
    receiver.default = Reply(400, {"message": "Cannot transition status via :run from "
                                              ":running (Reason(s): Status cannot transition "
                                              "via \"run\")"})

    result = await send(route, load_event("apply-started"), session, sleeps)

    assert result.ok and "already shows this state" in result.provider_answer
    assert receiver.seen[0].path == f"/projects/42/statuses/{SHA}"
    assert receiver.seen[0].json()["state"] == "running"


# -- retries and failures -------------------------------------------------------------------------

async def test_server_errors_are_retried_with_backoff(receiver: Receiver,
                                                      session: aiohttp.ClientSession,
                                                      sleeps: Sleeps) -> None:
    route = Route("hook", "webhook", {"url": receiver.url("/h")})
    receiver.script(Reply(500, "boom"), Reply(502, "bad gateway"), Reply(200, "ok"))

    result = await send(route, load_event("apply-failed"), session, sleeps)

    assert result.ok and result.attempts == 3 and len(receiver.seen) == 3
    assert len(sleeps.waits) == 2
    assert all(0 < w <= FAST.maximum + FAST.initial for w in sleeps.waits)


async def test_attempts_are_bounded_and_the_failure_is_reported(receiver: Receiver,
                                                                session: aiohttp.ClientSession,
                                                                sleeps: Sleeps) -> None:
    route = Route("hook", "webhook", {"url": receiver.url("/h")})
    receiver.default = Reply(503, "unavailable")

    result = await send(route, load_event("apply-failed"), session, sleeps)

    assert not result.ok and result.retryable and result.status == 503
    assert result.attempts == FAST.attempts == len(receiver.seen)
    assert result.provider_answer == "HTTP 503: unavailable"


async def test_client_errors_are_permanent_and_not_retried(receiver: Receiver,
                                                           session: aiohttp.ClientSession,
                                                           sleeps: Sleeps) -> None:
    route = Route("chat", "slack", {"url": receiver.url("/services/x")})
    receiver.default = Reply(404, "no_service")

    result = await send(route, load_event("apply-failed"), session, sleeps)

    assert not result.ok and not result.retryable and result.attempts == 1
    assert result.provider_answer == "HTTP 404: no_service" and sleeps.waits == []


async def test_a_long_retry_after_is_handed_back_instead_of_slept(
        receiver: Receiver, session: aiohttp.ClientSession, sleeps: Sleeps) -> None:
    route = Route("hook", "webhook", {"url": receiver.url("/h")})
    receiver.default = Reply(429, "slow down", {"Retry-After": "120"})

    result = await send(route, load_event("apply-failed"), session, sleeps)

    assert not result.ok and result.retryable and result.retry_after == 120.0
    assert result.attempts == 1 and sleeps.waits == []


async def test_redirects_are_not_followed(receiver: Receiver, session: aiohttp.ClientSession,
                                          sleeps: Sleeps) -> None:
    route = Route("hook", "webhook", {"url": receiver.url("/old")})
    receiver.default = Reply(301, "", {"Location": receiver.url("/new")})

    result = await send(route, load_event("apply-failed"), session, sleeps)

    assert not result.ok and result.status == 301
    assert [s.path for s in receiver.seen] == ["/old"]


async def test_an_unreachable_receiver_is_retryable_and_the_secret_url_stays_out(
        session: aiohttp.ClientSession, sleeps: Sleeps) -> None:
    # a port nothing listens on: bind one, then close it
    probe = web.AppRunner(web.Application())
    await probe.setup()
    site = web.TCPSite(probe, "127.0.0.1", 0)
    await site.start()
    port = probe.addresses[0][1]
    await probe.cleanup()
    route = Route("chat", "slack", {"url": f"http://127.0.0.1:{port}/services/T/B/SECRET"})

    result = await send(route, load_event("apply-failed"), session, sleeps)

    assert not result.ok and result.retryable and result.status is None
    assert result.attempts == FAST.attempts
    assert "SECRET" not in result.provider_answer
    assert "127.0.0.1" in result.provider_answer


async def test_an_unset_variable_fails_without_sending(receiver: Receiver,
                                                       session: aiohttp.ClientSession,
                                                       sleeps: Sleeps) -> None:
    route = Route("chat", "slack", {"url": "${SLACK_HOOK}"})

    result = await send(route, load_event("apply-failed"), session, sleeps, environ={},
                        previous_ref="kept")

    assert not result.ok and not result.retryable and result.status is None
    assert "SLACK_HOOK is not set" in result.provider_answer
    assert result.message_ref == "kept" and receiver.seen == []


async def test_a_broken_template_still_delivers_the_default_and_flags_it(
        receiver: Receiver, session: aiohttp.ClientSession, sleeps: Sleeps) -> None:
    route = Route("mm", "mattermost", {"url": receiver.url("/hooks/x")},
                  template="{{ commit.sha | no_such_filter }}")

    result = await send(route, load_event("apply-failed"), session, sleeps)

    assert result.ok
    assert "No filter named 'no_such_filter'" in result.template_error
    text = receiver.seen[0].json()["attachments"][0]["text"]
    assert text.startswith('Commit 9fceb02 "Bump api to 1.4')
    assert "template failed" in text


async def test_a_digest_is_delivered_like_any_event(receiver: Receiver,
                                                    session: aiohttp.ClientSession,
                                                    sleeps: Sleeps) -> None:
    held = [new_event(ev.APPLY_SUCCEEDED, env=env, correlation=f"{i:040x}",
                      data={"short": f"{i:07x}", "message": f"change {i}"})
            for i, env in enumerate(["dev", "dev", "stage"])]
    chat = Route("chat", "slack", {"url": receiver.url("/services/x")})
    status = Route("gh", "github", {"token": "t", "repo": "a/b", "api": receiver.url("")})

    assert (await send(chat, digest(held), session, sleeps)).ok
    refused = await send(status, digest(held), session, sleeps)

    assert receiver.seen[0].json()["text"] == "\u2139\ufe0f 3 more deployments: dev, stage"
    assert not refused.ok and len(receiver.seen) == 1
