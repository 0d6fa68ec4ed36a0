"""Notifications: routes from conveyor.yaml, rendered messages, providers, delivery.

The shape (pure core, thin I/O)::

    routing.parse_routes(config.notifiers) -> [Route]       pure, once per config
    routing.select_routes(routes, event) -> [Route]         pure, per event
    ratelimit.Coalescer.offer(event, now) -> [Event]        pure, per rate-limited route
    templates.render_route(route, event) -> Message         pure, never raises for a template
    providers.create(kind, settings).build(message, event, ref) -> Request    pure
    sender.deliver(route, event, session, previous_ref=...) -> DeliveryResult  the only I/O

Only ``sender`` imports aiohttp; everything else can be tested with plain values.
"""

from orchestrator.notify.message import Message, MessageField, Request, Severity
from orchestrator.notify.ratelimit import DIGEST_TYPE, Coalescer, TokenBucket
from orchestrator.notify.routing import RateLimit, Route, parse_routes, select_routes, severity_of
from orchestrator.notify.sender import DeliveryResult, RetryPolicy, deliver
from orchestrator.notify.templates import render, render_route

__all__ = [
    "DIGEST_TYPE", "Coalescer", "DeliveryResult", "Message", "MessageField", "RateLimit",
    "Request", "RetryPolicy", "Route", "Severity", "TokenBucket", "deliver", "parse_routes",
    "render", "render_route", "select_routes", "severity_of",
]
