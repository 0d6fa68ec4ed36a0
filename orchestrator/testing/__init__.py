"""Test doubles that speak real protocols, importable by tests and benchmarks alike.

Nothing in here is used by a running service; it lives in the package (not under ``tests/``)
so that benchmarks and other repositories' tests can start the same servers.
"""
