"""Relay of signed actions through peers, for nodes the orchestrator cannot reach directly.

Orchestrator half (``RelayDesk``, a plugin of ``wyneos serve``); the agent half is
``Agent.relay_actions`` / ``Agent.receive_relayed`` and the peer route ``POST /v1/peer/relay``
(``wyneos_core.service.peer``). See ``docs/mesh.md`` ("Relay").

* A node is *relayable* while the orchestrator no longer hears it (stale or offline)
  but witnesses report it reachable (the consensus suspicion's reports). The routing
  tree of the tick goes through such a witness (``builtin/propagate.py``): the hop
  witness -> node crosses ``wyneos_deliver``, where the desk notes the witness as the
  preferred relay, and the agent outbox queues the action for the node as usual.
* After each tick, for every relayable node with signed actions waiting in its outbox,
  the desk picks one relay per action: the preferred one, else a witness that reports
  the node reachable, online itself, and not caught failing that action before. The
  envelopes go to the relay with the answer to its next heartbeat
  (``relay: [{"to": node, "envelopes": [...]}]``), unchanged: they are the same signed
  envelopes the node would fetch itself.
* The relay's agent verifies each envelope with the orchestrator key it pinned (it
  never forwards what does not verify), pushes it to the node's peer endpoint (the
  address from its signed neighbour list), and sends back the node's answer: the acks
  the node signed with its own key and the node's refusal reports. The server checks
  those acks with the node's enrolled key (``Service.acknowledge``): a relay cannot
  forge one.
* Outcomes, each kept in the state file (``relay_events``, shown by ``/v1/actions``
  under ``relays``), logged and counted (``wyneos_relay_events_total{outcome}``):
  ``handed`` (given to the relay), ``delivered`` (the node's signed ack came back),
  ``altered`` (the node refused what the relay pushed as badly signed or malformed:
  the relay changed it), ``dropped`` (no signed ack from the node within
  ``ack_ticks`` ticks of the hand-over), ``forged`` (the relay brought back an answer
  of the node that does not verify with the node's key). ``altered`` has a second
  path: a relay that alters and hides the refusal is first ``dropped``; the node sends
  the refusal directly once its link is back, naming (``via``) the relay whose signed
  push it refused, and that relay is named ``altered`` if it was handed the action. A relay caught altering,
  dropping or forging is not used for that action again; the next tick hands it to
  another witness.
"""

from __future__ import annotations

import logging
import threading
import time
from itertools import islice
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from wyneos_core import hookimpl
from wyneos_core.model import ORIGIN, Action, NodeStatus
from wyneos_core.nodetable import OFFLINE, STALE

__all__ = ["RELAY_PATH_KEY", "RelayDesk", "TAMPER_CODES", "relay_settings"]

log = logging.getLogger("wyneos.relay")

#: the key of the relay work in the answer to a heartbeat
RELAY_PATH_KEY = "relay"
#: refusal reasons that, for an envelope that came through a relay, mean the relay changed it
TAMPER_CODES = frozenset(("bad_signature", "malformed", "unsigned", "unknown_key"))
#: envelopes handed to one relay per answer at most
MAX_PER_ANSWER = 32
#: relay outcomes kept in the state file
KEEP_EVENTS = 10_000
#: (target, action) pairs whose relays the desk remembers after delivery, at most
KEEP_HANDED = 100_000
_SILENT = (NodeStatus.STALE, NodeStatus.OFFLINE)

SCHEMA = """
CREATE TABLE IF NOT EXISTS relay_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tick INTEGER NOT NULL,
    at REAL NOT NULL,
    target TEXT NOT NULL,
    action_id TEXT NOT NULL,
    relay TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
"""


def relay_settings(config: Any) -> dict[str, int]:
    """``plugins.settings.relay`` of ``config`` with its defaults (``{"ack_ticks": 5}``).

    :raises ConfigError: naming the field, for an unknown setting or a bad value.
    """
    from wyneos_core.config import ConfigError

    section = config.plugin_settings("relay")
    if not isinstance(section, dict):
        raise ConfigError("expected a mapping of settings (ack_ticks)", file=config.source,
                          field="plugins.settings.relay")
    for name in section:
        if name != "ack_ticks":
            raise ConfigError(f"unknown setting {name!r} (known: ack_ticks)", file=config.source,
                              field=f"plugins.settings.relay.{name}")
    value = section.get("ack_ticks", 5)
    if type(value) is not int or not 1 <= value <= 10_000:
        raise ConfigError(f"expected a whole number of ticks from 1 to 10000, got {value!r}",
                          file=config.source, field="plugins.settings.relay.ack_ticks")
    return {"ack_ticks": value}


@dataclass(slots=True)
class Handover:
    """One action on its way to ``target`` through ``relay``."""

    target: str
    action_id: str
    relay: str
    planned_tick: int
    handed_tick: int | None = None


@dataclass(slots=True)
class _Trail:
    """What the desk remembers of one (target, action): who relayed it, who failed it."""

    relays: list[str] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)


class RelayDesk:
    """Hands waiting signed actions of nodes the orchestrator cannot reach to their witnesses.

    :param service: the ``Service`` (outbox, registry, state file, metrics).
    :param ack_ticks: ticks a relay has, from the hand-over, to bring back the node's signed ack.
    """

    __wyneos_name__ = "relay-desk"

    def __init__(self, service: Any, ack_ticks: int = 5) -> None:
        if type(ack_ticks) is not int or not 1 <= ack_ticks <= 10_000:
            raise ValueError(f"relay ack_ticks: expected a whole number of ticks from 1 to 10000, got {ack_ticks!r}")
        self.service = service
        self.ack_ticks = ack_ticks
        self._lock = threading.Lock()
        self.tick = 0
        #: (target, action id) -> the current hand-over (changed only by ``_hand`` and ``_drop``)
        self.handovers: dict[tuple[str, str], Handover] = {}
        #: relay -> the keys of its hand-overs, in the order handed (each answer to a
        #: heartbeat looks up its sender's: no scan of every hand-over)
        self._by_relay: dict[str, dict[tuple[str, str], None]] = {}
        #: (target, action id) -> relays used / failed (bounded: pruned with the outbox)
        self.trails: dict[tuple[str, str], _Trail] = {}
        #: (target, action id) -> the witness whose hop the routing tree chose
        self.preferred: dict[tuple[str, str], str] = {}
        #: (target, action id) -> every relay handed it, kept after delivery (bounded,
        #: oldest first out): a refusal the node reports later names one of these only
        self.handed: OrderedDict[tuple[str, str], tuple[str, ...]] = OrderedDict()
        #: (target, action id, relay) named ``altered`` already (bounded likewise)
        self.altered: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        #: outcomes not yet written to the state file (written after each tick)
        self._events: list[tuple[int, float, str, str, str, str, str]] = []
        self.counts: dict[str, int] = {}
        #: outcomes, when the state store has no SQL connection (etcd replicas)
        self._memory: list[tuple[int, float, str, str, str, str, str]] = []
        metrics = getattr(service, "metrics", None)
        self._counter: Callable[[str], Any] | None = None
        if metrics is not None:
            from prometheus_client import Counter

            counter = Counter("wyneos_relay_events", "Signed actions relayed through peers, by outcome "
                              "(handed, delivered, altered, dropped, forged)", ["outcome"], registry=metrics.registry)
            self._counter = counter.labels

    # -- the tick ------------------------------------------------------------------------

    @hookimpl(tryfirst=True)
    def wyneos_deliver(self, ctx: Any, action: Action, sender: str, receiver: str) -> bool | None:
        """Note the witness through which the routing tree reaches a silent node (the
        outbox, next in line, queues the action for the node as for any agent)."""
        if sender != ORIGIN:
            node = ctx.registry.get(receiver)
            if node is not None and node.status in _SILENT:
                with self._lock:
                    self.preferred[(receiver, action.id)] = sender
        return None

    def note_hops(self, ctx: Any, hops: Any) -> None:
        """``wyneos_deliver`` for a level's hops at once (``AgentOutbox.hop_notes``): the
        receivers' statuses read over the registry's columns, a note per silent one."""
        table = ctx.registry.table
        relayed = np.flatnonzero(hops.sender != 0)  # vertex 0: the orchestrator itself
        if not len(relayed):
            return
        receivers = hops.receivers
        names = [receivers[i] for i in relayed.tolist()]
        slots = table.slots_of(names)
        known = slots >= 0
        status = np.full(len(names), -1, np.int64)
        status[known] = table.status[slots[known]]
        silent = np.flatnonzero((status == STALE) | (status == OFFLINE))
        if not len(silent):
            return
        senders, actions, which = hops.senders, hops.actions, hops.action
        noted = [((names[j], actions[which[i]].id), senders[i]) for j, i in
                 ((j, int(relayed[j])) for j in silent.tolist())]
        with self._lock:
            self.preferred.update(noted)

    @hookimpl
    def wyneos_tick_report(self, ctx: Any) -> None:
        """Check hand-overs for timeouts, then plan hand-overs for silent nodes."""
        try:
            self._after_tick(ctx)
        except Exception:  # noqa: BLE001 - a relay bug must not take the tick down
            log.exception("relay planning failed")

    def _after_tick(self, ctx: Any) -> None:
        from wyneos_core.consensus import state_of

        tick = ctx.tick
        registry = ctx.registry
        suspicions = state_of(ctx.orchestrator).suspicions
        window = state_of(ctx.orchestrator).settings.window_ticks
        outbox = self.service.outbox
        is_agent = self.service._is_agent
        with self._lock:
            self.tick = tick
            # 1. time-outs: handed over, no signed ack from the node within ack_ticks ticks
            for key, h in list(self.handovers.items()):
                if h.handed_tick is not None and tick - h.handed_tick > self.ack_ticks:
                    self._fail(h, "dropped", f"no signed acknowledgement from {h.target} within {self.ack_ticks} "
                                             f"tick(s) of handing action {h.action_id} to {h.relay}")
                elif h.handed_tick is None and tick - h.planned_tick > self.ack_ticks:
                    self._drop(key)  # the relay never came for it (silent itself?): plan again
            # 2. plans: every waiting action of a silent node that witnesses still reach (only
            # suspected nodes with an action waiting: a million silent nodes with none cost nothing)
            waiting_for = outbox.targets()
            for sus in [s for subject, s in suspicions.items() if subject in waiting_for] if waiting_for else ():
                target = sus.subject
                node = registry.get(target)
                if node is None or node.status not in _SILENT or node.isolated or not is_agent(target):
                    continue
                vouchers = sorted(o for o, (at, reachable) in sus.reports.items()
                                  if reachable and tick - at < window and o != target)
                for action in outbox.pending(target):
                    key = (target, action["id"])
                    if key in self.handovers:
                        continue
                    trail = self.trails.setdefault(key, _Trail())
                    choices = [v for v in vouchers if v not in trail.failed and self._usable(registry.get(v))
                               and is_agent(v)]
                    first = self.preferred.get(key)
                    if first in choices:
                        choices.remove(first)
                        choices.insert(0, first)
                    if not choices:
                        continue
                    self._hand(key, Handover(target, action["id"], choices[0], tick))
            # 3. forget what no outbox waits for any more
            if len(self.trails) > 4 * len(self.handovers) + 1000:
                waiting = {(t, a["id"]) for t in {k[0] for k in self.trails} for a in outbox.pending(t)}
                self.trails = {k: v for k, v in self.trails.items() if k in waiting}
                self.preferred = {k: v for k, v in self.preferred.items() if k in waiting}
            events, self._events = self._events, []
        self._store(events)

    @staticmethod
    def _usable(node: Any) -> bool:
        return node is not None and node.status is NodeStatus.ONLINE and not node.isolated

    def _event(self, h: Handover, outcome: str, detail: str) -> None:
        """Record an outcome (caller holds the lock)."""
        self._events.append((self.tick, time.time(), h.target, h.action_id, h.relay, outcome, detail[:1000]))
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        if self._counter is not None:
            self._counter(outcome).inc()
        if outcome in ("altered", "dropped", "forged"):
            log.warning("relay %s %s action %s for %s: %s", h.relay, outcome, h.action_id, h.target, detail)
        else:
            log.info("relay %s: action %s for %s %s", h.relay, h.action_id, h.target, outcome)

    def _fail(self, h: Handover, outcome: str, detail: str) -> None:
        """The relay failed this action: named, not used for it again (caller holds the lock)."""
        self._event(h, outcome, detail)
        self.trails.setdefault((h.target, h.action_id), _Trail()).failed.add(h.relay)
        self._drop((h.target, h.action_id))

    def _hand(self, key: tuple[str, str], h: Handover) -> None:
        """Hand ``key``'s action to ``h.relay`` (caller holds the lock; ``key`` not handed)."""
        self.handovers[key] = h
        self._by_relay.setdefault(h.relay, {})[key] = None

    def _drop(self, key: tuple[str, str]) -> Handover | None:
        """End ``key``'s hand-over, if any (caller holds the lock)."""
        h = self.handovers.pop(key, None)
        if h is not None:
            keys = self._by_relay[h.relay]
            del keys[key]
            if not keys:
                del self._by_relay[h.relay]
        return h

    def _store(self, events: list[tuple[int, float, str, str, str, str, str]]) -> None:
        if not events:
            return
        service = self.service
        if getattr(service.db, "conn", None) is None:  # a store without SQL (etcd replicas): kept in memory
            with self._lock:
                self._memory.extend(events)
                del self._memory[:-KEEP_EVENTS]
            return
        with service.db_lock:
            service.db.conn.executemany("INSERT INTO relay_events (tick, at, target, action_id, relay, outcome, "
                                        "detail) VALUES (?,?,?,?,?,?,?)", events)
            service.db.conn.execute("DELETE FROM relay_events WHERE seq <= (SELECT MAX(seq) FROM relay_events) - ?",
                                    (KEEP_EVENTS,))

    # -- the answers -------------------------------------------------------------------------

    def for_relay(self, relay: str) -> list[dict[str, Any]]:
        """The relay work for ``relay`` in the answer to its heartbeat:
        ``[{"to": node, "envelopes": [signed action, ...]}]`` (empty when none)."""
        if relay not in self._by_relay:  # the usual answer: no work for this relay (one read, no lock)
            return []
        with self._lock:
            keys = self._by_relay.get(relay, ())
            mine = [self.handovers[key] for key in islice(keys, MAX_PER_ANSWER)]
            if not mine:
                return []
            for h in mine:
                if h.handed_tick is None:
                    h.handed_tick = self.tick
                    trail = self.trails.setdefault((h.target, h.action_id), _Trail())
                    trail.relays.append(relay)
                    key = (h.target, h.action_id)
                    self.handed[key] = (*self.handed.pop(key, ()), relay)
                    while len(self.handed) > KEEP_HANDED:
                        self.handed.popitem(last=False)
                    self._event(h, "handed", f"handed to {relay} for {h.target}")
        outbox = self.service.outbox
        work: dict[str, list[dict[str, Any]]] = {}
        for h in mine:
            waiting = {a["id"]: a for a in outbox.pending(h.target)}
            action = waiting.get(h.action_id)
            if action is not None:
                work.setdefault(h.target, []).append(outbox._envelope(h.target, action))
        return [{"to": target, "envelopes": envelopes} for target, envelopes in work.items()]

    def was_handed(self, relay: str, target: str) -> bool:
        """Whether ``relay`` was given an action for ``target`` (and so may bring its answer)."""
        with self._lock:
            return any(key[0] == target and self.handovers[key].handed_tick is not None
                       for key in self._by_relay.get(relay, ())) or any(
                k[0] == target and relay in t.relays for k, t in self.trails.items())

    def acked(self, target: str, action_id: str, via: str | None) -> None:
        """The node's signed ack of ``action_id`` arrived (through ``via``, or directly)."""
        with self._lock:
            h = self._drop((target, action_id))
            if h is None and via is not None:  # a late ack from a relay reported before (dropped)
                h = Handover(target, action_id, via, self.tick)
            if h is not None:
                how = f"signed acknowledgement of {target} brought back by {via}" if via == h.relay else \
                    ("signed acknowledgement sent by the node directly" if via is None
                     else f"signed acknowledgement brought back by {via}")
                self._event(h, "delivered", how)
            self.trails.pop((target, action_id), None)
            self.preferred.pop((target, action_id), None)

    def refused(self, target: str, action_id: str | None, reason: str, detail: str, via: str | None,
                pusher: str | None = None) -> str | None:
        """The node refused an envelope (reported through ``via`` or directly). When the
        refusal means the envelope was changed and it reached the node through a relay,
        that relay is named (``altered``) and returned.

        ``pusher``: the relay the node says pushed what it refused (it checked that the
        push was signed by that relay's key); taken only when the desk handed that relay
        the action. A report sent directly, once the node's link is back, thus names the
        relay even when that relay kept the refusal from the orchestrator, and even
        after another relay delivered the action since. Each relay is named ``altered``
        once per action, however many times (and ways) the refusal is reported."""
        if action_id is None or reason not in TAMPER_CODES:
            return None
        with self._lock:
            key = (target, action_id)
            h = self.handovers.get(key)
            handed = self.handed.get(key, ())
            if via is not None:
                culprit = via  # what the node refused is what this relay pushed
            elif pusher is not None:
                if pusher not in handed:
                    return None  # the node names a relay that was never given this action
                culprit = pusher
            elif h is not None and h.handed_tick is not None:
                culprit = h.relay
            elif handed:
                culprit = handed[-1]
            else:
                return None
            if (target, action_id, culprit) in self.altered:
                return culprit  # named already (the same refusal, reported again directly)
            self.altered[(target, action_id, culprit)] = None
            while len(self.altered) > KEEP_HANDED:
                self.altered.popitem(last=False)
            record = h if h is not None and h.relay == culprit else Handover(target, action_id, culprit, self.tick)
            # (when another relay holds the action now, its hand-over is left alone)
            self._fail(record, "altered", f"{target} refused what {culprit} relayed as {reason}: {detail[:300]}")
            return culprit

    def forged(self, relay: str, target: str, detail: str) -> None:
        """``relay`` brought back an answer of ``target`` that does not verify with the
        node's key (an ack it made up or changed): named, and not used for that node again."""
        with self._lock:
            keys = [k for k in self.trails if k[0] == target and relay in self.trails[k].relays]
            for key in keys or [(target, "-")]:
                h = self.handovers.get(key)
                self._fail(h if h is not None and h.relay == relay else Handover(target, key[1], relay, self.tick),
                           "forged", f"the answer of {target} brought back by {relay} does not verify: {detail[:300]}")

    def flush(self) -> None:
        """Write outcomes recorded outside a tick (acks, refusals) to the state file."""
        with self._lock:
            events, self._events = self._events, []
        self._store(events)

    def recent(self, limit: int = 200) -> list[dict[str, Any]]:
        """The latest relay outcomes from the state file, oldest first."""
        service = self.service
        if getattr(service.db, "conn", None) is None:
            with self._lock:
                rows = [e[:2] + e[2:] for e in self._memory[-limit:]][::-1]
            return [{"tick": t, "at": at, "target": tg, "action_id": a, "relay": r, "outcome": o, "detail": d}
                    for t, at, tg, a, r, o, d in reversed(rows)]
        with service.db_lock:
            rows = service.db.conn.execute("SELECT tick, at, target, action_id, relay, outcome, detail FROM "
                                           "relay_events ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [{"tick": t, "at": at, "target": tg, "action_id": a, "relay": r, "outcome": o, "detail": d}
                for t, at, tg, a, r, o, d in reversed(rows)]
