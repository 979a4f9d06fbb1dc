"""The cluster state in etcd: the state-store interface of ``wyneos_core.store`` on etcd v3.

Keys, all under one prefix (default ``/wyneos/<cluster>/``), values JSON:

==========================  ===========================================================
key                         holds
==========================  ===========================================================
``leader``                  the leader's identity, attached to its lease (election)
``tick``                    the number of the last committed tick
``ticks/<tick>``            that tick's summary (the last ``retention_ticks`` kept)
``nodes/<id>``              a node's registration: status, isolation, metadata
``actions/<id>``            an action's target state (``in_force``, ``cleared``, ...)
``events/<tick>``           the action lifecycle events of that tick
``targets/<action>/<t>``    per-target delivery outcome of an action in force
``effects/<action>``        what an action carried and did (to undo it exactly)
``keys/<node>``             a node's enrolled public key (seq: the key's mod revision)
``tokens/<sha256>``         an enrolment token (only its hash), with uses left and customer
``customers/<node>``        the customer a token gave to the node it enrolled
``acks/<action>/<node>``    a node's acknowledgement of an action
``sacks/<action>/<node>``   the node-signed envelope of that acknowledgement
``refusals/<time>-...``     agents' reports of actions they refused (the latest kept)
``meta/<name>``             small JSON values (the configured nodes)
``carry/...``               rule states and the licence ledger (``ha.carry``)
``trust/<node>``            a node's trust score, tier and admission (the trust step)
``notices/<node>/<action>`` an action queued for a node's agent by a tick that did not
                            leave it in force (a reinstate): every replica hands it out
                            until the agent acknowledges it
==========================  ===========================================================

Decisions (``write_tick``, ``write_action_outcomes``, node removals) are written only
under a fence: every such transaction compares the leader key's create revision with
the token of the term that decided; a deposed leader's late write fails with
``FencedWrite`` (logged and counted) and changes nothing. Facts from nodes and
operators (enrolments, tokens, acknowledgements, revocations) are written by any
replica, each with compare-and-swap on the key's revision where it matters (a token
spent once). Heartbeats are never written here one by one.

etcd caps the operations of one transaction (``--max-txn-ops``, 128 by default): a
tick with more node rows than fit writes them in earlier fenced transactions, and the
tick's decisions, events and its number last, in one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from urllib.parse import quote, unquote
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from wyneos_core.ha.etcd import KV, EtcdClient, EtcdUnavailable, cmp_create, delete_op, prefix_end, put_op
from wyneos_core.ha.facts import NodeFacts
from wyneos_core.ha.values import BAD as _BAD, MAX_TXN_OPS, SEALED, Sealer, encode as _j, problem
from wyneos_core.model import Node, NodeStatus
from wyneos_core.registry import RegistryError
from wyneos_core.store import StoreError

if TYPE_CHECKING:
    from wyneos_core.registry import Registry

__all__ = ["EtcdStateStore", "Fence", "FencedWrite"]

log = logging.getLogger("wyneos.ha.store")

_PROBLEMS_KEPT = 100


class FencedWrite(StoreError):
    """A decision written without (or after losing) the leadership it was made under."""


class Fence:
    """The fencing token of the term this replica leads (None: not leading)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.token: int | None = None
        self.refused = 0  # writes etcd refused: another term holds the key
        self.failed = 0  # writes that failed otherwise (etcd unavailable): outcome unknown
        self.lock = threading.Lock()

    def compare(self) -> dict[str, Any]:
        token = self.token
        if token is None:
            raise FencedWrite("not the leader: decisions are written only by the leader")
        return cmp_create(self.key, token)


def _t(tick: int) -> str:
    return f"{int(tick):012d}"


class EtcdStateStore(NodeFacts):
    """The cluster state on etcd. ``EtcdStateStore.open(endpoints, prefix)``.

    :param fence: shared with the replica's elector; every decision is written under it.
        Without one (``wyneos enrol`` on the command line) decisions are refused.
    """

    backend = "etcd"

    def __init__(self, client: EtcdClient, prefix: str, fence: Fence | None = None) -> None:
        if not prefix.endswith("/"):
            prefix += "/"
        self.client = client
        self.prefix = prefix
        self.path = client.describe() + prefix  # what messages name as "the state"
        self.fence = fence or Fence(prefix + "leader")
        #: the leader's copy of what only the leader writes (actions, effects), valid for one
        #: term and dropped after any failed write: ``(term, actions, effects)``
        self._own: tuple[int, dict[str, Any], dict[str, Any]] | None = None
        #: signs and checks keys, tokens and customers with the orchestrator key (the
        #: service sets it; without one they are read unchecked and cannot be written)
        self.sealer: Sealer | None = None
        #: values that failed their checks: ``{key: why}`` (the latest ``_PROBLEMS_KEPT``)
        self.problems: dict[str, str] = {}
        self._reported: dict[str, int] = {}
        #: decoded values by key: ``(mod revision, value)`` (a follower's mirror: each value
        #: is decoded once per version, not once per read); None: no memo
        self.memo: dict[str, tuple[int, Any]] | None = None

    @classmethod
    def open(cls, endpoints: list[tuple[str, int]], prefix: str, *, timeout: float = 5.0,
             **client: Any) -> EtcdStateStore:
        """Open the state under ``prefix``; ``client``: TLS and authentication (``EtcdClient``)."""
        store = cls(EtcdClient(endpoints, timeout=timeout, **client), prefix)
        try:
            version = store.meta("schema_version")
        except EtcdUnavailable as exc:
            raise StoreError(f"{store.client.describe()}: etcd does not answer (state.etcd.endpoints): {exc}") \
                from None
        if version is None:
            store.client.txn([cmp_create(store.prefix + "meta/schema_version", 0)],
                             [put_op(store.prefix + "meta/schema_version", "1")])
        elif int(version) > 1:
            raise StoreError(f"{store.path}: state schema {version} is newer than this wyneos-core (1)")
        return store

    def reopen(self) -> EtcdStateStore:
        """Another handle on the same state (the service's reader); shares the fence."""
        other = EtcdStateStore(self.client, self.prefix, self.fence)
        other.sealer = self.sealer
        other.problems, other._reported = self.problems, self._reported  # one report of each bad value
        return other

    def close(self) -> None:
        self.client.close()

    # -- helpers -------------------------------------------------------------------------

    def _k(self, *parts: str) -> str:
        """The key of ``parts`` (each quoted: an id with a slash stays one segment)."""
        return self.prefix + "/".join(quote(p, safe=":.-_") for p in parts)

    def _name(self, key: str) -> str:
        return key[len(self.prefix):] if key.startswith(self.prefix) else key

    def _decode(self, kv: KV) -> Any:
        """A value read from etcd, checked (``ha.values``): decoded, or ``_BAD`` after
        the problem was reported with its key (once per version of the value)."""
        memo = self.memo
        if memo is not None:
            hit = memo.get(kv.key)
            if hit is not None and hit[0] == kv.mod_revision:
                return hit[1]
        name = self._name(kv.key)
        kind = name.split("/", 1)[0]
        try:
            value = json.loads(kv.value)
        except (ValueError, RecursionError):
            why: str | None = "not JSON"
        else:
            why = problem(kind, value)
            if why is None and kind in SEALED and self.sealer is not None:
                why = self.sealer.check(name, value)
        if why is None:
            if kv.key in self.problems:  # fixed: reported as fixed once
                del self.problems[kv.key]
                self._reported.pop(kv.key, None)
                log.warning("etcd key %s: usable again", kv.key)
            if memo is not None and kv.mod_revision:
                if len(memo) > 4 * max(1000, len(self._reported)) + 200_000:
                    memo.clear()
                memo[kv.key] = (kv.mod_revision, value)
            return value
        if self._reported.get(kv.key) != kv.mod_revision:
            self._reported[kv.key] = kv.mod_revision
            log.error("etcd key %s: %s; skipped (fix or delete it: wyneos state check lists every such key)",
                      kv.key, why)
        self.problems[kv.key] = why
        while len(self.problems) > _PROBLEMS_KEPT:
            self.problems.pop(next(iter(self.problems)))
        if len(self._reported) > 10 * _PROBLEMS_KEPT:
            self._reported.clear()
        return _BAD

    def _get(self, *parts: str) -> Any:
        """The checked value at a key; None when absent or unusable."""
        kv = self.client.get(self._k(*parts))
        if kv is None:
            return None
        value = self._decode(kv)
        return None if value is _BAD else value

    def _rows(self, *parts: str) -> list[tuple[Any, Any]]:
        """``[(kv, checked value)]`` under a key prefix (unusable values skipped)."""
        out = []
        for kv in self.client.get_prefix(self._k(*parts) + "/"):
            value = self._decode(kv)
            if value is not _BAD:
                out.append((kv, value))
        return out

    def _sealed(self, *parts: str, value: dict[str, Any]) -> str:
        """``value`` (of a sealed kind) as written: signed with the orchestrator key."""
        if self.sealer is None:
            raise StoreError("writing enrolment data into etcd needs the orchestrator key (beside state.path)")
        return _j(self.sealer.seal(self._name(self._k(*parts)), value))

    def _owned(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(actions, effects)`` as stored, read once per term (only the leader writes them)."""
        own = self._own
        if own is None or own[0] != self.fence.token:
            base = len(self._k("effects")) + 1
            actions = {row["id"]: row for _, row in self._rows("actions")}
            effects = {unquote(kv.key[base:]): value for kv, value in self._rows("effects")}
            own = self._own = (self.fence.token or 0, actions, effects)
        return own[1], own[2]

    def _fenced(self, ops: list[dict[str, Any]]) -> None:
        """Write ``ops`` in transactions guarded by the fence, the last chunk last."""
        for start in range(0, len(ops), MAX_TXN_OPS):
            chunk = ops[start:start + MAX_TXN_OPS]
            try:
                ok, _ = self.client.txn([self.fence.compare()], chunk)
            except Exception:
                self._own = None
                with self.fence.lock:
                    self.fence.failed += 1  # committed or not: the replica reads etcd again before deciding
                raise
            if not ok:
                self._own = None
                with self.fence.lock:
                    self.fence.refused += 1
                log.warning("fenced write refused: term %s no longer holds %s", self.fence.token, self.fence.key)
                raise FencedWrite(f"term {self.fence.token} no longer leads: etcd refused the write")

    # -- reading -------------------------------------------------------------------------

    def last_tick(self) -> int:
        tick = self._get("tick")
        return 0 if tick is None else tick

    def restore_nodes(self, registry: Registry) -> int:
        count = 0
        base = len(self._k("nodes")) + 1
        for kv, row in self._rows("nodes"):
            node = registry.get(row["id"])
            if node is None:
                try:
                    if unquote(kv.key[base:]) != row["id"]:
                        raise RegistryError(f"holds node {row['id']!r}")
                    node = registry.register(row["id"], now=row["registered_at"])
                except RegistryError as exc:
                    if self.problems.get(kv.key) != str(exc):
                        log.error("etcd key %s: %s; skipped", kv.key, exc)
                    self.problems[kv.key] = str(exc)
                    continue
            node.status = NodeStatus(row["status"])
            node.last_seen = row["last_seen"]
            node.load = row["load"]
            node.metadata = {**row["metadata"], **node.metadata}
            node.licence_ref = node.licence_ref or row["licence_ref"]
            node.fingerprint = node.fingerprint or row["fingerprint"]
            node.registered_at = row["registered_at"]
            node.isolated = bool(row["isolated"])
            count += 1
        return count

    def node_rows(self) -> list[dict[str, Any]]:
        return [row for _, row in self._rows("nodes")]

    def actions(self, state: str | None = None) -> list[dict[str, Any]]:
        rows = [row for _, row in self._rows("actions") if state is None or row["state"] == state]
        rows.sort(key=lambda r: (r["first_tick"], r["id"]))
        return rows

    def action_events(self, since_tick: int = 0) -> list[dict[str, Any]]:
        out = []
        for kv in self.client.range(self._k("events", _t(since_tick)), prefix_end(self._k("events") + "/")):
            tick = int(unquote(kv.key.rsplit("/", 1)[1]))
            value = self._decode(kv)
            for aid, state, detail in [] if value is _BAD else value:
                out.append({"tick": tick, "action_id": aid, "state": state, "detail": detail})
        return out

    def recent_action_events(self, since_tick: int, limit: int = 500) -> list[dict[str, Any]]:
        return self.action_events(since_tick)[-limit:] if limit > 0 else []

    def tick_summaries(self, limit: int = 20) -> list[dict[str, Any]]:
        kvs = self.client.range(self._k("ticks") + "/", prefix_end(self._k("ticks") + "/"), limit=limit,
                                descending=True)
        return [v["summary"] for v in map(self._decode, kvs) if v is not _BAD]

    def tick_times(self, ticks: Iterable[int]) -> dict[int, float]:
        """When each of ``ticks`` started: from the kept tick rows, else from the actions
        first decided in them (which keep it: what agents know an issuance by)."""
        wanted = sorted(set(ticks))
        out: dict[int, float] = {}
        if not wanted:
            return out
        if len(wanted) <= 20:
            for t in wanted:
                row = self._get("ticks", _t(t))
                if row is not None:
                    out[t] = float(row["started_at"])
        else:
            for kv, row in self._rows("ticks"):
                if row["tick"] in wanted:
                    out[row["tick"]] = float(row["started_at"])
        missing = set(wanted) - set(out)
        if missing:
            for _, row in self._rows("actions"):
                if row["first_tick"] in missing and row.get("first_started_at") is not None:
                    out[row["first_tick"]] = float(row["first_started_at"])
        return out

    def tick_rows(self) -> list[dict[str, Any]]:
        """Every kept tick: ``tick``, ``started_at``, ``leader`` (who wrote it), ``term``,
        ``writes`` (how many times its key was written: 1 unless a tick was written twice)."""
        return [{**{k: v for k, v in row.items() if k != "summary"}, "writes": kv.version}
                for kv, row in self._rows("ticks")]

    def meta(self, key: str, default: Any = None) -> Any:
        value = self._get("meta", key)
        return default if value is None else value

    def set_meta(self, key: str, value: Any) -> None:
        self.client.put(self._k("meta", key), _j(value))

    #: bytes per etcd value of a kept binary state (below etcd's 1.5 MiB request limit)
    BLOB_CHUNK = 512 * 1024

    def put_blob(self, name: str, data: bytes) -> None:
        """Keep one binary state (e.g. ``telemetry``) in chunks, under the fence; the head
        naming the new chunks (count, size, SHA-256) is written last, then the old go."""
        old = self.meta(f"blob:{name}")
        generation = (old["generation"] + 1) if isinstance(old, dict) and isinstance(old.get("generation"), int) else 1
        chunks = [data[i:i + self.BLOB_CHUNK] for i in range(0, len(data), self.BLOB_CHUNK)] or [b""]
        for i, chunk in enumerate(chunks):  # one chunk per transaction: etcd caps a request at 1.5 MiB
            self._fenced([put_op(self._k("blobs", name, str(generation), f"{i:08d}"), chunk)])
        head = {"generation": generation, "chunks": len(chunks), "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest()}
        self._fenced([put_op(self._k("meta", f"blob:{name}"), _j(head))])
        if isinstance(old, dict) and isinstance(old.get("generation"), int):
            stale = self._k("blobs", name, str(old["generation"])) + "/"
            self.client.txn([], [delete_op(stale, prefix_end(stale))])

    def blob(self, name: str) -> bytes | None:
        """The binary state kept under ``name``; None when never kept or not whole (a
        missing chunk or another digest: values read back from etcd are checked)."""
        head = self.meta(f"blob:{name}")
        if not isinstance(head, dict) or not isinstance(head.get("generation"), int):
            return None
        kvs = self.client.get_prefix(self._k("blobs", name, str(head["generation"])) + "/")
        data = b"".join(kv.value for kv in sorted(kvs, key=lambda kv: kv.key))
        if len(kvs) != head.get("chunks") or hashlib.sha256(data).hexdigest() != head.get("sha256"):
            log.warning("etcd: kept state %s is not whole (%d chunks); ignored", name, len(kvs))
            return None
        return data

    # -- writing decisions (fenced) --------------------------------------------------------

    #: who writes: set by the replica (shown in each tick row)
    writer: str = ""
    #: returns ``{name: document}`` of carried-over state to write with the tick (replica)
    carry: Any = None
    #: returns nodes whose registration changed otherwise (metadata), to write with the tick
    more_nodes: Any = None
    #: returns ``[(node, action)]`` queued for agents by the tick (the replica's held outbox)
    notices: Any = None

    def notice_rows(self) -> list[tuple[str, dict[str, Any]]]:
        """``[(node, action)]`` of the stored notices (``notices/<node>/<action>``)."""
        base = len(self._k("notices")) + 1
        out = []
        for kv, value in self._rows("notices"):
            node = unquote(kv.key[base:].split("/", 1)[0])
            if isinstance(value, dict) and isinstance(value.get("id"), str) and value.get("target") == node:
                out.append((node, value))
            else:
                log.warning("etcd key %s: not a notice for %s, skipped", kv.key, node)
        return out

    def committed_view(self) -> dict[str, Any] | None:
        """What followers show besides registrations and decisions (``carry/view``)."""
        return self._get("carry", "view")

    def carried(self) -> dict[str, Any]:
        """``{name: document}`` of the carried-over state (``carry/...`` keys)."""
        base = len(self._k("carry")) + 1
        return {"/".join(unquote(p) for p in kv.key[base:].split("/")): value for kv, value in self._rows("carry")}

    def write_tick(self, tick: int, started_at: float, duration_ms: float, summary: dict[str, Any],
                   nodes: Iterable[Node], actions: Iterable[dict[str, Any]],
                   events: Iterable[tuple[str, str, str]], retention: int, cleared: Iterable[str] = ()) -> None:
        """One tick's decisions, under the fence (see the module docstring)."""
        self.fence.compare()  # refuse early when not leading
        nodes = list(nodes)
        if self.more_nodes is not None:
            seen = {n.id for n in nodes}
            nodes.extend(n for n in self.more_nodes() if n.id not in seen)
        node_ops = [put_op(self._k("nodes", n.id), _j({
            "id": n.id, "status": n.status.value, "last_seen": n.last_seen, "load": n.load,
            "metadata": n.metadata, "licence_ref": n.licence_ref, "fingerprint": n.fingerprint,
            "registered_at": n.registered_at, "isolated": bool(n.isolated), "updated_tick": tick})) for n in nodes]
        owned, _ = self._owned()
        stored = dict(owned)
        ops: list[dict[str, Any]] = []
        for a in actions:
            old = stored.get(a["id"])
            row = {k: a[k] for k in ("id", "type", "target", "origin", "reason", "severity", "params", "state",
                                     "first_tick", "last_tick")}
            if old is not None:  # as SQLite's upsert: state, last tick and reason change
                row = {**old, "state": a["state"], "last_tick": a["last_tick"], "reason": a["reason"]}
            elif row["first_tick"] == tick:  # its issuance time, kept past the tick row's retention
                row["first_started_at"] = started_at
            stored[a["id"]] = row
            ops.append(put_op(self._k("actions", a["id"]), _j(row)))
        for aid in cleared:
            old = stored.get(aid)
            if old is not None:
                old = stored[aid] = {**old, "state": "cleared", "last_tick": tick}
                ops.append(put_op(self._k("actions", aid), _j(old)))
        if self.notices is not None:  # lifecycle steps that left force in this tick still reach agents
            for node_id, item in self.notices():
                if stored.get(item["id"], {}).get("state") != "in_force":
                    ops.append(put_op(self._k("notices", node_id, item["id"]), _j(item)))
        events = [[aid, state, detail] for aid, state, detail in events]
        if events:
            before = self._get("events", _t(tick)) or []
            ops.append(put_op(self._k("events", _t(tick)), _j(before + events)))
        ops.append(put_op(self._k("ticks", _t(tick)), _j({
            "tick": tick, "started_at": started_at, "duration_ms": duration_ms, "summary": summary,
            "leader": self.writer, "term": self.fence.token})))
        ops.extend(self._retention(tick, retention, stored))
        if self.carry is not None:  # rule states, licence ledger: with the tick, or not at all
            for name, doc in self.carry().items():
                ops.append(put_op(self._k("carry", *name.split("/")), _j(doc)))
        ops.append(put_op(self._k("tick"), str(int(tick))))
        # node rows first (in chunks of their own when many), the decisions and the tick number last
        if len(node_ops) + len(ops) <= MAX_TXN_OPS:
            self._fenced(node_ops + ops)
        else:
            self._fenced(node_ops)
            if len(ops) > MAX_TXN_OPS:
                self._fenced(ops[:-MAX_TXN_OPS])
                ops = ops[-MAX_TXN_OPS:]
            self._fenced(ops)
        if self._own is not None:  # committed: the copy follows
            self._own[1].clear()
            self._own[1].update(stored)

    def _retention(self, tick: int, retention: int, stored: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Operations forgetting what ended ``retention`` ticks ago (as the SQLite store)."""
        cut = tick - retention
        if cut < 1:
            return []
        ops = [delete_op(self._k("ticks", _t(0)), self._k("ticks", _t(cut + 1)))]
        live = {aid for aid, row in stored.items() if row["state"] == "in_force"}
        for aid, row in list(stored.items()):
            if row["state"] != "in_force" and row["last_tick"] <= cut:
                ops.append(delete_op(self._k("actions", aid)))
                del stored[aid]
        base = len(self._k("notices")) + 1
        for kv in self.client.get_prefix(self._k("notices") + "/", keys_only=True):
            if unquote(kv.key[base:].partition("/")[2]) not in stored:  # its action is forgotten
                ops.append(delete_op(kv.key))
        for kv in self.client.range(self._k("events", _t(0)), self._k("events", _t(cut + 1))):
            value = self._decode(kv)
            kept = [e for e in ([] if value is _BAD else value) if e[0] in live]  # in force: history kept
            ops.append(put_op(kv.key, _j(kept)) if kept else delete_op(kv.key))
        return ops

    def forget_node(self, node_id: str) -> None:
        """Forget a node's registration (at startup, for nodes dropped from the config:
        config, not a decision, so written by whichever replica starts)."""
        self.client.txn([], [delete_op(self._k("nodes", node_id))])

    def check(self, *, full: bool = True) -> list[str]:
        """Problems of the state in etcd, one line each (empty: sound): the schema
        version, and every value under the prefix decoded as JSON."""
        problems = []
        version = self.meta("schema_version")
        if not isinstance(version, int):
            problems.append(f"meta/schema_version: {version!r} is not a number")
        for kv in self.client.get_prefix(self.prefix):
            if kv.key == self.fence.key or self._name(kv.key).startswith("blobs/"):
                continue  # the leader's identity; binary chunks (checked by their head's digest)
            if self._decode(kv) is _BAD:
                problems.append(f"{kv.key}: {self.problems.get(kv.key, 'unusable')}")
        return problems

    # -- trust (fenced: written by the deciding tick) --------------------------------------

    _TRUST_COLS = ("node_id", "fingerprint", "trust", "tier", "admission", "admission_reason", "joined_tick",
                   "evidence", "updated_tick")

    def ensure_trust_tables(self) -> None:
        """Nothing to create in etcd (kept for the interface)."""

    def write_trust(self, rows: Iterable[tuple]) -> int:
        """Upsert trust rows (as the SQLite store: a missing fingerprint keeps the stored one)."""
        rows = [dict(zip(self._TRUST_COLS, row)) for row in rows]
        if not rows:
            return 0
        self.fence.compare()
        if any(r["fingerprint"] is None for r in rows):
            stored = {r["node_id"]: r for r in self.trust_rows()}
            for r in rows:
                if r["fingerprint"] is None and r["node_id"] in stored:
                    r["fingerprint"] = stored[r["node_id"]]["fingerprint"]
        self._fenced([put_op(self._k("trust", r["node_id"]), _j(r)) for r in rows])
        return len(rows)

    def trust_rows(self) -> list[dict[str, Any]]:
        return [row for _, row in self._rows("trust")]

    # -- delivery outcomes and effects (fenced: written by the deciding tick) ---------------

    def write_action_outcomes(self, tick: int, outcomes: Iterable[tuple[str, str, bool, str]],
                              effects: Iterable[tuple[str, dict[str, Any] | None, dict[str, Any] | None]],
                              retention: int) -> None:
        self.fence.compare()
        ops = [put_op(self._k("targets", a, t), _j([bool(ok), r, tick])) for a, t, ok, r in outcomes]
        actions, stored = self._owned()
        written: dict[str, Any] = {}
        for aid, carried, effect in effects:
            old = written.get(aid) or stored.get(aid) or {"carried": None, "effect": None}
            row = written[aid] = {"carried": carried if carried is not None else old["carried"],
                                  "effect": effect if effect is not None else old["effect"], "tick": tick}
            ops.append(put_op(self._k("effects", aid), _j(row)))
        gone: list[str] = []
        if tick % 10 == 0:  # retention every 10 ticks: it reads every stored outcome
            live = {aid for aid, row in actions.items() if row["state"] == "in_force"}
            for kv, value in self._rows("targets"):
                aid = unquote(kv.key[len(self._k("targets")) + 1:].split("/", 1)[0])
                if aid not in live and value[2] <= tick - retention:
                    ops.append(delete_op(kv.key))
            for aid, value in stored.items():
                if aid not in live and aid not in written and value["tick"] <= tick - retention:
                    ops.append(delete_op(self._k("effects", aid)))
                    gone.append(aid)
        if ops:
            self._fenced(ops)
        stored.update(written)  # committed: the copy follows
        for aid in gone:
            stored.pop(aid, None)

    def action_outcomes(self, action_ids: Iterable[str]) -> tuple[dict[str, dict[str, tuple[bool, str]]],
                                                                   dict[str, dict[str, Any]]]:
        wanted = set(action_ids)
        outcomes: dict[str, dict[str, tuple[bool, str]]] = {}
        base = len(self._k("targets")) + 1
        for kv, value in self._rows("targets"):
            aid, _, target = (unquote(x) for x in kv.key[base:].partition("/"))
            if aid in wanted:
                outcomes.setdefault(aid, {})[target] = (bool(value[0]), value[1])
        carried = {}
        for kv, value in self._rows("effects"):
            aid = unquote(kv.key.rsplit("/", 1)[1])
            if aid in wanted and value["carried"] is not None:
                carried[aid] = value["carried"]
        return outcomes, carried

    def action_effects(self) -> dict[str, dict[str, Any]]:
        return {unquote(kv.key.rsplit("/", 1)[1]): {"carried": v["carried"], "effect": v["effect"]}
                for kv, v in self._rows("effects")}

