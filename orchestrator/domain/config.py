"""conveyor.yaml: the schema, parsed and checked with positions, kept unexpanded.

(Over 400 lines: the whole committer-facing schema and its checks in one place; sources,
environments and generators share the position-keeping helpers at the bottom.)

Configuration lives in Git, so it arrives as text at a commit. ``parse_config`` turns that text
into frozen values or raises ``ConfigError`` naming file, line and field. ``${VAR}`` references
are *not* expanded here: the text travels in events, and each service expands only the values it
uses, with its own environment (so prod's credentials exist only where prod is applied).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator.domain.generator_pulls import PullRequest, pr_source
from orchestrator.domain.generators import Generator, parse_generators, relevant_dirs
from orchestrator.domain.generators import expand as expand_generators
from orchestrator.domain.yamlpos import Document, YamlSyntaxError, load_one
from orchestrator.errors import ConfigError

CONFIG_FILE = "conveyor.yaml"
DEFAULT_SOURCE = "default"
# a NATS subject token and a Kubernetes label value: 1-63 chars, alphanumeric at both ends
_ENV_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$")
_URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@", re.IGNORECASE)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
TARGET_KINDS = ("git", "kubernetes")
ENV_KEYS = ("path", "source", "target", "render", "sync", "retry", "description")
SOURCE_KEYS = ("url", "branch", "interval", "credentials", "webhook", "verify", "description")
VERIFY_MODES = ("ssh", "gpg")
_ENV_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff of a failing apply: ``base * factor**attempt`` capped at ``max``, ``limit`` tries."""

    limit: int = 5
    base: float = 2.0
    factor: float = 2.0
    max: float = 300.0

    def delay(self, attempt: int) -> float:
        return float(min(self.max, self.base * self.factor ** max(0, attempt - 1)))


@dataclass(frozen=True, slots=True)
class EnvironmentConfig:
    name: str
    path: str
    source: str = DEFAULT_SOURCE
    target: Mapping[str, Any] = field(default_factory=dict)
    render: Mapping[str, Any] = field(default_factory=dict)
    sync: Mapping[str, Any] = field(default_factory=dict)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    raw: Mapping[str, Any] = field(default_factory=dict)
    generator: str = ""  # the generator that made it ("" when written by hand)
    on_remove: str = "orphan"  # what happens to its target when it stops being generated
    health: Mapping[str, Any] = field(default_factory=dict)
    """conveyor.yaml's top-level ``health:`` block (shared by every environment), as checked by
    ``_health``; it travels with the environment in events."""

    @property
    def target_kind(self) -> str:
        return next(iter(self.target), "git")


@dataclass(frozen=True, slots=True)
class VerifyConfig:
    """``sources.<name>.verify``: commits must be signed by a key trusted here.

    ``mode`` ssh checks against ``allowed_signers`` (git's ``gpg.ssh.allowedSignersFile``
    format), gpg against ``keyring`` (exported public keys). Paths are on the watcher's
    filesystem (a mounted secret), never in the repository being verified; ``${VAR}`` allowed.
    """

    mode: str
    allowed_signers: str | None = None
    keyring: str | None = None


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """A git source. ``credentials`` and ``webhook_secret`` hold ``${VAR}`` references and
    file paths only (expanded by the service that uses them), never secret values."""

    name: str
    url: str  # "" means the repository that holds conveyor.yaml
    branch: str = ""
    interval: float | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)
    credentials: Mapping[str, Any] = field(default_factory=dict)
    webhook_secret: str | None = None
    verify: VerifyConfig | None = None


PROMOTION_KEYS = ("from", "auto", "after", "via", "files")
PROMOTION_VIAS = ("commit", "pull-request")


@dataclass(frozen=True, slots=True)
class PromotionConfig:
    """``promotion.<to>``: how ``to`` receives what ``source`` (``from:``) runs.

    ``healthy_for`` is the soak time: ``source`` must have been healthy on its applied
    revision that long, with no failed apply since. ``files`` are paths relative to the
    environment directories, copied from ``source``'s to ``to``'s along with the images.
    """

    to: str
    source: str
    auto: bool = False
    healthy_for: float = 0.0
    via: str = "commit"
    files: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    environments: Mapping[str, EnvironmentConfig]
    notifiers: Mapping[str, Mapping[str, Any]]
    sources: Mapping[str, SourceConfig]
    raw: Mapping[str, Any]
    text: str = ""
    generators: tuple[Generator, ...] = ()
    dirs: tuple[str, ...] = ()  # the tree's directories the generators matched (see parse_config)
    pulls: tuple[PullRequest, ...] = ()  # the open pull requests pullRequests generators used
    health: Mapping[str, Any] = field(default_factory=dict)
    promotion: Mapping[str, PromotionConfig] = field(default_factory=dict)

    @property
    def reads_pulls(self) -> bool:
        """Whether the environment set depends on the forge's open pull requests."""
        return any(g.reads_pulls for g in self.generators)

    @property
    def reads_tree(self) -> bool:
        """Whether the environment set depends on the repository's directories, not only on
        this file (then a commit that adds or removes a matching directory changes it)."""
        return any(g.reads_tree for g in self.generators)


def _err(doc: Document | None, message: str, *path: str | int, file: str) -> ConfigError:
    line = doc.where(*path).line if doc is not None else None
    dotted = ".".join(str(p) for p in path) if path else None
    return ConfigError(message, file=file, line=line, field=dotted)


def _mapping(doc: Document, value: Any, *path: str | int, file: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _err(doc, f"must be a mapping, got {type(value).__name__}", *path, file=file)
    return value


def _number(doc: Document, value: Any, *path: str | int, file: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _err(doc, "must be a number of seconds", *path, file=file)
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _err(doc, str(exc), *path, file=file) from None


def parse_duration(value: int | float | str) -> float:
    """``30``, ``"30s"``, ``"5m"``, ``"1h"``, ``"250ms"`` -> seconds."""
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", value)
    if not match:
        raise ValueError(f"not a duration: {value!r} (use 30, 30s, 5m, 1h)")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


def _retry(doc: Document, raw: Any, at: tuple[str | int, ...], file: str) -> RetryPolicy:
    default = RetryPolicy()
    data = _mapping(doc, raw, *at, "retry", file=file)
    unknown = set(data) - {"limit", "base", "factor", "max"}
    if unknown:
        raise _err(doc, f"unknown key(s) {sorted(unknown)}", *at, "retry",
                   file=file)
    limit = data.get("limit", default.limit)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise _err(doc, "must be a whole number >= 0", *at, "retry", "limit",
                   file=file)
    return RetryPolicy(
        limit=limit,
        base=_number(doc, data.get("base", default.base), *at, "retry",
                     "base", file=file),
        factor=_number(doc, data.get("factor", default.factor), *at, "retry", "factor",
                       file=file),
        max=_number(doc, data.get("max", default.max), *at, "retry", "max",
                    file=file),
    )


def _safe_relpath(doc: Document, value: Any, *path: str | int, file: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _err(doc, "must be a non-empty path inside the repository", *path, file=file)
    norm = os.path.normpath(value.strip()).replace("\\", "/")
    if norm.startswith("/") or norm == ".." or norm.startswith("../"):
        raise _err(doc, f"{value!r} points outside the repository", *path, file=file)
    return "" if norm == "." else norm


def _webhook_secret(doc: Document, raw: Any, source: str, file: str) -> str | None:
    data = _mapping(doc, raw, "sources", source, "webhook", file=file)
    unknown = set(data) - {"secret"}
    if unknown:
        raise _err(doc, f"unknown key(s) {sorted(unknown)} (known: secret)", "sources", source,
                   "webhook", file=file)
    secret = data.get("secret")
    if secret is None:
        return None
    if not isinstance(secret, str) or not _ENV_REF.match(secret.strip()):
        raise _err(doc, "must be an environment reference like ${WEBHOOK_SECRET}; secrets are "
                   "never written in conveyor.yaml", "sources", source, "webhook", "secret",
                   file=file)
    return secret.strip()


def _verify(doc: Document, raw: Any, source: str, file: str) -> VerifyConfig | None:
    if raw is None:
        return None
    data = _mapping(doc, raw, "sources", source, "verify", file=file)
    unknown = set(data) - {"mode", "allowedSigners", "keyring"}
    if unknown:
        raise _err(doc, f"unknown key(s) {sorted(unknown)} (known: mode, allowedSigners, "
                   "keyring)", "sources", source, "verify", file=file)
    mode = data.get("mode")
    if mode not in VERIFY_MODES:
        raise _err(doc, f"must be one of {', '.join(VERIFY_MODES)}", "sources", source,
                   "verify", "mode", file=file)
    key = "allowedSigners" if mode == "ssh" else "keyring"
    path = data.get(key)
    if not isinstance(path, str) or not path.strip():
        raise _err(doc, f"verify mode {mode} needs '{key}' (a file path)", "sources", source,
                   "verify", file=file)
    return VerifyConfig(mode=str(mode), allowed_signers=path.strip() if mode == "ssh" else None,
                        keyring=path.strip() if mode == "gpg" else None)


def _environment(doc: Document, name: str, raw: Any, at: tuple[str | int, ...],
                 sources: Mapping[str, SourceConfig], file: str) -> EnvironmentConfig:
    """One environment block, written under ``environments:`` or made by a generator at ``at``
    (errors then point into the generator's template)."""
    if not _ENV_NAME.match(name):
        raise _err(doc, f"environment names are 1-63 letters, digits, '-' and '_', starting "
                   f"and ending with a letter or digit (got {name!r})", *at, file=file)
    data = _mapping(doc, raw, *at, file=file)
    for key in data:
        if key not in ENV_KEYS:
            hint = difflib.get_close_matches(str(key), ENV_KEYS, n=1)
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise _err(doc, f"unknown key {key!r}{more}", *at, str(key), file=file)
    if "path" not in data:
        raise _err(doc, "missing 'path' (the directory rendered for this environment)", *at,
                   file=file)
    path = _safe_relpath(doc, data["path"], *at, "path", file=file)
    target = _mapping(doc, data.get("target", {"git": {"branch": f"deploy/{name}"}}), *at,
                      "target", file=file)
    if len(target) != 1 or next(iter(target)) not in TARGET_KINDS:
        raise _err(doc, f"must name exactly one of {', '.join(TARGET_KINDS)}", *at, "target",
                   file=file)
    kind = next(iter(target))
    tdata = _mapping(doc, target[kind], *at, "target", kind, file=file)
    if kind == "git":
        branch = tdata.get("branch", f"deploy/{name}")
        if not isinstance(branch, str) or not branch or branch.startswith("-") \
                or ".." in branch or " " in branch:
            raise _err(doc, "must be a valid branch name", *at, "target", "git", "branch",
                       file=file)
        tdata = {**tdata, "branch": branch}
    source = data.get("source", DEFAULT_SOURCE)
    if source != DEFAULT_SOURCE and source not in sources:
        raise _err(doc, f"names unknown source {source!r}", *at, "source", file=file)
    return EnvironmentConfig(
        name=name, path=path, source=str(source), target={kind: tdata},
        render=_mapping(doc, data.get("render"), *at, "render", file=file),
        sync=_mapping(doc, data.get("sync"), *at, "sync", file=file),
        retry=_retry(doc, data.get("retry"), at, file),
        raw=data,
    )


HEALTH_KEYS = ("customizations", "argocdConfigMap", "checks")
CHECK_KEYS = ("apiVersion", "kind", "current", "inProgress", "failed")


def _health(doc: Document, raw: Any, file: str) -> dict[str, Any]:
    """``health:``: user health rules, all of them files or text of this repository.

    ``customizations`` (an Argo CD-layout ``<group>/<Kind>/health.lua`` tree) and
    ``argocdConfigMap`` (an argocd-cm manifest) are paths inside the repository; ``checks`` are
    Flux-style CEL expressions (``apiVersion``, ``kind``, ``current``, optional ``inProgress``
    and ``failed``). Each check keeps its line (``line``) so errors and verdicts can name it.
    """
    data = _mapping(doc, raw, "health", file=file)
    for key in data:
        if key not in HEALTH_KEYS:
            hint = difflib.get_close_matches(str(key), HEALTH_KEYS, n=1)
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise _err(doc, f"unknown key {key!r}{more}", "health", str(key), file=file)
    out: dict[str, Any] = {}
    for key in ("customizations", "argocdConfigMap"):
        if key in data:
            out[key] = _safe_relpath(doc, data[key], "health", key, file=file)
    checks = data.get("checks")
    if checks is None:
        return out
    if not isinstance(checks, list):
        raise _err(doc, "must be a list of {apiVersion, kind, current, inProgress, failed}",
                   "health", "checks", file=file)
    out["checks"] = []
    for index, item in enumerate(checks):
        check = _mapping(doc, item, "health", "checks", index, file=file)
        for key in check:
            if key not in CHECK_KEYS:
                hint = difflib.get_close_matches(str(key), CHECK_KEYS, n=1)
                more = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise _err(doc, f"unknown key {key!r}{more}", "health", "checks", index,
                           str(key), file=file)
        for key in ("apiVersion", "kind", "current"):
            if not isinstance(check.get(key), str) or not check[key].strip():
                raise _err(doc, f"needs '{key}' (a string)", "health", "checks", index,
                           file=file)
        for key in ("inProgress", "failed"):
            if key in check and not isinstance(check[key], str):
                raise _err(doc, "must be a CEL expression (a string)", "health", "checks",
                           index, key, file=file)
        out["checks"].append({**{k: str(v) for k, v in check.items()},
                              "line": doc.where("health", "checks", index).line})
    return out


def parse_config(text: str, file: str = CONFIG_FILE, dirs: Sequence[str] | None = None,
                 pulls: Sequence[PullRequest] | None = None) -> Config:
    """Parse and check conveyor.yaml. Raises ConfigError with file, line and field.

    ``dirs`` lists the repository's directories at the commit the text comes from; directory
    generators read it (without it they produce nothing, which only ``conveyor envs`` and the
    watcher can tell apart, so those always pass it). ``pulls`` are the open pull requests the
    watcher listed for ``pullRequests`` generators; each gets a source ``pr-<number>`` (the
    primary repository on the pull request's head branch) that its environments follow.
    """
    try:
        doc = load_one(text, file)
    except YamlSyntaxError as exc:
        raise ConfigError(exc.reason, file=file, line=exc.position.line) from None
    if doc is None:
        raise ConfigError("the file is empty; it needs an 'environments' mapping", file=file)
    root = _mapping(doc, doc.value, file=file)
    unknown = set(root) - {"environments", "generators", "notifiers", "sources", "promotion",
                           "version", "health"}
    if unknown:
        key = sorted(unknown)[0]
        raise _err(doc, "unknown top-level key (expected environments, generators, notifiers, "
                   "sources, promotion, health, version)", key, file=file)
    if root.get("version", 1) != 1:
        raise _err(doc, "this Conveyor reads version 1 of conveyor.yaml", "version", file=file)

    sources: dict[str, SourceConfig] = {}
    for name, raw in _mapping(doc, root.get("sources"), "sources", file=file).items():
        name = str(name)
        if not _ENV_NAME.match(name):
            raise _err(doc, "source names may hold only letters, digits, '-' and '_'",
                       "sources", name, file=file)
        data = _mapping(doc, raw, "sources", name, file=file)
        for key in data:
            if key not in SOURCE_KEYS:
                hint = difflib.get_close_matches(str(key), SOURCE_KEYS, n=1)
                more = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise _err(doc, f"unknown key {key!r}{more}", "sources", name, str(key),
                           file=file)
        url = data.get("url", "")
        if not isinstance(url, str):
            raise _err(doc, "must be a string", "sources", name, "url", file=file)
        if _URL_PASSWORD.match(url):
            raise _err(doc, "must not embed a password (the file is in Git and in the event "
                       "log): use credentials.password or credentials.token with ${VAR}",
                       "sources", name, "url", file=file)
        branch = data.get("branch", "")
        if not isinstance(branch, str):
            raise _err(doc, "must be a string", "sources", name, "branch", file=file)
        interval = data.get("interval")
        sources[name] = SourceConfig(
            name=name, url=url, branch=branch,
            interval=None if interval is None else _number(doc, interval, "sources", name,
                                                           "interval", file=file),
            raw=data,
            credentials=_mapping(doc, data.get("credentials"), "sources", name, "credentials",
                                 file=file),
            webhook_secret=_webhook_secret(doc, data.get("webhook"), name, file),
            verify=_verify(doc, data.get("verify"), name, file),
        )

    health = _health(doc, root.get("health"), file) if root.get("health") is not None else {}
    envs_raw = root.get("environments")
    if envs_raw is None and root.get("generators") is None:
        raise ConfigError("missing 'environments'", file=file, line=1, field="environments")
    environments: dict[str, EnvironmentConfig] = {}
    for name, raw in _mapping(doc, envs_raw or {}, "environments", file=file).items():
        name = str(name)
        environments[name] = _environment(doc, name, raw, ("environments", name), sources, file)
    generators = parse_generators(doc, root.get("generators"), file)
    reads_pulls = any(g.reads_pulls for g in generators)
    kept_pulls = tuple(pulls or ()) if reads_pulls else ()
    for pr in kept_pulls:
        name = pr_source(pr.number)
        if name in sources:
            raise _err(doc, f"source name {name!r} is kept for pull request {pr.number} of a "
                       "pullRequests generator", "sources", name, file=file)
        sources[name] = SourceConfig(name=name, url="", branch=pr.branch)
    for made in expand_generators(doc, generators, dirs or (), file, kept_pulls):
        if made.name in environments:
            raise _err(doc, f"generator {made.generator!r} makes environment {made.name!r}, "
                       "which already exists", *made.where, "name", file=file)
        environments[made.name] = replace(
            _environment(doc, made.name, made.raw, made.where, sources, file),
            generator=made.generator, on_remove=made.on_remove)

    if health:
        environments = {name: replace(env, health=health) for name, env in environments.items()}

    notifiers: dict[str, Mapping[str, Any]] = {}
    for name, raw in _mapping(doc, root.get("notifiers"), "notifiers", file=file).items():
        data = _mapping(doc, raw, "notifiers", name, file=file)
        if not isinstance(data.get("type"), str):
            raise _err(doc, "missing 'type' (e.g. webhook, slack)", "notifiers", name,
                       file=file)
        notifiers[str(name)] = data
    # a generated environment exists only with the tree's directories: without them (a
    # config read from its text alone), names the generators may make are not checked
    promotion = _promotion(doc, root.get("promotion"), environments, file,
                           lenient=dirs is None and any(g.reads_tree for g in generators))
    return Config(environments, notifiers, sources, root, text, generators,
                  relevant_dirs(generators, dirs or ()), kept_pulls, health, promotion)


def _promotion(doc: Document, raw: Any, environments: Mapping[str, EnvironmentConfig],
               file: str, *, lenient: bool = False) -> dict[str, PromotionConfig]:
    out: dict[str, PromotionConfig] = {}
    for to, value in _mapping(doc, raw, "promotion", file=file).items():
        to = str(to)
        where = ("promotion", to)
        if to not in environments and not lenient:
            raise _err(doc, f"names unknown environment {to!r}", *where, file=file)
        data = _mapping(doc, value, *where, file=file)
        for key in data:
            if key not in PROMOTION_KEYS:
                hint = difflib.get_close_matches(str(key), PROMOTION_KEYS, n=1)
                more = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise _err(doc, f"unknown key {key!r}{more}", *where, str(key), file=file)
        source = data.get("from")
        if not isinstance(source, str) or not source:
            raise _err(doc, "missing 'from' (the environment whose images are promoted)",
                       *where, file=file)
        if source not in environments and not lenient:
            raise _err(doc, f"names unknown environment {source!r}", *where, "from", file=file)
        if source == to:
            raise _err(doc, "an environment cannot promote from itself", *where, "from",
                       file=file)
        if source in environments and to in environments and \
                environments[source].source != environments[to].source:
            raise _err(doc, f"{source} and {to} are declared in different sources; a "
                       "promotion is one commit, in one repository", *where, "from", file=file)
        auto = data.get("auto", False)
        if not isinstance(auto, bool):
            raise _err(doc, "must be true or false", *where, "auto", file=file)
        after = _mapping(doc, data.get("after"), *where, "after", file=file)
        if set(after) - {"healthyFor"}:
            raise _err(doc, f"unknown key(s) {sorted(set(after) - {'healthyFor'})} (known: "
                       "healthyFor)", *where, "after", file=file)
        healthy_for = _number(doc, after.get("healthyFor", 0), *where, "after", "healthyFor",
                              file=file)
        via = data.get("via", "commit")
        if via not in PROMOTION_VIAS:
            raise _err(doc, f"must be one of {', '.join(PROMOTION_VIAS)}", *where, "via",
                       file=file)
        files = data.get("files") or []
        if not isinstance(files, list):
            raise _err(doc, "must be a list of paths", *where, "files", file=file)
        paths = tuple(_safe_relpath(doc, f, *where, "files", i, file=file)
                      for i, f in enumerate(files))
        out[to] = PromotionConfig(to, source, auto, healthy_for, str(via), paths)
    for to in out:  # a cycle would promote back and forth forever
        seen, current = {to}, out[to].source
        while current in out:
            if current in seen:
                raise _err(doc, f"promotion cycle through {current!r}", "promotion", to,
                           "from", file=file)
            seen.add(current)
            current = out[current].source
    return out


def expand(value: str, environ: Mapping[str, str] | None = None) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; an unset variable without default is an error.

    The error names the variable, never its value.
    """
    env = os.environ if environ is None else environ

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"environment variable {name} is not set", file=CONFIG_FILE)

    return _VAR.sub(sub, value)


def expand_all(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """``expand`` applied to every string inside a nested value."""
    if isinstance(value, str):
        return expand(value, environ)
    if isinstance(value, Mapping):
        return {k: expand_all(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_all(v, environ) for v in value]
    return value
