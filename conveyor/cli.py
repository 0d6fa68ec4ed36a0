"""The `conveyor` command line: every command's flags and its handler side by side, in the
order ``conveyor --help`` lists them. The flags the serving commands share, and how they
become ``Settings``, are ``conveyor/options.py``; the work itself is in ``conveyor/app.py`` and
``orchestrator/commands``.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from conveyor import options
from conveyor.app import SERVICES, Conveyor, run_until_signal
from conveyor.demo import run_demo
from orchestrator import logging as clog
from orchestrator.commands import client as client_commands
from orchestrator.commands import gitops as gitops_commands
from orchestrator.commands import history as history_commands
from orchestrator.commands.diff import diff_command
from orchestrator.commands.envs import envs_command
from orchestrator.commands.health import health_command, health_test_command
from orchestrator.commands.replay import replay_command
from orchestrator.errors import ConveyorError
from orchestrator.health_rules.engine import (
    HealthEngine,
    customizations_from_env,
    load_rules,
    rules_of_checkout,
)
from orchestrator.health_rules.sources import HealthRuleError
from orchestrator.rendering.command import render_command
from orchestrator.settings import Settings

DEFAULT_API = "http://127.0.0.1:8080"


def cmd_up(args: argparse.Namespace) -> int:
    error = options.check_listen(args.listen)
    if error:
        print(f"conveyor up: {error}", file=sys.stderr)
        return 2
    if not args.repo:
        print("conveyor up: --repo PATH_OR_URL is required", file=sys.stderr)
        return 2
    settings = options.settings_from_args(args)
    error = options.check_local_repo(settings.repo, settings.branch)
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
    error = options.check_listen(args.listen) if args.service == "api" else None
    if error:
        print(f"conveyor run: {error}", file=sys.stderr)
        return 2
    if args.service == "git-watcher" and not (args.repo or os.environ.get("CONVEYOR_REPO")):
        print("conveyor run git-watcher: --repo (or CONVEYOR_REPO) is required", file=sys.stderr)
        return 2
    settings = options.settings_from_args(args, tuple(args.env or ()))
    # probes answer from the start; the api takes the address over once connected
    conveyor = Conveyor(settings, names=(args.service,), health_server=True)
    asyncio.run(run_until_signal(conveyor))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return asyncio.run(run_demo(Path(args.data_dir).resolve(), args.listen))


def cmd_render(args: argparse.Namespace) -> int:
    return render_command(Path(args.path), args.env, args.output,
                          tools=options.render_tools(args))


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
    nats = options.nats_url(args.nats, data_dir=Path(args.data_dir))
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
    options.retention_args(up)
    options.concurrency_args(up)
    options.api_args(up)
    options.operator_args(up)
    options.health_args(up)
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
    options.retention_args(run)
    options.concurrency_args(run)
    options.api_args(run)
    options.operator_args(run)
    options.health_args(run)
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="a demo repository, deployed before your eyes")
    demo.add_argument("--data-dir", default=".conveyor-demo")
    demo.add_argument("--listen", default="127.0.0.1:8080")
    demo.set_defaults(func=cmd_demo)

    render = sub.add_parser("render", help="print what the renderer would apply")
    render.add_argument("path")
    render.add_argument("--env", default=None)
    render.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    options.operator_args(render)
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
    options.creds_args(diff)
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
    options.creds_args(replay)
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
