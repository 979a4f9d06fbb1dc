"""Signed heartbeats (a per-message Ed25519 signature): verified on several threads for
big batches, then the replay, rate, body and registry checks, then queued in one step.

``SignedIntake`` is a part of ``core.Service`` (its ``verify_all`` and ``accept``); the
functions below touch no state and run on the verifier threads."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from wyneos_core.builtin.trust import record_refusals
from wyneos_core.intake import CheckedHeartbeat, QueueFull
from wyneos_core.model import Heartbeat, Observation
from wyneos_core.registry import HeartbeatError
from wyneos_core.service.identity import AuthError, KeyCache, SignedItem, verify_item
from wyneos_core.service.outcomes import HEARTBEAT_PATH, ItemResult, Unprocessable, Verified, json_object
from wyneos_core.service.peer import MAX_OBSERVATION_AGE

if TYPE_CHECKING:
    from wyneos_core.service.core import Service

__all__ = ["SignedIntake", "observations", "verify_chunk"]

_PARALLEL_FROM = 64  # batches at least this big are verified on several threads


class SignedIntake:
    """``Service.verify_all`` and ``Service.accept``: signed heartbeats (a base of ``Service``)."""


    def verify_all(self: Service, items: Sequence[SignedItem], now: float) -> list[ItemResult | Verified]:
        """Verify signatures and parse bodies, on several threads for big batches.

        One result per item: a refusal, or a ``Verified`` for ``accept``. The threads
        overlap: while one waits in libsodium (GIL released) another parses.
        """
        if len(items) < _PARALLEL_FROM or self.verify_threads < 2:
            return verify_chunk(items, self.keys)
        size = math.ceil(len(items) / self.verify_threads)
        futures = [self.pool.submit(verify_chunk, items[i:i + size], self.keys) for i in range(size, len(items), size)]
        out = verify_chunk(items[:size], self.keys)  # the calling thread takes the first share
        for f in futures:
            out.extend(f.result())
        return out

    def accept(self: Service, items: Sequence[SignedItem], verified: Sequence[ItemResult | Verified],
               now: float) -> list[ItemResult]:
        """Replay checks, then body and registry checks, then queueing (one result each).

        A body problem found while verifying is reported only for an item that passed
        the replay checks, so a replay is a 409 whatever its body; registry checks run
        only for fresh items (a replay never touches a node).
        """
        results: list[ItemResult | None] = [None] * len(items)
        claims: list[tuple[int, Verified]] = []
        window = self.nonces
        low, high = now - window.window, now + window.window
        allow = self.heartbeat_limit.allow
        seen = window._seen  # read only: a dict lookup under the GIL
        for i, v in enumerate(verified):
            if type(v) is ItemResult:
                results[i] = v
                continue
            ts = v.ts  # type: ignore[union-attr]
            if not (low <= ts <= high and ts >= window.not_before):
                try:
                    window.check_time(ts, now)
                except AuthError as exc:
                    results[i] = ItemResult(exc.status, exc.code, exc.reason, items[i].node_id)
                    continue
            # the rate is checked before the nonce is remembered (a flood costs no memory),
            # but a replay (refused by the claim below) takes nothing from the node's budget
            if (items[i].node_id, items[i].nonce) not in seen and not allow(items[i].node_id, now):
                results[i] = ItemResult(429, "rate_limited", f"more than {self.settings.heartbeat_rate:g} heartbeats/s "
                                        f"(burst {self.settings.heartbeat_burst}) from this node "
                                        "(service.heartbeat_rate)", items[i].node_id)
                continue
            claims.append((i, v))  # type: ignore[arg-type]
        outcomes = window.claim_many(((items[i].node_id, items[i].nonce, v.ts) for i, v in claims), now)
        heartbeats: list[tuple[int, Heartbeat]] = []
        check = self.orchestrator.registry.check
        orch_now = self.orchestrator.clock()
        for (i, v), refused in zip(claims, outcomes):
            node_id = items[i].node_id
            if refused is not None:
                results[i] = ItemResult(refused.status, refused.code, refused.reason, node_id)
            elif v.problem is not None:
                results[i] = v.problem
            else:
                try:
                    check(v.heartbeat, orch_now)
                except HeartbeatError as exc:
                    results[i] = ItemResult(422, "invalid", exc.reason, node_id, exc.field)
                    continue
                heartbeats.append((i, v.heartbeat))  # type: ignore[arg-type]
        if heartbeats and self.ha is not None and not self.ha.leading:  # a follower: on to the leader
            self.ha.forward([items[i] for i, _ in heartbeats])
            for i, hb in heartbeats:
                results[i] = ItemResult(202, "accepted", "", hb.node_id)
        elif heartbeats:
            try:
                self.orchestrator.intake.put_many(hb for _, hb in heartbeats)
            except QueueFull as exc:
                for i, hb in heartbeats:
                    window.release(hb.node_id, items[i].nonce)
                    results[i] = ItemResult(503, "queue_full", str(exc), hb.node_id)
            else:
                for i, hb in heartbeats:
                    results[i] = ItemResult(202, "accepted", "", hb.node_id)
        final = [r if r is not None else ItemResult(500, "internal", "not processed") for r in results]
        # refused replays and clock problems count against the node's trust, only when the
        # node's own signature checked out: anyone can send junk naming a node (a bad
        # signature, an unknown key) and it says nothing about that node
        refused = [r.node_id for r, v in zip(final, verified) if type(v) is not ItemResult
                   and r.status in (401, 403, 409) and r.code != "window_full"
                   and r.node_id in self.orchestrator.registry]
        if refused:
            record_refusals(self.orchestrator, refused)
        tally: dict[str, int] = {}
        for r in final:
            tally[r.code] = tally.get(r.code, 0) + 1
        for code, count in tally.items():
            self.metrics.heartbeats.labels(code).inc(count)
        return final



_FIELDS = frozenset(("node_id", "timestamp", "load", "metadata", "licence_ref", "observations", "metrics"))
_OBSERVATION_FIELDS = frozenset(("subject", "reachable", "rtt_ms", "last_seq", "age_s"))
_MAX_OBSERVATIONS = 64  # read at most; heartbeat.max_observations is checked with the heartbeat


def _heartbeat(item: SignedItem, ts: float, fp: str | None) -> Heartbeat:
    """The heartbeat in a verified item's body; ``AuthError`` / ``Unprocessable`` when bad."""
    body = json_object(item.body)
    node_id = body.get("node_id", item.node_id)
    if node_id != item.node_id:
        raise AuthError(403, f"heartbeat for {node_id!r} signed by {item.node_id!r}", "node_mismatch")
    if not _FIELDS.issuperset(body):
        unknown = sorted(set(body) - _FIELDS)
        raise Unprocessable(unknown[0], "unknown field (known: node_id, timestamp, load, metadata, licence_ref, "
                                          "observations, metrics)")
    metadata = body.get("metadata")
    # made as checked: ``Service.accept`` queues it only after ``Registry.check`` passed
    return CheckedHeartbeat(node_id, body.get("timestamp", ts), body.get("load"), {} if metadata is None else metadata,
                            fp, body.get("licence_ref"), observations(node_id, body.get("observations")),
                            body.get("metrics"))


def observations(node_id: str, raw: Any) -> tuple[Observation, ...]:
    """The witness observations of a heartbeat body (signed with it: ``signed=True``)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > _MAX_OBSERVATIONS:
        raise Unprocessable("observations", f"expected a list of at most {_MAX_OBSERVATIONS} observations")
    out = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not _OBSERVATION_FIELDS.issuperset(item) or "subject" not in item \
                or "reachable" not in item:
            raise Unprocessable(f"observations[{index}]", "expected {subject, reachable, rtt_ms, last_seq, age_s}")
        age = item.get("age_s", 0.0)
        if isinstance(age, bool) or not isinstance(age, (int, float)) or not 0 <= age < 1e9:  # also catches nan
            raise Unprocessable(f"observations[{index}].age_s", "expected seconds >= 0")
        if age > MAX_OBSERVATION_AGE:
            continue  # stale: what the witness saw then says nothing about now
        out.append(Observation(node_id, item["subject"], item["reachable"], item.get("rtt_ms"), item.get("last_seq"),
                               True))
    return tuple(out)


def verify_chunk(items: Sequence[SignedItem], keys: KeyCache) -> list[ItemResult | Verified]:
    """Signature, then body, of each item (runs on a verifier thread; touches no state)."""
    out: list[ItemResult | Verified] = []
    for item in items:
        try:
            ts = verify_item(item, "POST", HEARTBEAT_PATH, keys, 0.0)
        except AuthError as exc:
            out.append(ItemResult(exc.status, exc.code, exc.reason, str(item.node_id)[:128]))
            continue
        try:
            out.append(Verified(ts, _heartbeat(item, ts, keys.fingerprint(item.node_id))))
        except AuthError as exc:
            out.append(Verified(ts, None, ItemResult(exc.status, exc.code, exc.reason, item.node_id)))
        except Unprocessable as exc:
            out.append(Verified(ts, None, ItemResult(422, "invalid", exc.reason, item.node_id, exc.field)))
    return out