"""Facts from nodes and operators in etcd, written by any replica: enrolment tokens,
enrolled keys and the customers tokens gave (signed with the orchestrator key:
``ha.values.Sealer``), agents' acknowledgements and their node-signed envelopes, and
refusal reports. Each write that must not race (a token spent once, a key revoked
once) is a compare-and-swap on the key's revision.

``NodeFacts`` is a part of ``EtcdStateStore`` (``ha.store``): it uses the store's key
naming (``_k``), its checked reads (``_decode``, ``_get``, ``_rows``) and its sealing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from wyneos_core.ha.etcd import cmp_create, cmp_mod, delete_op, prefix_end, put_op
from wyneos_core.ha.values import BAD as _BAD, MAX_TXN_OPS, encode as _j
from wyneos_core.store import StoreError

__all__ = ["NodeFacts"]

_ACK_DETAIL = 500
_CAS_TRIES = 20


class NodeFacts:
    """Tokens, keys, customers, acknowledgements and refusal reports (see the module)."""

    # provided by EtcdStateStore
    client: Any
    sealer: Any
    problems: dict[str, str]
    _name: Any
    _k: Any
    _decode: Any
    _get: Any
    _rows: Any
    _sealed: Any
    actions: Any

    # -- service mode: keys, tokens, acknowledgements (any replica) -------------------------

    def ensure_service_tables(self) -> None:
        """Nothing to create in etcd (kept for the interface)."""

    def ensure_delivery_tables(self) -> None:
        """Nothing to create in etcd (kept for the interface)."""

    def add_enrol_token(self, token_hash: str, node_id: str | None, uses: int, expires_at: float, now: float,
                        customer: str | None = None) -> None:
        key = self._k("tokens", token_hash)
        ok, _ = self.client.txn([cmp_create(key, 0)], [put_op(key, self._sealed("tokens", token_hash, value={
            "token_hash": token_hash, "node_id": node_id, "uses_left": uses, "expires_at": expires_at,
            "created_at": now, "customer": customer}))])
        if not ok:
            raise StoreError("an enrolment token with this hash exists already")

    def enrol_tokens(self) -> list[dict[str, Any]]:
        rows = sorted((row for _, row in self._rows("tokens")), key=lambda r: r["created_at"])
        return [{k: r[k] for k in ("token_hash", "node_id", "uses_left", "expires_at", "created_at")} for r in rows]

    def revoke_enrol_token(self, token_hash: str) -> bool:
        """Delete the enrolment token with this hash (no node can enrol with it any more)."""
        key = self._k("tokens", token_hash)
        if self.client.get(key) is None:
            return False
        self.client.txn([], [delete_op(key)])
        return True

    def node_customers(self) -> dict[str, str]:
        """The customers enrolment tokens gave to nodes: ``{node_id: customer}``."""
        base = len(self._k("customers")) + 1
        return {unquote(kv.key[base:]): value["customer"] for kv, value in self._rows("customers")}

    def reseal(self) -> int:
        """Sign again with the current orchestrator key what a previous one signed (keys,
        tokens, customers), each with compare-and-swap on its revision, so the previous
        key can be retired without locking nodes out; how many were signed again."""
        sealer = self.sealer
        if sealer is None:
            return 0
        done = 0
        for kind in ("keys", "tokens", "customers"):
            for kv, value in self._rows(kind):
                name = self._name(kv.key)
                if sealer.current(name, value):
                    continue
                fresh = _j(sealer.seal(name, {k: v for k, v in value.items() if k != "sig"}))
                ok, _ = self.client.txn([cmp_mod(kv.key, kv.mod_revision)], [put_op(kv.key, fresh)])
                done += ok
        return done

    def put_node_key(self, node_id: str, public_key: bytes, fingerprint: str, now: float) -> None:
        self.client.put(self._k("keys", node_id),
                        self._sealed("keys", node_id, value=self._key_row(node_id, public_key, fingerprint, now)))

    @staticmethod
    def _key_row(node_id: str, public_key: bytes, fingerprint: str, now: float) -> dict[str, Any]:
        return {"node_id": node_id, "public_key": public_key.hex(), "fingerprint": fingerprint, "enrolled_at": now,
                "revoked_at": None}

    def revoke_node_key(self, node_id: str, now: float) -> bool:
        key = self._k("keys", node_id)
        for _ in range(_CAS_TRIES):
            kv = self.client.get(key)
            row = None if kv is None else self._decode(kv)
            if row is None:
                return False
            if row is _BAD:
                raise StoreError(f"{key}: {self.problems.get(key, 'unusable')}")
            if row["revoked_at"] is not None:
                return False
            revoked = self._sealed("keys", node_id, value={k: v for k, v in {**row, "revoked_at": now}.items()
                                                             if k != "sig"})
            ok, _ = self.client.txn([cmp_mod(key, kv.mod_revision)], [put_op(key, revoked)])
            if ok:
                return True
        raise StoreError(f"revoking {node_id!r}: the key kept changing ({_CAS_TRIES} tries)")

    def node_keys(self, since_seq: int = 0) -> list[dict[str, Any]]:
        out = []
        prefix = self._k("keys") + "/"
        for kv in self.client.range(prefix, prefix_end(prefix), min_mod_revision=since_seq + 1 if since_seq else 0):
            if kv.mod_revision <= since_seq:
                continue
            row = self._decode(kv)
            if row is _BAD:  # reported; taken when fixed (a fix is a newer revision)
                continue
            if row["node_id"] != unquote(kv.key[len(prefix):]):
                self.problems[kv.key] = f"holds the key of {row['node_id']!r}"
                log.error("etcd key %s: holds the key of %r; skipped", kv.key, row["node_id"])
                continue
            out.append({**{k: v for k, v in row.items() if k != "sig"}, "public_key": bytes.fromhex(row["public_key"]),
                        "seq": kv.mod_revision})
        out.sort(key=lambda r: r["seq"])
        return out

    def enrol_with_token(self, token_hash: str | None, node_id: str, public_key: bytes, fingerprint: str,
                         now: float, join: Any = None) -> str | None:
        """Spend one use of a token and store the key in one transaction (compare-and-swap
        on the token's revision: two replicas never spend the same use). ``join(customer)``
        runs once the token is verified, before the write (as for the SQLite store); if the
        token changed meanwhile and is no longer good, ``StoreError`` (the caller undoes)."""
        key_op = put_op(self._k("keys", node_id),
                        self._sealed("keys", node_id, value=self._key_row(node_id, public_key, fingerprint, now)))
        if token_hash is None:
            if join is not None:
                join(None)
            self.client.txn([], [key_op])
            return None
        tkey = self._k("tokens", token_hash)
        joined = False
        for _ in range(_CAS_TRIES):
            kv = self.client.get(tkey)
            why = None
            row = self._decode(kv) if kv is not None else None
            if row is None or row is _BAD:  # a token not sealed by the orchestrator key is no token
                why = "unknown enrolment token"
            elif row["node_id"] is not None and row["node_id"] != node_id:
                why = f"the enrolment token is for node {row['node_id']!r}"
            elif row["uses_left"] <= 0:
                why = "the enrolment token is used up"
            elif row["expires_at"] < now:
                why = "the enrolment token has expired"
            if why is not None:
                if joined:  # it was good a moment ago: another replica spent it meanwhile
                    raise StoreError(f"enrolment token refused while enrolling: {why}")
                return why
            spent = put_op(tkey, self._sealed("tokens", token_hash, value={
                k: v for k, v in {**row, "uses_left": row["uses_left"] - 1}.items() if k != "sig"}))
            customer = row.get("customer")
            if join is not None and not joined:
                join(customer)
                joined = True
            ops = [spent, key_op] + ([put_op(self._k("customers", node_id), self._sealed(
                "customers", node_id, value={"customer": customer}))] if customer else [])
            ok, _ = self.client.txn([cmp_mod(tkey, kv.mod_revision)], ops)
            if ok:
                return None
        raise StoreError("the enrolment token kept changing; try again")

    def record_action_ack(self, action_id: str, node_id: str, status: str, detail: str, now: float) -> None:
        self.client.put(self._k("acks", action_id, node_id), _j({
            "action_id": action_id, "node_id": node_id, "status": status, "detail": detail[:_ACK_DETAIL],
            "acked_at": now}))

    def action_acks(self) -> list[dict[str, Any]]:
        return sorted((row for _, row in self._rows("acks")), key=lambda r: r["acked_at"])

    def recent_action_acks(self, limit: int = 500) -> list[dict[str, Any]]:
        return self.action_acks()[-limit:] if limit > 0 else []

    def action_acks_of(self, node_id: str, action_ids: Iterable[str]) -> set[str]:
        found = set()
        for aid in dict.fromkeys(action_ids):
            if self.client.get(self._k("acks", aid, node_id)) is not None:
                found.add(aid)
        return found

    def prune_action_acks(self, tick: int, retention: int) -> int:
        keep = {row["id"] for row in self.actions() if row["state"] == "in_force" or row["last_tick"] > tick - retention}
        removed = 0
        for kv, row in self._rows("acks"):
            if row["action_id"] not in keep:
                ok, _ = self.client.txn([cmp_mod(kv.key, kv.mod_revision)], [delete_op(kv.key)])
                removed += ok
        return removed

    # -- node-signed acknowledgements and refusal reports (any replica) ---------------------

    def ensure_signing_tables(self) -> None:
        """Nothing to create in etcd (kept for the interface)."""

    def put_signed_ack(self, action_id: str, node_id: str, issued_at: int | None, envelope: dict[str, Any],
                       now: float) -> None:
        self.client.put(self._k("sacks", action_id, node_id), _j({"issued_at": issued_at, "envelope": envelope,
                                                                   "acked_at": now}))

    def signed_ack(self, action_id: str, node_id: str) -> dict[str, Any] | None:
        row = self._get("sacks", action_id, node_id)
        return None if row is None else row["envelope"]

    def prune_signed_acks(self) -> None:
        acked = {(row["action_id"], row["node_id"]) for _, row in self._rows("acks")}
        base = len(self._k("sacks")) + 1
        for kv in self.client.get_prefix(self._k("sacks") + "/", keys_only=True):
            aid, _, node = (unquote(x) for x in kv.key[base:].partition("/"))
            if (aid, node) not in acked:
                self.client.txn([cmp_mod(kv.key, kv.mod_revision)], [delete_op(kv.key)])

    def add_action_refusals(self, node_id: str, now: float, refusals: Iterable[tuple[str, str | None, str]],
                            keep: int) -> None:
        ops = []
        for i, (reason, action_id, detail) in enumerate(refusals):
            key = self._k("refusals", f"{time.time_ns():020d}-{i:04d}-{node_id}")
            ops.append(put_op(key, _j({"node_id": node_id, "reported_at": now, "reason": reason,
                                       "action_id": action_id, "detail": detail})))
        for start in range(0, len(ops), MAX_TXN_OPS):
            self.client.txn([], ops[start:start + MAX_TXN_OPS])
        keys = [kv.key for kv in self.client.get_prefix(self._k("refusals") + "/", keys_only=True)]
        if len(keys) > keep:  # keys sort by time: the oldest go
            self.client.txn([], [delete_op(keys[0], keys[len(keys) - keep])])

    def recent_action_refusals(self, limit: int = 200) -> list[dict[str, Any]]:
        prefix = self._k("refusals") + "/"
        kvs = self.client.range(prefix, prefix_end(prefix), limit=limit, descending=True)
        return [v for v in map(self._decode, reversed(kvs)) if v is not _BAD]
