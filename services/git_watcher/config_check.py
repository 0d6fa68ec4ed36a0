"""Deep checks of a parsed conveyor.yaml, run when a commit brings a new one.

``parse_config`` checks the shape; the settings of each part belong to the module that uses
them (render settings, notifier routes, kubernetes targets). Running those checks here turns a
typo deep inside ``render:`` or ``notifiers:`` into ``conveyor.config.invalid`` naming file,
line and field at the commit that made it, instead of a failure later at render or send time,
and the last good configuration stays in force.
"""

from __future__ import annotations

from orchestrator.domain.config import CONFIG_FILE, Config
from orchestrator.domain.yamlpos import load_one
from orchestrator.errors import ConfigError, ConveyorError
from orchestrator.notify import parse_routes
from orchestrator.rendering.settings import SettingsError, parse_settings
from orchestrator.targets.kube.settings import kube_settings


def _line(text: str, *path: str) -> int | None:
    try:
        doc = load_one(text, CONFIG_FILE)
    except ValueError:
        return None
    return doc.where(*path).line if doc is not None else None


def check_config(config: Config) -> None:
    """Raise ConfigError (file, line, field) for the first invalid setting found."""
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
    try:
        parse_routes(config.notifiers)
    except ConfigError as exc:
        if exc.line is not None:
            raise
        path = (exc.field or "notifiers").split(".")
        reason = str(exc).split(f"{exc.field}: ", 1)[-1] if exc.field else str(exc)
        raise ConfigError(reason, file=CONFIG_FILE,
                          line=_line(config.text, *path), field=exc.field) from None
