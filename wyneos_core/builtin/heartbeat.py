"""Builtin heartbeat intake: drains the orchestrator's in-process heartbeat queue."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wyneos_core import hookimpl
from wyneos_core.model import Heartbeat

if TYPE_CHECKING:
    from wyneos_core.tick import TickContext


@hookimpl(trylast=True)
def wyneos_heartbeat(ctx: TickContext) -> list[Heartbeat]:
    return ctx.orchestrator.intake.drain()
