"""Cost of typed payloads: decode, and the projections' fold, per event.

Run: python -m benchmarks.payloads

Over tests/fixtures/event-log-v1.json (45 events written before payloads were typed), read as
written (version 1: every event is upcast on decode) and stamped as version 2 (no upcast).
"""

from __future__ import annotations

import json
import timeit
from pathlib import Path

from orchestrator.domain.codec import decode
from orchestrator.domain.events import Event, schema_for
from orchestrator.domain.state import project

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "event-log-v1.json"
RUNS = 500


def per_event(fn: object, events: list[Event]) -> float:
    assert callable(fn)
    best = min(timeit.repeat(lambda: fn(events), number=RUNS, repeat=5))
    return best / (RUNS * len(events)) * 1e6


def main() -> None:
    raw = json.loads(FIXTURE.read_text())
    logs = {"v1 (upcast)": [Event.from_dict(d) for d in raw],
            "v2": [Event.from_dict({**d, "dataschema": schema_for(d["type"])}) for d in raw]}
    print("| log | decode µs/event | fold (state + history) µs/event |")
    print("|---|---|---|")
    for name, events in logs.items():
        decoding = per_event(lambda es: [decode(e) for e in es], events)
        folding = per_event(lambda es: project((i + 1, e) for i, e in enumerate(es)), events)
        print(f"| {name} | {decoding:.1f} | {folding:.1f} |")


if __name__ == "__main__":
    main()
