"""Actions on their way to node agents: a transport plugin and the per-node outbox.

``AgentOutbox`` implements ``wyneos_deliver``: a hop whose receiver is an enrolled node
(one with an agent) queues the action in that node's outbox and counts as delivered
to the transport. The agent picks its actions up (``GET /v1/nodes/{id}/actions`` or
the answer to its heartbeat) as envelopes signed by the orchestrator key
(``signed_actions``), applies them and acknowledges each; acknowledgements go to the
state store (``action_acks``) and clear the outbox entry. After a restart the outbox is
rebuilt from the actions in force that the target has not acknowledged.

Each queued action carries ``issued_at`` (milliseconds): the start of the tick that
decided it, which the state file keeps (``ticks.started_at`` of the action's
``first_tick``), so an action queued again after a restart is the same issuance and an
agent that already applied it does not apply it twice. Its envelope is signed when an
agent first fetches it (not in the tick), once per issuance whatever the number of nodes
it waits for (a fleet-wide ``revoke`` is one signature), and signed again (same
issuance, later expiry) when fetched in the second half of its lifetime.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from wyneos_core import hookimpl
from wyneos_core.model import Action

__all__ = ["AgentOutbox"]


class AgentOutbox:
    """Per-node queues of actions for agents; registered as the plugin ``agent-outbox``."""

    __wyneos_name__ = "agent-outbox"

    def __init__(self, is_agent: Callable[[str], bool], max_per_node: int = 1000,
                 sign: Callable[[dict[str, Any], int, int], dict[str, Any]] | None = None,
                 ttl: float = 3600.0) -> None:
        self._is_agent = is_agent
        self._queues: dict[str, dict[str, dict[str, Any]]] = {}
        #: ``{"id@issued_at": signed envelope}``: one per issuance, shared by every node it
        #: waits for (the envelope does not depend on who fetches it)
        self._signed: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.max_per_node = max_per_node
        self.queued_total = 0
        self._sign = sign
        self.ttl = ttl
        self._staged: list[tuple[str, dict[str, Any]]] | None = None
        #: ``(ctx, hops) -> None`` of plugins whose per-hop ``wyneos_deliver`` only takes
        #: note (the relay desk): called with each level's hops when they go in bulk
        self.hop_notes: list[Callable[[Any, Any], None]] = []
        self._made: tuple[int, dict[int, dict[str, Any]]] = (-1, {})  # (tick, id(Action) -> its queued dict)

    def hold(self) -> None:
        """Keep what the next deliveries queue aside until ``release`` (a replica's tick:
        its notices reach agents only once its decisions are committed)."""
        with self._lock:
            self._staged = []

    def release(self, keep: bool) -> None:
        """Queue what was held (``keep``) or drop it (the tick's write was refused)."""
        with self._lock:
            staged, self._staged = self._staged or [], None
        if keep:
            for node_id, action in staged:
                self.put(node_id, action)

    def staged(self) -> list[tuple[str, dict[str, Any]]]:
        """What the running tick queued so far, held until ``release``: ``[(node, action)]``
        (a replica writes the notices that are not in force after the tick with it)."""
        with self._lock:
            return list(self._staged or ())

    def replace(self, rows: Iterable[dict[str, Any]], acked: set[tuple[str, str]],
                issued: dict[int, int] | None = None,
                notices: Iterable[tuple[str, dict[str, Any]]] = ()) -> int:
        """Make the queues exactly the stored in-force actions not yet acknowledged by
        their agent target, plus the stored ``notices`` (``(node, action)`` queued by a
        tick for actions no longer in force, as a reinstate: a lifecycle step its agent
        must still apply) not yet acknowledged (a replica taking over, or following)."""
        with self._lock:
            before = self._queues
            self._queues = {}
            total = self.queued_total
        count = self.restore(rows, acked, issued)
        for node_id, action in notices:
            if (action["id"], node_id) not in acked and self._is_agent(node_id):
                self.put(node_id, action)
                count += 1
        with self._lock:  # keep the order notices were first queued in; count only new ones
            self.queued_total = total + sum(1 for n, q in self._queues.items() for k in q if k not in before.get(n, {}))
            for node_id, queue in self._queues.items():
                old = before.get(node_id, {})
                ordered = {k: queue[k] for k in old if k in queue}
                ordered.update(queue)
                self._queues[node_id] = ordered
        return count

    @hookimpl(tryfirst=True)
    def wyneos_deliver(self, ctx: Any, action: Action, sender: str, receiver: str) -> bool | None:
        if not self._is_agent(receiver):
            return None
        self.put(receiver, {**action.to_dict(), "tick": ctx.tick, "issued_at": int(ctx.now * 1000)})
        return True

    @hookimpl(tryfirst=True)
    def wyneos_deliver_batch(self, ctx: Any, hops: Any) -> bool | None:
        """A level's hops at once, with the outcome they get hop by hop (``wyneos_deliver``
        here, then the builtin's acknowledgement): every agent receiver's outbox gets the
        action, every hop is acknowledged, and each ``hop_notes`` sees the hops. None
        (hop by hop, as before) when another plugin carries hops (``wyneos_deliver``)."""
        covered = {id(self), *(id(getattr(note, "__self__", note)) for note in self.hop_notes)}
        for impl in ctx.orchestrator.pm.hook.wyneos_deliver.get_hookimpls():
            if id(impl.plugin) not in covered and getattr(impl.plugin, "__name__", "") != "wyneos_core.builtin.propagate":
                return None
        for note in self.hop_notes:
            note(ctx, hops)
        is_agent = self._is_agent
        extra = {"tick": ctx.tick, "issued_at": int(ctx.now * 1000)}
        actions = hops.actions
        if self._made[0] != ctx.tick:
            self._made = (ctx.tick, {})
        made = self._made[1]  # one dict per action and tick, shared by its receivers (read only)
        queued = []
        for k, receiver in zip(hops.action.tolist(), hops.receivers):
            if is_agent(receiver):
                action = made.get(id(actions[k]))
                if action is None:
                    action = made[id(actions[k])] = {**actions[k].to_dict(), **extra}
                queued.append((receiver, action))
        self.put_many(queued)
        return True

    def put(self, node_id: str, action: dict[str, Any]) -> None:
        """Queue ``action`` (with its ``issued_at`` in ms; now when missing) for ``node_id``."""
        self.put_many([(node_id, action)])

    def put_many(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """``put`` of each ``(node_id, action)``, in order, under one hold of the lock."""
        now_ms = None
        added = 0
        limit = self.max_per_node
        with self._lock:
            queues, staged = self._queues, self._staged
            for node_id, action in items:
                if not isinstance(action.get("issued_at"), int):
                    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
                    action = {**action, "issued_at": now_ms}
                if staged is not None:
                    staged.append((node_id, action))
                    continue
                queue = queues.get(node_id)
                if queue is None:
                    queue = queues[node_id] = {}
                key = action["id"]
                if key not in queue:
                    if len(queue) >= limit:
                        del queue[next(iter(queue))]  # the oldest notice goes first
                    queue[key] = action
                    added += 1
            self.queued_total += added

    def restore(self, rows: Iterable[dict[str, Any]], acked: set[tuple[str, str]],
                issued: dict[int, int] | None = None) -> int:
        """Queue again stored in-force actions whose agent target has not acknowledged them.

        ``issued`` maps tick numbers to their start (ms): an action's ``issued_at`` is the
        start of its ``first_tick``, as it was when first queued.
        """
        count = 0
        issued = issued or {}
        for row in rows:
            target = row["target"]
            if target == "*" or not self._is_agent(target) or (row["id"], target) in acked:
                continue
            item = {k: row[k] for k in ("id", "type", "target", "reason", "origin", "severity", "params")}
            at = issued.get(row.get("first_tick"))  # type: ignore[arg-type]
            self.put(target, {**item, "tick": row.get("last_tick"), **({"issued_at": at} if at else {})})
            count += 1
        return count

    def pending(self, node_id: str) -> list[dict[str, Any]]:
        """The actions waiting for ``node_id``, as plain data (for operators)."""
        with self._lock:
            return list(self._queues.get(node_id, {}).values())

    def _envelope(self, node_id: str, action: dict[str, Any], now_ms: int | None = None) -> dict[str, Any]:
        """The signed envelope of a queued action, signed again when past half its lifetime."""
        assert self._sign is not None
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        issuance = f"{action['id']}@{action['issued_at']}"
        with self._lock:
            envelope = self._signed.get(issuance)
        if envelope is not None and envelope["payload"]["expires_at"] - now_ms > self.ttl * 500:
            return envelope
        envelope = self._sign(action, action["issued_at"], now_ms + int(self.ttl * 1000))
        with self._lock:
            self._signed[issuance] = envelope
            if len(self._signed) > 2 * self.queued_now() + 100:  # forget issuances no node waits for
                waiting = {f"{a['id']}@{a['issued_at']}" for q in self._queues.values() for a in q.values()}
                self._signed = {k: v for k, v in self._signed.items() if k in waiting}
        return envelope

    def targets(self) -> set[str]:
        """The nodes with at least one action waiting."""
        with self._lock:
            return {node_id for node_id, queue in self._queues.items() if queue}

    def queued_now(self) -> int:
        """Actions waiting in all queues (caller may hold the lock: reads only)."""
        return sum(len(q) for q in self._queues.values())

    def signed(self, node_id: str) -> list[dict[str, Any]]:
        """The actions waiting for ``node_id`` as signed envelopes (what agents get)."""
        if self._sign is None:
            raise RuntimeError("this outbox has no signing key")
        if not self._queues.get(node_id):  # the usual answer: nothing waits (one read, no lock)
            return []
        return [self._envelope(node_id, a) for a in self.pending(node_id)]

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
