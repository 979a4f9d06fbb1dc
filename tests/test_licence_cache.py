"""The licence cache gives the results a full check would give, tick after tick.

A cached engine (default-like ``cache_ttl``, results kept and reused when a source hands
back the same document) and a reference engine whose cache is emptied before every tick
(so every node is looked up and checked from scratch) see the same random cluster: nodes
change licence, fingerprint, features, customer and status; the source swaps, suspends,
renews, replays and breaks documents; licences are revoked; licences become valid,
expire and leave their grace; the clock moves by random steps. Every result of every
tick must be equal field by field.
"""

from __future__ import annotations

import json
import random
from itertools import pairwise
from pathlib import Path

import pytest

from tests.test_licence_support import DAY, T0
from wyneos_core.licensing.document import issue_licence
from wyneos_core.licensing.engine import LicenceEngine
from wyneos_core.licensing.keys import KeyRing, generate_key
from wyneos_core.licensing.ledger import Ledger
from wyneos_core.licensing.revocation import RevocationList
from wyneos_core.licensing.settings import LicenceSettings
from wyneos_core.licensing.sources import LicenceRecord
from wyneos_core.model import Node, NodeStatus


class MemorySource:
    """Node id -> record, with a ``generation`` bumped on every change (like the file source)."""

    name = "mem"

    def __init__(self) -> None:
        self.records: dict[str, LicenceRecord] = {}
        self.generation = 0

    def put(self, node_id: str, record: LicenceRecord | None) -> None:
        if record is None:
            self.records.pop(node_id, None)
        else:
            self.records[node_id] = record
        self.generation += 1

    def lookup(self, node: Node, now: float) -> LicenceRecord | None:
        return self.records.get(node.id)

    def lookup_many(self, nodes: list[Node], now: float) -> dict[str, LicenceRecord | None]:
        return {n.id: self.records.get(n.id) for n in nodes}


def _engine(tmp_path: Path, key, source: MemorySource, ttl: float) -> LicenceEngine:
    settings = LicenceSettings(sources=["mem"], customer="acme", cache_ttl=ttl, rollback_hold=30.0,
                               tiers={"pro": ["analytics", "core"], "basic": ["core"]},
                               revocations=tmp_path / "revocations.json")
    return LicenceEngine(settings, KeyRing([key.public_key()]), {"mem": source}, Ledger(None))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cached_results_equal_full_checks_under_random_changes(tmp_path, seed):
    rng = random.Random(seed)
    key = generate_key()

    def doc(lid: str, issued: float = T0 - DAY, **fields) -> bytes:
        fields.setdefault("expires", T0 + 365 * DAY)
        return json.dumps(issue_licence(key, licence_id=lid, customer=fields.pop("customer", "acme"),
                                        issued=issued, **fields)).encode()

    documents = {
        "plain": doc("plain"),
        "pro": doc("pro", tier="pro", features=["export"]),
        "seats": doc("seats", seats=3),
        "soon-expired": doc("soon-expired", expires=T0 + 200, grace_days=0),
        "grace": doc("grace", expires=T0 + 100, grace_days=1),
        "later": doc("later", not_before=T0 + 150),
        "other-customer": doc("other-customer", customer="globex"),
        "renewed-old": doc("renewed", issued=T0 - 2 * DAY),
        "renewed-new": doc("renewed", issued=T0 - DAY),
        "garbage": b"{not json",
    }
    names = sorted(documents)
    source = MemorySource()
    cached, reference = _engine(tmp_path, key, source, 60.0), _engine(tmp_path, key, source, 60.0)
    nodes = [Node(f"n{i:02d}", registered_at=T0 + i) for i in range(40)]
    for node in nodes:
        source.put(node.id, LicenceRecord(documents[rng.choice(names)], "mem", origin=node.id))
    revocations = RevocationList()
    now = T0
    reused = 0
    for tick in range(60):
        for _ in range(rng.randrange(4)):  # what may change between two ticks
            node = rng.choice(nodes)
            what = rng.randrange(8)
            if what == 0:
                node.fingerprint = rng.choice([None, "SHA256:aa", "SHA256:bb"])
            elif what == 1:
                node.metadata = {**node.metadata, "features": rng.choice([[], ["core"], ["analytics"]])}
            elif what == 2:
                node.metadata["customer"] = rng.choice(["acme", "globex"])  # mutated in place, too
            elif what == 3:
                node.status = rng.choice([NodeStatus.ONLINE, NodeStatus.OFFLINE])
            elif what == 4:
                name = rng.choice(names)
                source.put(node.id, LicenceRecord(documents[name], "mem", origin=node.id,
                                                  status=rng.choice(["active", "active", "suspended"])))
            elif what == 5:
                source.put(node.id, None)
            elif what == 6 and tick % 7 == 3:
                revocations = revocations.revoke(rng.choice(["plain", "pro", "seats", "grace"]), now=now)
                revocations.save(tmp_path / "revocations.json", key)
            elif what == 7:
                node.metadata = {k: v for k, v in node.metadata.items() if k != "features"}
        now += rng.choice([1.0, 6.0, 6.0, 13.0, 40.0])
        for engine in (cached, reference):
            engine.begin(now)
        reference.forget()  # nothing cached: every node looked up and checked afresh
        got, want = cached.validate(nodes, now), reference.validate(nodes, now)
        assert reference.stats["reused"] == 0 and reference.stats["cached"] == 0
        reused += cached.stats["reused"]
        for g, w in zip(got, want):
            assert g == w, f"seed {seed}, tick {tick}, node {w.node_id}"
        for feature in ("core", "analytics", "export"):
            assert [cached.entitled(n.id, feature) for n in nodes] == \
                [reference.entitled(n.id, feature) for n in nodes]
    assert reused > 0  # the comparison covered results kept from an earlier tick


def test_refreshes_are_spread_evenly_and_within_the_ttl(tmp_path):
    key = generate_key()
    source = MemorySource()
    engine = _engine(tmp_path, key, source, 300.0)
    record = LicenceRecord(json.dumps(issue_licence(key, licence_id="a", customer="acme", issued=T0 - DAY,
                                                    expires=T0 + 365 * DAY)).encode(), "mem")
    nodes = [Node(f"node-{i:05d}") for i in range(3000)]
    for node in nodes:
        source.records[node.id] = record
    asked_at: dict[str, list[float]] = {n.id: [] for n in nodes}
    per_tick = []
    now = T0
    for _ in range(160):  # 960 s: three cache lifetimes and more
        engine.begin(now)
        before = engine.cached()
        engine.validate(nodes, now)
        per_tick.append(engine.stats["looked_up"])
        for node_id, fresh in engine.cached().items():
            if before.get(node_id) != fresh:
                asked_at[node_id].append(now)
        now += 6.0
    later = per_tick[60:]  # after the first lifetime, each tick asks for about 3000 * 6 / 240 nodes
    assert max(later) <= 75 * 1.6 and min(later) >= 75 * 0.4, later
    for times in asked_at.values():
        gaps = [b - a for a, b in pairwise(times)]
        assert gaps and all(60 <= g <= 300 for g in gaps)  # never longer than cache_ttl, never a churn


def test_the_slot_cache_shares_what_checks_made_and_lets_go_of_what_no_slot_has():
    """Slots whose checks made the same outcome (record, result, until, seat, verdicts)
    share one entry; entries no slot has any more are let go, the others read the same;
    renumbered result codes reach every slot, and a result gone is named."""
    import numpy as np

    from wyneos_core.licensing.slots import SlotCache
    from wyneos_core.nodetable import NodeTable

    table = NodeTable()
    slots = np.array([table.add(f"n{i}", registered_at=0.0) for i in range(3)], dtype=np.int64)
    c = SlotCache(table)
    c.fit()
    assert c.codes(slots).tolist() == [-1, -1, -1] and c.made(int(slots[0])) == (None, float("inf"), 0)
    record = object()
    c.set(int(slots[0]), record, 5, 100.0, -1, 1)
    c.set(int(slots[1]), record, 5, 100.0, -1, 1)
    c.set(int(slots[2]), None, 7, float("inf"), 3, 1)
    assert c.entry[slots[0]] == c.entry[slots[1]] and c.entries.count == 2
    for verdicts in range(2, 2000):  # outcomes nobody keeps
        c.set(int(slots[2]), None, 7, float("inf"), 3, verdicts)
    assert c.entries.count == 2000
    c.compact(slots)
    assert c.entries.count == 2
    assert c.codes(slots).tolist() == [5, 5, 7] and c.seat_codes(slots).tolist() == [-1, -1, 3]
    assert c.made(int(slots[0]))[0] is record and c.made(int(slots[2])) == (None, float("inf"), 1999)
    remap = np.full(8, -1, dtype=np.int64)
    remap[5] = 0
    assert c.recode(remap).tolist() == [int(slots[2])]
    assert c.codes(slots).tolist() == [0, 0, -1]
    c.set(int(slots[2]), record, 0, 100.0, -1, 1)  # the same outcome as the others again: their entry
    assert c.entry[slots[2]] == c.entry[slots[0]] and c.codes(slots).tolist() == [0, 0, 0]
