"""Attack tests: each replays a finding of the security review and asserts it fails."""
