"""Actions on their way to node agents: a transport plugin and the per-node outbox.

``AgentOutbox`` implements ``wyneos_deliver``: a hop whose receiver is an enrolled node
(one with an agent) queues the action in that node's outbox and counts as delivered
to the transport. The agent picks its actions up (``GET /v1/nodes/{id}/actions`` or
the answer to its heartbeat), applies them and acknowledges each; acknowledgements go
to the state store (``action_acks``) and clear the outbox entry. After a restart the
outbox is rebuilt from the actions in force that the target has not acknowledged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from wyneos_core import hookimpl
from wyneos_core.model import Action

__all__ = ["AgentOutbox"]


class AgentOutbox:
    """Per-node queues of actions for agents; registered as the plugin ``agent-outbox``."""

    __wyneos_name__ = "agent-outbox"

    def __init__(self, is_agent: Callable[[str], bool], max_per_node: int = 1000) -> None:
        self._is_agent = is_agent
        self._queues: dict[str, dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.max_per_node = max_per_node
        self.queued_total = 0

    @hookimpl(tryfirst=True)
    def wyneos_deliver(self, ctx: Any, action: Action, sender: str, receiver: str) -> bool | None:
        if not self._is_agent(receiver):
            return None
        self.put(receiver, {**action.to_dict(), "tick": ctx.tick})
        return True

    def put(self, node_id: str, action: dict[str, Any]) -> None:
        with self._lock:
            queue = self._queues.setdefault(node_id, {})
            if action["id"] not in queue:
                if len(queue) >= self.max_per_node:
                    queue.pop(next(iter(queue)))  # the oldest notice goes first
                queue[action["id"]] = action
                self.queued_total += 1

    def restore(self, rows: Iterable[dict[str, Any]], acked: set[tuple[str, str]]) -> int:
        """Queue again stored in-force actions whose agent target has not acknowledged them."""
        count = 0
        for row in rows:
            target = row["target"]
            if target == "*" or not self._is_agent(target) or (row["id"], target) in acked:
                continue
            item = {k: row[k] for k in ("id", "type", "target", "reason", "origin", "severity", "params")}
            self.put(target, {**item, "tick": row.get("last_tick")})
            count += 1
        return count

    def pending(self, node_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._queues.get(node_id, {}).values())

    def ack(self, node_id: str, action_id: str) -> bool:
        with self._lock:
            queue = self._queues.get(node_id)
            if queue is None or action_id not in queue:
                return False
            del queue[action_id]
            return True

    def depth(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._queues.values())
