"""``conveyor history ENV``, ``conveyor metrics`` and ``conveyor retry EVENT_ID`` (over the api).

History lists every deployment attempt of an environment, newest first, as far back as the
stream's retention reaches; metrics are the DORA four keys (definitions in
``orchestrator/domain/dora.py``); retry hands a dead letter or failure back to its stage.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import aiohttp

from orchestrator.commands.client import _fail_unreachable, _get, _headers


def _short(rev: str) -> str:
    return rev[:7] if rev else "-"


def _duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    s = ms / 1000
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{s / 60:.1f}m"
    if s < 86400:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def _author(author: str) -> str:
    return author.split(" <", 1)[0] if author else "-"


def attempt_line(a: dict[str, Any]) -> str:
    outcome = a["outcome"]
    if a.get("retries"):
        outcome += f" ({a['retries']} retries)"
    if (a.get("attempts") or 1) > 1:
        outcome += f" x{a['attempts']}"
    if a.get("health"):
        outcome += f", {a['health'].lower()}"
    note = a.get("message") or ""
    if a.get("error"):
        note = f"{note}: {a['error']}" if note else a["error"]
    if a.get("superseded_by"):
        note = f"{note} (by {_short(a['superseded_by'])})"
    if a.get("action") == "rollback":
        note = f"[rollback to {_short(a.get('rolled_back_to') or '')}] {note}"
    elif a.get("action") == "promotion":
        note = f"[promotion from {a.get('promoted_from') or '?'}] {note}"
    elif a.get("action"):
        note = f"[{a['action']}] {note}"
    if a.get("action") and a.get("merged"):  # a merge commit of Conveyor's pull request
        note = note.replace("] ", f", merged {_short(a['merged'])}] ", 1)
    when = (a.get("finished_at") or a.get("started_at") or "")[:19].replace("T", " ")
    return (f"{when:<20}{_short(a['revision']):<9}{outcome[:30]:<31}"
            f"{_duration(a.get('duration_ms')):>8}  {_author(a.get('author', ''))[:18]:<19}"
            f"{note[:100]}")


async def history(args: argparse.Namespace) -> int:
    try:
        body = await _get(args.api, f"/api/v1/environments/{args.env}/history",
                          limit=args.limit or None)
    except aiohttp.ClientError as exc:
        return _fail_unreachable(args.api, exc)
    if args.output == "json":
        print(json.dumps(body["attempts"], indent=2))
        return 0
    attempts = body["attempts"]
    if not attempts:
        print(f"no deployment attempts of {args.env} in the log", file=sys.stderr)
        return 0
    print(f"{'TIME (UTC)':<20}{'REVISION':<9}{'OUTCOME':<31}{'DURATION':>8}  {'AUTHOR':<19}"
          "MESSAGE / ERROR")
    for a in attempts:
        print(attempt_line(a))
    if body["total"] > len(attempts):
        print(f"({len(attempts)} of {body['total']} attempts; --limit 0 for all)")
    return 0


def _secs(value: float | None) -> str:
    return "-" if value is None else _duration(value * 1000)


async def metrics(args: argparse.Namespace) -> int:
    try:
        body = await _get(args.api, "/api/v1/metrics/dora", window=args.window, env=args.env)
    except aiohttp.ClientError as exc:
        return _fail_unreachable(args.api, exc)
    if args.output == "json":
        print(json.dumps(body, indent=2))
        return 0
    print(f"DORA metrics over the last {body['window']} (to {body['now'][:19]} UTC)")
    print(f"{'ENVIRONMENT':<16}{'DEPLOYS':>8}{'PER DAY':>9}{'LEAD p50':>10}{'LEAD p90':>10}"
          f"{'CFR':>8}{'MTTR p50':>10}  FAILING SINCE")
    for m in body["environments"]:
        cfr = m["change_failure_rate"]
        cfr_text = "-" if cfr is None else f"{cfr * 100:.0f}%"
        print(f"{m['env']:<16}{m['deployments']:>8}{m['deployment_frequency_per_day']:>9.2f}"
              f"{_secs(m['lead_time_median_s']):>10}{_secs(m['lead_time_p90_s']):>10}"
              f"{cfr_text:>8}{_secs(m['time_to_restore_median_s']):>10}  "
              f"{(m['failing_since'] or '-')[:19]}")
    return 0


async def retry(args: argparse.Namespace) -> int:
    url = f"{args.api.rstrip('/')}/api/v1/events/{args.event_id}/retry"
    try:
        async with aiohttp.ClientSession(headers=_headers()) as session, \
                session.post(url) as resp:
            body = await resp.json(content_type=None)
    except aiohttp.ClientError as exc:
        return _fail_unreachable(args.api, exc)
    if resp.status >= 400:
        print(f"conveyor retry: {resp.status} {body.get('error', body)}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(body))
    else:
        print(f"retry {body['attempt']} of {body['retried_type'].removeprefix('conveyor.')} "
              f"{body['retried'][:12]}: published {body['type'].removeprefix('conveyor.')} "
              f"{body['published'][:12]} for {body['env']} (sequence {body['sequence']})")
    return 0
