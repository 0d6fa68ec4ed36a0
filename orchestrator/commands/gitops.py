"""``conveyor release|rollback|promote``: GitOps actions from the command line.

Two ways, one behaviour (``orchestrator.gitops.GitOps``):

- through a running api (the default: ``--api`` / ``CONVEYOR_API``, the operator token in
  ``CONVEYOR_API_TOKEN``): the api process pushes with the credentials the operator gave it;
- locally, with ``--repo URL`` (or ``CONVEYOR_REPO``) and ``--nats URL`` (or ``CONVEYOR_NATS``):
  this process pushes with *its* ``CONVEYOR_GIT_*`` credentials (a person or a CI job the
  operator gave push access to) and publishes the event to the log itself.

Exit codes: 0 done (or nothing to change), 1 refused or failed, 2 bad usage or unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.adapters import nats_auth
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.errors import ConveyorError
from orchestrator.gitops.forge import ForgeSettings
from orchestrator.gitops.workflow import GitOps, Result
from orchestrator.resources import Resources
from orchestrator.settings import Settings


def _headers() -> dict[str, str]:
    token = os.environ.get("CONVEYOR_API_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _print(command: str, body: dict[str, Any], output: str) -> None:
    if output == "json":
        print(json.dumps(body, indent=2))
        return
    env, commit = body.get("env", ""), str(body.get("commit") or "")
    if not body.get("changed"):
        print(f"{command} {env}: nothing to change, the declaration already says so "
              f"(head {commit[:7]})")
        return
    pr = body.get("pull_request")
    files = ", ".join(body.get("files") or [])
    where = (f"proposed in pull request #{pr['number']} {pr['url']} ({pr['head']} -> "
             f"{pr['base']})" if pr else f"committed to {body.get('branch')}")
    tries = body.get("attempts", 1)
    again = f" after {tries - 1} rejected push(es)" if tries and tries > 1 else ""
    print(f"{command} {env}: {commit[:12]} {where}{again}")
    if files:
        print(f"  files: {files}")
    if body.get("to"):
        print(f"  restores: {body['to']}")
    if body.get("from"):
        print(f"  from: {body['from']} at {str(body.get('revision', ''))[:12]}")
    print(f"  follow it: conveyor trace {commit[:12]}")


async def _via_api(args: argparse.Namespace, path: str, payload: dict[str, Any]) -> int:
    url = f"{args.api.rstrip('/')}{path}"
    try:
        async with aiohttp.ClientSession(headers=_headers()) as session, \
                session.post(url, json=payload) as resp:
            body = await resp.json(content_type=None)
    except aiohttp.ClientError as exc:
        print(f"conveyor {args.command}: cannot reach the api at {args.api}: {exc} (set --api "
              "or CONVEYOR_API, or act locally with --repo and --nats)", file=sys.stderr)
        return 2
    if resp.status >= 400:
        print(f"conveyor {args.command}: {resp.status} {body.get('error', body)}",
              file=sys.stderr)
        return 1
    _print(args.command, body, args.output)
    return 0


def _settings(args: argparse.Namespace, nats: str) -> Settings:
    repo = args.repo
    if "://" not in repo and not repo.startswith("git@"):
        repo = str(Path(repo).resolve())
    return Settings(nats_url=nats, data_dir=Path(args.data_dir).resolve(), repo=repo,
                    branch=args.branch)


async def _local(args: argparse.Namespace,
                 action: Callable[[GitOps], Awaitable[Result]]) -> int:
    nats = nats_auth.resolve(args.nats or os.environ.get("CONVEYOR_NATS", ""), os.environ,
                             data_dir=Path(args.data_dir))
    if not nats:
        print(f"conveyor {args.command}: --repo acts locally and needs --nats (or "
              "CONVEYOR_NATS) to record the event", file=sys.stderr)
        return 2
    settings = _settings(args, nats)
    try:
        bus = await EventBus.connect(nats, name=f"conveyor-{args.command}")
    except ConveyorError as exc:
        print(f"conveyor {args.command}: {exc}", file=sys.stderr)
        return 2
    try:
        gitops = GitOps(Resources.around(bus, settings), forge=ForgeSettings.from_env(),
                        source="conveyor/cli")
        result = await action(gitops)
    except ConveyorError as exc:
        print(f"conveyor {args.command}: {exc}", file=sys.stderr)
        return 1
    finally:
        await bus.close()
    _print(args.command, result.to_dict(), args.output)
    return 0


def _by() -> str:
    return f"cli {os.environ.get('USER', '')}".strip()


async def release(args: argparse.Namespace) -> int:
    if not args.image and not args.set:
        print("conveyor release: name at least one --image NAME=REF:TAG or --set PATH=VALUE",
              file=sys.stderr)
        return 2
    if args.repo:
        return await _local(args, lambda g: g.release(
            args.env, args.image, args.set, message=args.message, via=args.via, by=_by()))
    return await _via_api(args, f"/api/v1/environments/{args.env}/releases",
                          {"images": args.image, "set": args.set, "message": args.message,
                           "via": args.via})


async def rollback(args: argparse.Namespace) -> int:
    if args.to and args.steps:
        print("conveyor rollback: give --to SHA or --steps N, not both", file=sys.stderr)
        return 2
    if args.repo:
        return await _local(args, lambda g: g.rollback(
            args.env, to=args.to, steps=args.steps, via=args.via, by=_by()))
    return await _via_api(args, f"/api/v1/environments/{args.env}/rollback",
                          {"to": args.to, "steps": args.steps, "via": args.via})


async def promote(args: argparse.Namespace) -> int:
    if args.repo:
        return await _local(args, lambda g: g.promote(args.source, args.env, via=args.via,
                                                      by=_by()))
    return await _via_api(args, f"/api/v1/environments/{args.env}/promotions",
                          {"from": args.source, "via": args.via})


async def promotions(args: argparse.Namespace) -> int:
    url = f"{args.api.rstrip('/')}/api/v1/promotions"
    try:
        async with aiohttp.ClientSession(headers=_headers()) as session, \
                session.get(url) as resp:
            body = await resp.json(content_type=None)
    except aiohttp.ClientError as exc:
        print(f"conveyor promotions: cannot reach the api at {args.api}: {exc}",
              file=sys.stderr)
        return 2
    if resp.status >= 400:
        print(f"conveyor promotions: {resp.status} {body.get('error', body)}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(body, indent=2))
        return 0
    rows = body["promotions"]
    if not rows:
        print("no promotion: in the configuration in force")
        return 0
    print(f"{'PATH':<28}{'FROM RUNS':<11}{'TO RUNS':<11}{'AUTO':<6}GATE")
    for r in rows:
        gate = ("open: " if r["gate"]["allowed"] else "closed: ") + r["gate"]["reason"]
        print(f"{r['from'] + ' -> ' + r['to']:<28}{(r['from_runs'] or '-')[:7]:<11}"
              f"{(r['to_runs'] or '-')[:7]:<11}{'yes' if r['auto'] else 'no':<6}{gate}")
    return 0


def add_parsers(sub: Any, default_api: str,
                func: Callable[[Callable[[argparse.Namespace], Awaitable[int]]], Any]) -> None:
    """``release``, ``rollback`` and ``promote`` on the CLI's subparsers (``func(command)``
    makes the parser's runner)."""

    def common(p: argparse.ArgumentParser, via: str = "commit", env: str = "ENV") -> None:
        p.add_argument("env", metavar=env)
        p.add_argument("--via", choices=("commit", "pull-request"), default=via)
        p.add_argument("--api", default=os.environ.get("CONVEYOR_API", default_api))
        p.add_argument("--repo", default=os.environ.get("CONVEYOR_REPO", ""),
                       help="act locally on this repository (needs --nats and push "
                            "credentials in CONVEYOR_GIT_*) instead of through the api")
        p.add_argument("--branch", default=os.environ.get("CONVEYOR_BRANCH", ""))
        p.add_argument("--nats", default=os.environ.get("CONVEYOR_NATS", ""))
        p.add_argument("--data-dir", default=os.environ.get("CONVEYOR_DATA_DIR", ".conveyor"))
        p.add_argument("-o", "--output", choices=("text", "json"), default="text")

    rel = sub.add_parser("release", help="write images (or Helm values) into ENV's "
                                         "declaration as a commit or a pull request")
    common(rel)
    rel.add_argument("--image", action="append", default=[],
                     help="NAME=REF:TAG or NAME=REF@sha256:... (repeatable)")
    rel.add_argument("--set", action="append", default=[],
                     help="PATH=VALUE of a Helm values file (repeatable)")
    rel.add_argument("--message", "-m", default="")
    rel.set_defaults(func=func(release))

    back = sub.add_parser("rollback", help="a commit restoring ENV's inputs to a revision "
                                           "that deployed to it before")
    common(back)
    back.add_argument("--to", default="", help="a revision that deployed to ENV")
    back.add_argument("--steps", type=int, default=0,
                      help="deployments back (default 1)")
    back.set_defaults(func=func(rollback))

    prom = sub.add_parser("promote", help="promote what FROM runs now into TO's declaration, "
                                          "gates checked first")
    prom.add_argument("source", metavar="FROM")
    common(prom, via="", env="TO")  # via "": promotion.<TO>.via of conveyor.yaml
    prom.set_defaults(func=func(promote))

    paths = sub.add_parser("promotions", help="promotion paths: what each end runs, and the "
                                              "gates now")
    paths.add_argument("--api", default=os.environ.get("CONVEYOR_API", default_api))
    paths.add_argument("-o", "--output", choices=("text", "json"), default="text")
    paths.set_defaults(func=func(promotions))
