"""Builtin licence validation: asks the configured licence sources, in order, per node.

(Interim version: the signed-licence implementation replaces this module.)
"""

from __future__ import annotations

from collections.abc import Sequence

from wyneos_core import hookimpl
from wyneos_core.model import LicenceResult, Node
from wyneos_core.tick import Orchestrator, TickContext


@hookimpl
def wyneos_startup(orchestrator: Orchestrator) -> None:
    sources = {}
    for batch in orchestrator.pm.hook.wyneos_licence_sources(config=orchestrator.config):
        for source in batch if isinstance(batch, (list, tuple)) else [batch]:
            sources[source.name] = source
    orchestrator._licence_sources = sources  # type: ignore[attr-defined]


@hookimpl
def wyneos_licence_validate(ctx: TickContext, nodes: Sequence[Node]) -> list[LicenceResult]:
    sources = getattr(ctx.orchestrator, "_licence_sources", {})
    order = [sources[name] for name in ctx.config["licence"]["sources"] if name in sources]
    out = []
    for node in nodes:
        result = None
        for source in order:
            result = source.lookup(node, ctx)
            if result is not None:
                break
        out.append(result or LicenceResult(node.id, False, "no_licence", "no source has a licence for this node"))
    return out
