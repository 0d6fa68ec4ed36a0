"""Deep checks of a parsed conveyor.yaml, run when a commit brings a new one.

``parse_config`` checks the shape; the settings of each part belong to the module that uses
them (render settings, notifier routes, kubernetes targets). Running those checks here turns a
typo deep inside ``render:`` or ``notifiers:`` into ``conveyor.config.invalid`` naming file,
line and field at the commit that made it, instead of a failure later at render or send time,
and the last good configuration stays in force.

``Bounds`` are the operator's limits on what conveyor.yaml may point at: a source ``url`` or a
git target's ``repo`` naming a repository on this machine must lie under ``--allow-local-path``
(Flux and Argo CD read nothing from the controller's disk a repository names), and no git
target may write a branch that is itself watched (a target on the watched branch would commit
rendered manifests over conveyor.yaml, and then render those).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from orchestrator.domain.config import CONFIG_FILE, DEFAULT_SOURCE, Config
from orchestrator.domain.giturls import GitUrl, parse
from orchestrator.domain.yamlpos import load_one
from orchestrator.errors import ConfigError, ConveyorError
from orchestrator.health_rules.cel import CelError
from orchestrator.health_rules.engine import cel_checks
from orchestrator.notify import parse_routes
from orchestrator.rendering.settings import SettingsError, parse_settings
from orchestrator.targets.kube.settings import kube_settings


def _line(text: str, *path: str) -> int | None:
    try:
        doc = load_one(text, CONFIG_FILE)
    except ValueError:
        return None
    return doc.where(*path).line if doc is not None else None


@dataclass(frozen=True, slots=True)
class Bounds:
    """The operator's limits: ``local_dirs`` (``--allow-local-path``) and the primary source
    (``--repo``, always allowed, and its branch as resolved)."""

    local_dirs: tuple[str, ...] = ()
    primary_repo: str = ""
    primary_branch: str = ""


def _url(value: str) -> GitUrl | None:
    try:
        return parse(value)
    except ValueError:
        return None


def _real(url: GitUrl) -> str:
    return os.path.realpath(os.path.expanduser(url.path))


def _local_refusal(value: str, bounds: Bounds) -> str | None:
    """Why ``value`` may not be named, or None (remote, the primary, or an allowed dir)."""
    url = _url(value)
    if url is None or not url.is_local:
        return None
    real = _real(url)
    primary = _url(bounds.primary_repo)
    if primary is not None and primary.is_local and _real(primary) == real:
        return None
    for allowed in bounds.local_dirs:
        root = os.path.realpath(allowed)
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return None
    where = (f"the operator's --allow-local-path ({', '.join(bounds.local_dirs)})"
             if bounds.local_dirs else "any --allow-local-path (none is set)")
    return (f"{value!r} is a repository on this machine outside {where}; a repository "
            "may name only remote URLs unless the operator allows local paths")


def _key(value: str) -> str:
    url = _url(value)
    if url is None:
        return value
    return _real(url) if url.is_local else url.key()


def _check_reach(config: Config, bounds: Bounds) -> None:
    def refuse(reason: str, *path: str) -> ConfigError:
        return ConfigError(reason, file=CONFIG_FILE, line=_line(config.text, *path),
                           field=".".join(path))

    watched: dict[tuple[str, str], str] = {}
    if bounds.primary_repo and bounds.primary_branch:
        watched[(_key(bounds.primary_repo), bounds.primary_branch)] = "the primary source"
    repos: dict[str, str] = {DEFAULT_SOURCE: bounds.primary_repo}
    for name, src in config.sources.items():
        url = src.url.strip()
        if url:
            why = _local_refusal(url, bounds)
            if why is not None:
                raise refuse(why, "sources", name, "url")
        repos[name] = url or bounds.primary_repo
        branch = src.branch or (bounds.primary_branch if not url else "")
        if branch and name != DEFAULT_SOURCE:
            watched[(_key(repos[name]), branch)] = f"source {name!r}"
    for name, env in config.environments.items():
        git = env.target.get("git") if env.target_kind == "git" else None
        if not isinstance(git, dict):
            continue
        repo = git.get("repo")
        if isinstance(repo, str) and repo.strip():
            why = _local_refusal(repo.strip(), bounds)
            if why is not None:
                raise refuse(why, "environments", name, "target", "git", "repo")
        target_repo = repo.strip() if isinstance(repo, str) and repo.strip() \
            else repos.get(env.source, "")
        branch = str(git.get("branch") or f"deploy/{name}")
        hit = watched.get((_key(target_repo), branch)) if target_repo else None
        if hit is not None:
            raise refuse(f"branch {branch!r} of {target_repo!r} is watched ({hit}): a git "
                         "target never writes a branch Conveyor reads from",
                         "environments", name, "target", "git", "branch")


def check_config(config: Config, bounds: Bounds | None = None) -> None:
    """Raise ConfigError (file, line, field) for the first invalid setting found."""
    _check_reach(config, bounds or Bounds())
    for name, env in config.environments.items():
        try:
            parse_settings(env.render)
        except ConveyorError as exc:
            where = ("environments", name, "render",
                     *(exc.path if isinstance(exc, SettingsError) else ()))
            raise ConfigError(exc.message, file=CONFIG_FILE,
                              line=_line(config.text, *where) or _line(config.text, *where[:3]),
                              field=".".join(where)) from None
        if env.target_kind == "kubernetes" and "${" not in str(env.target) + str(env.sync):
            try:
                kube_settings(name, env.target.get("kubernetes"), env.sync)
            except ConveyorError as exc:
                raise ConfigError(exc.message, file=CONFIG_FILE,
                                  line=_line(config.text, "environments", name, "target"),
                                  field=f"environments.{name}.target") from None
    if config.health.get("checks"):
        try:
            cel_checks(config.health)
        except CelError as exc:
            located, _, reason = str(exc).partition(": ")
            line = located.rsplit(":", 1)[-1]
            raise ConfigError(reason, file=CONFIG_FILE,
                              line=int(line) if line.isdigit() else None,
                              field="health.checks") from None
    try:
        parse_routes(config.notifiers)
    except ConfigError as exc:
        if exc.line is not None:
            raise
        path = (exc.field or "notifiers").split(".")
        reason = str(exc).split(f"{exc.field}: ", 1)[-1] if exc.field else str(exc)
        raise ConfigError(reason, file=CONFIG_FILE,
                          line=_line(config.text, *path), field=exc.field) from None
