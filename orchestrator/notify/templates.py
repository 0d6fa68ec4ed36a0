"""From an event to a ``Message``: a fixed title and fields, a templated text, a link.

Templates are Jinja2 in an ``ImmutableSandboxedEnvironment`` (a template from conveyor.yaml can
read the event but call nothing unsafe and change nothing) with ``StrictUndefined``, so a
misspelt variable is an error rather than a silently empty message. A route's ``template``
replaces the text; its ``link`` template replaces the link. When either fails to compile or
to render, the built-in default is used, the message says so, and ``Message.template_error``
holds the reason so the caller can log it or emit an event.

Variables a template sees::

    env, type, stage, outcome, outcome_words ("fetch failed"), severity, tone
    commit.sha, commit.short, commit.message (subject line), commit.author, commit.branch,
    commit.committed_at, commit.repo_url
    duration ("4.2s", "1m 5s" or ""), duration_ms, error, target, link (not in ``link``),
    data (the event's data), event (the whole CloudEvent as a mapping)

A digest of rate-limited events (``conveyor.notify.digest``, see ``ratelimit``) always uses the
built-in digest template; its ``data.events`` lists the summaries.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from orchestrator.domain.events import NO_ENV, Event
from orchestrator.notify.message import Message, MessageField, Severity, Tone, clip
from orchestrator.notify.providers.base import commit_sha, repo_path
from orchestrator.notify.ratelimit import DIGEST_TYPE
from orchestrator.notify.routing import Route, severity_of

MAX_TEXT = 8000

DEFAULT_TEMPLATE = """\
{% if commit.short %}
Commit {{ commit.short }}{% if commit.message %} "{{ commit.message }}"{% endif %}\
{% if commit.author %} by {{ commit.author }}{% endif %}

{% endif %}
{{ env }}: {{ stage }} {{ outcome_words }}{% if duration %} in {{ duration }}{% endif %}\
{% if target %} ({{ target }}){% endif %}.
{% if error %}
Error: {{ error }}
{% endif %}
{% if link %}
Details: {{ link }}
{% endif %}
"""

DIGEST_TEMPLATE = """\
{{ count }} more {{ "notification was" if count == 1 else "notifications were" }} \
held back by this notifier's rate limit:
{% for e in events %}
- {{ e.env }} {{ e.short or "-" }} {{ e.stage }} {{ e.outcome }}\
{% if e.message %}: {{ e.message }}{% endif %}

{% endfor %}
{% if omitted %}
- and {{ omitted }} earlier
{% endif %}
"""

_SUCCESS = frozenset({"succeeded", "healthy", "recovered"})
_PENDING = frozenset({"started", "detected", "progressing", "retrying", "requested",
                      "loaded"})

_env = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True,
)


@functools.lru_cache(maxsize=256)
def _compile(source: str) -> jinja2.Template:
    return _env.from_string(source)


def tone_of(event: Event, severity: Severity | None = None) -> Tone:
    severity = severity_of(event) if severity is None else severity
    if severity is Severity.ERROR:
        return "failure"
    if severity is Severity.WARNING:
        return "warning"
    if event.outcome in _SUCCESS:
        return "success"
    if event.outcome in _PENDING:
        return "pending"
    return "neutral"


def human_duration(ms: Any) -> str:
    """``4200`` -> ``4.2s``; ``65000`` -> ``1m 5s``; not a number -> ``""``."""
    if not isinstance(ms, int | float) or isinstance(ms, bool) or ms < 0:
        return ""
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {rest}s" if rest else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m" if minutes else f"{hours}h"


def commit_url(repo_url: str, sha: str) -> str:
    """A web link to the commit for https and scp-like (``git@host:path``) remotes."""
    if not repo_url or not sha:
        return ""
    path = repo_path(repo_url)
    if repo_url.startswith(("http://", "https://")):
        base = repo_url.strip().removesuffix("/").removesuffix(".git")
        return f"{base}/commit/{sha}"
    if "@" in repo_url and path:
        host = repo_url.split("@", 1)[1].split(":", 1)[0].split("/", 1)[0]
        return f"https://{host}/{path}/commit/{sha}"
    return ""


def context(event: Event) -> dict[str, Any]:
    """The variables a template sees (see the module docstring)."""
    data = event.data
    sha = commit_sha(event)
    subject = str(data.get("message") or "").strip().splitlines()
    link = str(data.get("url") or "") or commit_url(str(data.get("repo_url") or ""), sha)
    return {
        "event": event.to_dict(),
        "data": data,
        "env": event.subject if event.subject not in ("", NO_ENV) else "all environments",
        "type": event.type,
        "stage": event.stage,
        "outcome": event.outcome,
        "outcome_words": event.outcome.replace("_", " "),
        "severity": severity_of(event).label,
        "tone": tone_of(event),
        "commit": {
            "sha": sha,
            "short": str(data.get("short") or sha[:7]),
            "message": subject[0] if subject else "",
            "author": str(data.get("author") or ""),
            "branch": str(data.get("branch") or ""),
            "committed_at": str(data.get("committed_at") or ""),
            "repo_url": str(data.get("repo_url") or ""),
        },
        "duration": human_duration(data.get("duration_ms")),
        "duration_ms": data.get("duration_ms"),
        "error": str(data.get("error") or ""),
        "target": str(data.get("target") or ""),
        "link": link,
    }


def _render(source: str, variables: Mapping[str, Any]) -> str:
    return _compile(source).render(variables).strip()


def _describe(exc: Exception) -> str:
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"syntax error on line {exc.lineno}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def render(event: Event, *, template: str = "", link: str = "") -> Message:
    """The message for ``event``; ``template``/``link`` are a route's optional overrides.

    Never raises for a bad template: it falls back and sets ``Message.template_error``.
    """
    if event.type == DIGEST_TYPE:
        return render_digest(event)
    variables = context(event)
    problems: list[str] = []
    if link:
        try:
            variables["link"] = _render(link, {**variables, "link": ""})
        except Exception as exc:  # any template failure falls back, by design
            problems.append(f"link template failed ({_describe(exc)})")
    text = ""
    if template:
        try:
            text = _render(template, variables)
        except Exception as exc:
            problems.append(f"template failed ({_describe(exc)})")
    if not template or (problems and not text):
        text = _render(DEFAULT_TEMPLATE, variables)
    error = "; ".join(problems)
    if error:
        text += f"\n\n\u26a0\ufe0f This notifier's {error}; showing the default message."
    severity = severity_of(event)
    commit = variables["commit"]
    short = f" \u00b7 {commit['short']}" if commit["short"] else ""
    return Message(
        title=f"{variables['env']}: {event.stage} {variables['outcome_words']}{short}",
        text=clip(text, MAX_TEXT),
        severity=severity,
        tone=tone_of(event, severity),
        outcome=event.outcome,
        fields=_fields(variables),
        link=variables["link"],
        key=f"{event.correlationid}:{event.subject}" if event.correlationid else "",
        template_error=error,
    )


def _fields(variables: Mapping[str, Any]) -> tuple[MessageField, ...]:
    commit = variables["commit"]
    pairs = [("Environment", variables["env"]), ("Commit", commit["short"]),
             ("Author", commit["author"]), ("Duration", variables["duration"]),
             ("Target", variables["target"])]
    return tuple(MessageField(name, str(value)) for name, value in pairs if value)


def render_digest(event: Event) -> Message:
    """The message for a digest of events held back by a rate limit."""
    entries = [e for e in event.data.get("events", []) if isinstance(e, Mapping)]
    count = int(event.data.get("count", len(entries)))
    text = _render(DIGEST_TEMPLATE, {"count": count, "events": entries,
                                      "omitted": int(event.data.get("omitted", 0))})
    worst = max((Severity.parse(str(e.get("severity", "info"))) for e in entries),
                default=Severity.INFO)
    tones: Mapping[Severity, Tone] = {Severity.ERROR: "failure", Severity.WARNING: "warning"}
    tone = tones.get(worst, "neutral")
    noun = "deployment" if count == 1 else "deployments"
    envs = sorted({str(e.get("env", "")) for e in entries if e.get("env")})
    return Message(
        title=f"{count} more {noun}: {', '.join(envs)}" if envs else f"{count} more {noun}",
        text=clip(text, MAX_TEXT),
        severity=worst,
        tone=tone,
        outcome="digest",
        fields=(MessageField("Held back", str(count)),),
    )


def render_route(route: Route, event: Event) -> Message:
    """``render`` with the route's template and link."""
    return render(event, template=route.template, link=route.link)
