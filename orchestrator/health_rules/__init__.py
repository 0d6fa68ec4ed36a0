"""User health rules: Argo CD Lua scripts and Flux-style CEL expressions, and the engine that
puts them in front of the built-in rules (``orchestrator.domain.health``).

This package is an adapter: it runs extensions (``lupa``'s Lua runtime, a CEL evaluator) and
reads rule files, so it is built once in a composition root and passed down.
"""
