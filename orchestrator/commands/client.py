"""CLI commands that talk to a running Conveyor through its api (``--api`` / CONVEYOR_API)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import aiohttp

from orchestrator.domain.trace import parse_time
from orchestrator.settings import token_from


def _headers() -> dict[str, str]:
    """The operator token when this shell has it, else the read-only one (reads need a token
    whenever the api has one configured)."""
    token = token_from(os.environ.get("CONVEYOR_API_TOKEN")) or token_from(
        os.environ.get("CONVEYOR_READ_TOKEN"))
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _get(api: str, path: str, **params: Any) -> Any:
    query = {k: str(v) for k, v in params.items() if v not in (None, "")}
    async with aiohttp.ClientSession(headers=_headers()) as session, session.get(
            api.rstrip("/") + path, params=query) as resp:
        body = await resp.json(content_type=None)
        if resp.status >= 400:
            raise SystemExit(f"conveyor: {resp.status} {body.get('error', body)}")
        return body


def _fail_unreachable(api: str, exc: Exception) -> int:
    print(f"conveyor: cannot reach the api at {api}: {exc} (is `conveyor up` running? "
          "set --api or CONVEYOR_API)", file=sys.stderr)
    return 2


def _short(rev: str) -> str:
    return rev[:7] if rev else "-"


async def _problems(api: str) -> list[str]:
    """What stops the watcher that no environment shows: a conveyor.yaml that does not load, a
    source that cannot be fetched (both are events of no environment)."""
    out: list[str] = []
    config = (await _get(api, "/api/v1/events", type="conveyor.config"))["events"]
    if config and config[-1]["type"] == "conveyor.config.invalid":
        data = config[-1].get("data") or {}
        kept = ("the last good configuration stays in force"
                if any(e["type"] == "conveyor.config.loaded" for e in config)
                else "no configuration is in force")
        out.append(f"conveyor.yaml at {_short(config[-1].get('correlationid', ''))} is invalid "
                   f"({kept}): {data.get('error', '')}")
    last: dict[str, dict[str, Any]] = {}
    for e in (await _get(api, "/api/v1/events", type="conveyor.source"))["events"]:
        last[str((e.get("data") or {}).get("source", "default"))] = e
    for name, e in sorted(last.items()):
        if e["type"] == "conveyor.source.fetch_failed":
            out.append(f"source {name} cannot be fetched since {e['time'][:19]}: "
                       f"{(e.get('data') or {}).get('error', '')}")
    return out


SUMMARY_ROWS = 20  # above this many environments, status lists only those needing attention


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k, None) for k in ("outcome", "health", "prefix", "generator")}


async def _all_envs(api: str, filters: dict[str, Any]) -> tuple[list[dict[str, Any]],
                                                                 dict[str, Any]]:
    """Every selected environment, page by page, and the first page's totals and counts."""
    body = await _get(api, "/api/v1/environments", **filters)
    envs = list(body["environments"])
    while body.get("continue"):
        body_next = await _get(api, "/api/v1/environments", **filters,
                               **{"continue": body["continue"]})
        envs += body_next["environments"]
        body = {**body, "continue": body_next.get("continue")}
    return envs, body


def _needs_attention(e: dict[str, Any]) -> bool:
    return bool(e["in_flight"]) or e["health"] in ("Degraded", "Missing") \
        or e["last_outcome"].rsplit(".", 1)[-1] in ("failed", "dead", "rejected")


async def status(args: argparse.Namespace) -> int:
    """A table of environments; at fleet size a summary line and only the environments that
    need attention (failing, degraded or in flight) unless ``--all``."""
    try:
        envs, body = await _all_envs(args.api, _filters(args))
        problems = await _problems(args.api) if args.output != "json" else []
    except aiohttp.ClientError as exc:
        return _fail_unreachable(args.api, exc)
    if args.output == "json":
        print(json.dumps(envs, indent=2))
        return 0
    for problem in problems:
        print(f"! {problem}")
    if not envs:
        print("no environments match" if any(_filters(args).values())
              else "no environments yet (see `conveyor log`)")
        return 0
    counts = body.get("counts") or {}
    summary = ", ".join(f"{n} {k}" for k, n in sorted((counts.get("outcome") or {}).items()))
    health = ", ".join(f"{n} {k}" for k, n in sorted((counts.get("health") or {}).items()))
    shown = envs
    if len(envs) > SUMMARY_ROWS and not args.all:
        shown = [e for e in envs if _needs_attention(e)]
        print(f"{len(envs)} environments: {summary or '-'}; health: {health or '-'}")
        if not shown:
            print("all settled; `conveyor status --all` lists them")
            return 0
        print(f"{len(shown)} need attention (`--all` lists every environment):")
    print(f"{'ENVIRONMENT':<16}{'DESIRED':<10}{'APPLIED':<10}{'HEALTH':<12}{'LAST OUTCOME':<22}"
          "IN FLIGHT / ERROR")
    for e in shown:
        outcome = e["last_outcome"].removeprefix("conveyor.") or "-"
        note = e["in_flight"] or (e["last_error"][:60] if e["last_error"] else "")
        print(f"{e['name']:<16}{_short(e['desired_revision']):<10}"
              f"{_short(e['last_applied_revision']):<10}{e['health']:<12}{outcome:<22}{note}")
    return 0


def _line(e: dict[str, Any]) -> str:
    data = e.get("data") or {}
    detail = data.get("error") or data.get("summary") or data.get("message") or ""
    return (f"{e.get('sequence', ''):>6} {e['time'][:23]} {e['subject']:<12} "
            f"{e['type'].removeprefix('conveyor.'):<22} {_short(e.get('correlationid', ''))} "
            f"{str(detail)[:80]}")


async def log(args: argparse.Namespace) -> int:
    try:
        if args.follow:
            return await _follow(args)
        body = await _get(args.api, "/api/v1/events", env=args.env, type=args.type)
    except aiohttp.ClientPayloadError:  # it was reachable: the stream broke off mid-way
        print(f"conveyor log: the api at {args.api} closed the stream (did it stop?)",
              file=sys.stderr)
        return 1
    except aiohttp.ClientError as exc:
        return _fail_unreachable(args.api, exc)
    events = body["events"][-args.limit:] if args.limit else body["events"]
    for e in events:
        print(json.dumps(e) if args.output == "json" else _line(e))
    return 0


async def _follow(args: argparse.Namespace) -> int:
    params = {k: v for k, v in {"env": args.env}.items() if v}
    url = args.api.rstrip("/") + "/api/v1/events/stream"
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(headers=_headers(), timeout=timeout) as session, \
            session.get(url, params=params) as resp:
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if not line.startswith("data: "):
                continue
            e = json.loads(line[6:])
            if args.type and not e["type"].startswith(args.type):
                continue
            print(json.dumps(e) if args.output == "json" else _line(e), flush=True)
    return 0


def _tree_lines(node: dict[str, Any], depth: int, out: list[str]) -> None:
    latency = f"+{node['latency_ms']:.0f} ms" if node.get("latency_ms") is not None else ""
    summary = f"  {node['summary']}" if node.get("summary") else ""
    out.append(f"{'  ' * depth}{node['type'].removeprefix('conveyor.'):<24} {node['env']:<10} "
               f"{latency:>10}{summary}")
    for child in node["children"]:
        _tree_lines(child, depth + 1, out)


async def trace(args: argparse.Namespace) -> int:
    try:
        body = await _get(args.api, f"/api/v1/trace/{args.sha}")
    except aiohttp.ClientError as exc:
        return _fail_unreachable(args.api, exc)
    if args.output == "json":
        print(json.dumps(body, indent=2))
        return 0
    if not body["events"]:
        print(f"no events for commit {args.sha}", file=sys.stderr)
        return 1
    lines: list[str] = []
    for root in body["tree"]:
        _tree_lines(root, 0, lines)
    print("\n".join(lines))
    for env, ms in sorted(body["end_to_end_ms"].items()):
        print(f"{env}: {ms:.0f} ms end to end")
    return 0


async def refresh(args: argparse.Namespace) -> int:
    try:
        async with aiohttp.ClientSession(headers=_headers()) as session, session.post(
                args.api.rstrip("/") + "/api/v1/refresh") as resp:
            body = await resp.json(content_type=None)
            if resp.status >= 400:
                print(f"conveyor refresh: {resp.status} {body.get('error')}", file=sys.stderr)
                return 1
    except aiohttp.ClientError as exc:
        return _fail_unreachable(args.api, exc)
    print(json.dumps(body) if args.output == "json" else f"refresh requested ({body['requested']})")
    return 0


__all__ = ["log", "parse_time", "refresh", "status", "trace"]
