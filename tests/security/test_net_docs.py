"""docs/security.md's network and host sections point at proofs that exist, and the flags and
variables they name are the ones the code reads."""

from __future__ import annotations

import re
from pathlib import Path

from conveyor.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
SECURITY = (ROOT / "docs" / "security.md").read_text()
OURS = SECURITY[SECURITY.index("## The network principal"):]


def test_every_proof_named_exists() -> None:
    named = set(re.findall(r"`(tests/[\w/]+\.py)`", OURS))
    assert {"tests/security/test_net_auth.py", "tests/security/test_net_secrets.py",
            "tests/security/test_net_browser.py", "tests/security/test_net_bus.py",
            "tests/security/test_net_lows.py", "tests/security/test_net_host.py",
            "tests/security/test_net_dashboard.py"} <= named
    for path in named:
        assert (ROOT / path).is_file(), path


def test_the_flags_and_variables_named_are_read() -> None:
    parser = build_parser()
    for command in ("up", "run"):
        sub = parser.parse_args([command, *(["api"] if command == "run" else []),
                                 "--read-token", "r", "--allowed-hosts", "a.example"])
        assert (sub.read_token, sub.allowed_hosts) == ("r", "a.example")
    code = "\n".join(p.read_text() for p in [*(ROOT / "conveyor").glob("*.py"),
                                             *(ROOT / "orchestrator").glob("*.py")])
    for variable in set(re.findall(r"`(CONVEYOR_[A-Z_]+)`", OURS)):
        assert variable in code, variable
