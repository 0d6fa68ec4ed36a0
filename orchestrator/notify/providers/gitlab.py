"""GitLab commit statuses: ``POST {api}/projects/{id or url-encoded path}/statuses/{sha}``.

Each environment is one status ``name``, ``conveyor/<env>``, moving ``pending`` -> ``running``
-> ``success`` | ``failed`` | ``canceled`` (a superseded commit). Authenticated with the
``PRIVATE-TOKEN`` header.

GitLab refuses to set a status to the state it already has with HTTP 400 "Cannot transition
status via :run from :running". For a redelivered event that is the wanted end state, so it is
read as delivered (the answer says so), not as a permanent failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar
from urllib.parse import quote

from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.notify.message import (
    Answer,
    Message,
    Request,
    Response,
    json_request,
    read_http,
)
from orchestrator.notify.providers.base import (
    commit_sha,
    config_error,
    http_url,
    optional,
    repo_path,
    setting,
    status_context,
    status_description,
)

DEFAULT_API = "https://gitlab.com/api/v4"

STATES: Mapping[str, str] = MappingProxyType({
    ev.COMMIT_DETECTED: "pending",
    ev.RENDER_SUCCEEDED: "pending",
    ev.APPLY_STARTED: "running",
    ev.APPLY_RETRYING: "running",
    ev.HEALTH_PROGRESSING: "running",
    ev.APPLY_SUCCEEDED: "success",
    ev.APPLY_SKIPPED: "success",
    ev.HEALTH_HEALTHY: "success",
    ev.RENDER_FAILED: "failed",
    ev.RENDER_DEAD: "failed",
    ev.APPLY_FAILED: "failed",
    ev.APPLY_DEAD: "failed",
    ev.HEALTH_DEGRADED: "failed",
    ev.COMMIT_REJECTED: "failed",
    ev.CONFIG_INVALID: "failed",
    ev.APPLY_SUPERSEDED: "canceled",
})
SAME_STATE = "Cannot transition status"


@dataclass(frozen=True, slots=True)
class GitLabStatus:
    token: str
    project: str = ""  # numeric id or group/sub/name; empty means "from the event's repo_url"
    api: str = DEFAULT_API
    context: str = "conveyor"
    kind: ClassVar[str] = "gitlab"
    updates: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], name: str = "") -> GitLabStatus:
        return cls(
            token=setting(settings, "token", "gitlab", name=name),
            project=optional(settings, "project").strip("/"),
            api=http_url(settings, "api", "gitlab", name=name, default=DEFAULT_API).rstrip("/"),
            context=optional(settings, "context", "conveyor"),
        )

    def build(self, message: Message, event: Event, ref: str | None = None) -> Request:
        project = self.project or repo_path(str(event.data.get("repo_url") or ""))
        if not project:
            raise config_error("gitlab notifier needs 'project' (id or group/name; the "
                               "event's repo_url did not name one)", "project")
        payload: dict[str, Any] = {
            "state": STATES.get(event.type, "pending"),
            "name": status_context(event, self.context),
            "description": status_description(message, event, 255),
        }
        if message.link.startswith(("http://", "https://")):
            payload["target_url"] = message.link
        branch = event.data.get("branch")
        if isinstance(branch, str) and branch:
            payload["ref"] = branch
        url = (f"{self.api}/projects/{quote(project, safe='')}"
               f"/statuses/{quote(commit_sha(event), safe='')}")
        return json_request("POST", url, payload, headers={"PRIVATE-TOKEN": self.token})

    def read(self, response: Response, *, ref: str | None = None,
             now: float | None = None) -> Answer:
        if response.status == 400 and SAME_STATE in response.text:
            return Answer(ok=True, detail="GitLab already shows this state (HTTP 400 "
                                          "'Cannot transition status'): nothing to change")
        return read_http(response, now=now)


def accepts(event: Event) -> bool:
    return event.type in STATES and bool(commit_sha(event))
