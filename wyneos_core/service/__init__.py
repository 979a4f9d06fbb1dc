"""Service mode: ``wyneos serve`` (HTTP API, tick loop, dashboard, metrics) and ``wyneos agent``.

The work sits in small modules: ``settings`` (the ``service`` settings), ``identity``
(signed requests, replay window), ``outbox`` (actions queued for node agents),
``metrics`` (Prometheus), ``core`` (the service around an orchestrator), ``app`` (the
FastAPI application), ``agent`` (the node agent) and ``server`` (uvicorn).
"""

from __future__ import annotations

__all__: list[str] = []
