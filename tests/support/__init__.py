"""Test doubles that speak real protocols (contract servers, git servers, the crash harness).

They live under ``tests/`` so the wheel never ships them and no running service can import them;
benchmarks reach them by running as ``python -m benchmarks.NAME`` from the project root.
"""
