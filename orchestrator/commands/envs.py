"""``conveyor envs``: the environments a revision of the repository declares, generators expanded.

A dry run: nothing is published or deployed. It reads conveyor.yaml and the directory listing at
the revision straight from the Git repository (the same inputs the watcher uses), so a team can
see what a change to ``generators:`` or a new ``envs/<name>`` directory will produce before
merging it. Exit status 0, or 1 with ``file:line: field: reason`` on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from orchestrator.adapters import git_local
from orchestrator.domain.config import CONFIG_FILE, Config, EnvironmentConfig, parse_config
from orchestrator.errors import ConfigError, ConveyorError


def load_at(repo: Path, rev: str) -> Config:
    """conveyor.yaml at ``rev`` (a branch, tag or sha) with every generator expanded."""
    sha = git_local.resolve(repo, rev)
    text = git_local.read_file(repo, sha, CONFIG_FILE)
    if text is None:
        raise ConfigError(f"no {CONFIG_FILE} at the repository root of {rev}", file=CONFIG_FILE)
    return parse_config(text.decode("utf-8", "replace"), dirs=git_local.list_dirs(repo, sha))


def describe(env: EnvironmentConfig) -> dict[str, Any]:
    kind = env.target_kind
    where = env.target.get(kind, {})
    target = f"{kind}:{where.get('branch') or where.get('repo') or ''}" if kind == "git" \
        else f"{kind}:{where.get('namespace') or where.get('context') or ''}"
    return {"name": env.name, "path": env.path or ".", "source": env.source, "target": target,
            "generator": env.generator, "onRemove": env.on_remove if env.generator else ""}


def envs_command(repo: Path, rev: str, output: str, out: TextIO = sys.stdout,
                 err: TextIO = sys.stderr) -> int:
    try:
        config = load_at(repo, rev)
    except ConveyorError as exc:
        print(f"conveyor envs: {exc}", file=err)
        return 1
    rows = [describe(env) for env in sorted(config.environments.values(), key=lambda e: e.name)]
    if output == "json":
        json.dump(rows, out, indent=2)
        out.write("\n")
        return 0
    widths = {k: max([len(k)] + [len(str(r[k])) for r in rows]) for k in ("name", "path", "target")}
    for row in rows:
        made = f"  (generator {row['generator']}, onRemove {row['onRemove']})" \
            if row["generator"] else ""
        out.write(f"{row['name']:<{widths['name']}}  {row['path']:<{widths['path']}}  "
                  f"{row['target']:<{widths['target']}}{made}\n".rstrip() + "\n")
    out.write(f"{len(rows)} environment(s), "
              f"{sum(1 for r in rows if r['generator'])} generated\n")
    return 0
