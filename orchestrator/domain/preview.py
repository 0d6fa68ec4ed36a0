"""Pull-request previews: what a pull request would change in each environment, for people.

Pure. ``parse_pull_request`` reads a GitHub, Gitea or Forgejo ``pull_request`` webhook
delivery (opened, synchronize(d), reopened), a GitLab "Merge Request Hook" or a Bitbucket
Cloud ``pullrequest:created|updated`` one; ``comment`` writes the one comment Conveyor
keeps per pull request (found again by its hidden marker and updated on every push), from
each affected environment's object-level diff (``orchestrator.domain.diff``: Secret values
redacted) or its render error; ``status`` is the commit status of one environment
(``conveyor/<env>``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from orchestrator.domain.diff import ObjectDiff, summarise

MARKER = "<!-- conveyor-preview -->"
COMMENT_MAX = 60_000  # GitHub refuses comments over 65 536 characters
ACTIONS = ("opened", "synchronize", "reopened")


@dataclass(frozen=True, slots=True)
class PullRequestEvent:
    number: int  # GitLab: the merge request's iid
    head_sha: str
    head_ref: str
    base_ref: str
    repo: str  # owner/name (GitLab: the project's path with namespace)
    action: str
    provider: str = "github"
    url: str = ""  # the pull request's page, where the forge gives it
    fork: bool = False  # Bitbucket: the head lives in another repository

    @property
    def fetch_ref(self) -> str:
        """Where the forge serves the pull request's head in the base repository. Bitbucket
        Cloud serves no pull request refs: the head is the source branch itself."""
        if self.provider == "gitlab":
            return f"refs/merge-requests/{self.number}/head"
        if self.provider == "bitbucket":
            return f"refs/heads/{self.head_ref}"
        return f"refs/pull/{self.number}/head"


EVENT_HEADERS = MappingProxyType({"github": ("x-github-event",),
                                  "gitea": ("x-gitea-event", "x-forgejo-event"),
                                  "forgejo": ("x-forgejo-event", "x-gitea-event")})
# GitHub says "synchronize", Gitea and Forgejo "synchronized"
PREVIEWED = MappingProxyType({"opened": "opened", "reopened": "reopened",
                              "synchronize": "synchronize", "synchronized": "synchronize"})


def parse_pull_request(headers: Mapping[str, str], body: bytes,
                       provider: str = "github") -> PullRequestEvent | None:
    """A ``pull_request`` delivery worth a preview (GitHub, Gitea, Forgejo: the same
    payload shape), else None (other events and actions: closed, labeled...). Raises
    ValueError for a body that is not one."""
    h = {k.lower(): v for k, v in headers.items()}
    if provider == "gitlab":
        return _gitlab(h, body)
    if provider == "bitbucket":
        return _bitbucket(h, body)
    event = next((h[name] for name in EVENT_HEADERS.get(provider, ()) if name in h), "")
    if event != "pull_request":
        return None
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("the body is not a JSON object")
    action = PREVIEWED.get(str(data.get("action") or ""))
    if action is None:
        return None
    pr, repo = data.get("pull_request") or {}, data.get("repository") or {}
    try:
        return PullRequestEvent(int(pr["number"]), str(pr["head"]["sha"]),
                                str(pr["head"]["ref"]), str(pr["base"]["ref"]),
                                str(repo["full_name"]), action, provider)
    except (KeyError, TypeError, ValueError):
        raise ValueError("a pull_request delivery without number, head, base or "
                         "repository") from None


def _gitlab(h: Mapping[str, str], body: bytes) -> PullRequestEvent | None:
    """GitLab's "Merge Request Hook": open and reopen, and an update that pushed commits
    (``oldrev`` set; other updates are title, labels, approvals...)."""
    if h.get("x-gitlab-event") != "Merge Request Hook":
        return None
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("the body is not a JSON object")
    mr = data.get("object_attributes") or {}
    action = {"open": "opened", "reopen": "reopened"}.get(str(mr.get("action") or ""))
    if mr.get("action") == "update" and mr.get("oldrev"):
        action = "synchronize"
    if action is None:
        return None
    try:
        return PullRequestEvent(int(mr["iid"]), str(mr["last_commit"]["id"]),
                                str(mr["source_branch"]), str(mr["target_branch"]),
                                str((data.get("project") or {})["path_with_namespace"]),
                                action, "gitlab")
    except (KeyError, TypeError, ValueError):
        raise ValueError("a merge request delivery without iid, last_commit, branches or "
                         "project") from None


# Bitbucket Cloud's pull request events (support.atlassian.com/bitbucket-cloud/docs/event-
# payloads): "updated" is sent for a push to the source branch and for a title or description
# edit alike; both are previewed (the comment is updated in place, so a re-run is harmless).
BITBUCKET_ACTIONS = MappingProxyType({"pullrequest:created": "opened",
                                      "pullrequest:updated": "synchronize"})
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|^[-/.]|[/.]$|\.lock$")


def valid_branch(name: str) -> bool:
    """A branch name git accepts (``git check-ref-format``'s rules), so that a name from a
    payload can only ever name a branch in a refspec."""
    return bool(name) and len(name) <= 255 and _BAD_REF.search(name) is None


def _bitbucket(h: Mapping[str, str], body: bytes) -> PullRequestEvent | None:
    action = BITBUCKET_ACTIONS.get(h.get("x-event-key", ""))
    if action is None:
        return None
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("the body is not a JSON object")
    pr, repo = data.get("pullrequest") or {}, data.get("repository") or {}
    try:
        source, target = pr["source"], pr["destination"]
        full_name = str(repo["full_name"])
        head_repo = str((source.get("repository") or {}).get("full_name") or full_name)
        event = PullRequestEvent(
            int(pr["id"]), str(source["commit"]["hash"]), str(source["branch"]["name"]),
            str(target["branch"]["name"]), full_name, action, "bitbucket",
            str(((pr.get("links") or {}).get("html") or {}).get("href") or ""),
            head_repo.lower() != full_name.lower())
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ValueError("a pullrequest delivery without id, source, destination or "
                         "repository") from None
    if pr.get("state", "OPEN") != "OPEN":
        return None
    if not (valid_branch(event.head_ref) and valid_branch(event.base_ref)):
        raise ValueError("a pullrequest delivery whose branch names git refuses")
    if not re.fullmatch(r"[0-9a-f]{7,40}", event.head_sha):
        raise ValueError("a pullrequest delivery whose source commit is not a hash")
    return event


@dataclass(frozen=True, slots=True)
class EnvPreview:
    """One environment at the pull request's head: its diff against what it runs, or why it
    could not be rendered."""

    env: str
    objects: int = 0
    diffs: tuple[ObjectDiff, ...] = ()
    error: str = ""
    running: str = ""  # the revision the environment runs ("" when none)
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error

    def to_dict(self) -> dict[str, Any]:
        return {"env": self.env, "ok": self.ok, "objects": self.objects, "error": self.error,
                "running": self.running,
                "changes": {c: sum(1 for d in self.diffs if d.change == c)
                            for c in ("added", "changed", "removed")}}


def status(preview: EnvPreview) -> tuple[str, str]:
    """(state, description) of the ``conveyor/<env>`` commit status."""
    if not preview.ok:
        return "failure", f"render failed: {preview.error}"[:140]
    if not preview.diffs:
        return "success", f"{preview.objects} objects, no change"
    counts = preview.to_dict()["changes"]
    parts = ", ".join(f"{n} {c}" for c, n in counts.items() if n)
    return "success", f"{preview.objects} objects rendered: {parts}"[:140]


def comment(event: PullRequestEvent, previews: Sequence[EnvPreview]) -> str:
    """The pull request's one Conveyor comment (Markdown)."""
    lines = [MARKER, f"### Conveyor preview of {event.head_sha[:7]}", ""]
    if not previews:
        lines.append("This pull request changes no environment's inputs. Nothing to preview.")
    for p in previews:
        running = f" (runs {p.running[:7]})" if p.running else " (nothing deployed yet)"
        if not p.ok:
            lines += [f"#### ❌ `{p.env}`{running}: render failed", "", "```",
                      p.error[:4000], "```", ""]
            continue
        lines += [f"#### `{p.env}`{running}", "", "```", summarise(p.diffs), "```"]
        for d in p.diffs:
            lines += ["<details>", f"<summary>{d}</summary>", "", "```diff",
                      d.unified_text.rstrip(), "```", "</details>"]
        lines.append("")
    lines.append("Rendered with the environments' settings of the base branch; nothing "
                 "is applied until the pull request is merged.")
    text = "\n".join(lines)
    if len(text) > COMMENT_MAX:
        text = text[:COMMENT_MAX] + "\n\n… (truncated: the full diff is `conveyor diff`)\n"
    return text
