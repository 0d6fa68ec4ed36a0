"""Attacks from the committer (repository) principal, replayed against real parts.

Each test makes a commit (or a crafted Git object) that tried to gain something a committer
must not have, asserts that the attempt fails with a precise event, and that the next good
commit still deploys.
"""
