"""Benchmark: what a follower's tick slot costs, reading etcd against following its watch.

A real 3-member etcd cluster on 127.0.0.1 holds ``--nodes`` node registrations,
``--actions`` actions in force and an acknowledgement for each. A follower's slot reads
the tick number, the node rows, the actions in force, the notices, the
acknowledgements and the trust rows (what ``Replica.follow`` reads). Timed ``--slots``
times each way, in the same run:

* **etcd**: every read goes to etcd (what followers did before);
* **watch**: the reads come from the copy one etcd watch keeps (``ha.watch``), each
  value decoded once per version; between slots ``--changes`` node rows are written,
  so the copy has events to apply (as it would while the leader ticks).

Reported: the mean slot of each and the ratio watch / etcd.

    python bench/bench_follower.py [--nodes 5000] [--actions 500] [--slots 20] [--changes 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wyneos_core.ha.etcd import put_op  # noqa: E402
from wyneos_core.ha.local import LocalEtcdCluster  # noqa: E402
from wyneos_core.ha.store import EtcdStateStore  # noqa: E402
from wyneos_core.ha.values import encode  # noqa: E402
from wyneos_core.ha.watch import MirrorClient, PrefixMirror  # noqa: E402

PREFIX = "/bench-follower/"


def _node(i: int, load: float) -> dict[str, Any]:
    return {"id": f"node-{i:06d}", "status": "online", "last_seen": 1.0e9, "load": load, "metadata": {"zone": "a"},
            "licence_ref": None, "fingerprint": None, "registered_at": 1.0e9, "isolated": False, "updated_tick": 1}


def _fill(store: EtcdStateStore, nodes: int, actions: int) -> None:
    ops = [put_op(store._k("nodes", f"node-{i:06d}"), encode(_node(i, 0.1))) for i in range(nodes)]
    for i in range(actions):
        aid = f"a{i:06d}"
        target = f"node-{i % max(1, nodes):06d}"
        ops.append(put_op(store._k("actions", aid), encode({
            "id": aid, "type": "gate_feature", "target": target, "origin": "bench", "reason": "bench",
            "severity": "warning", "params": {"feature": "x"}, "state": "in_force", "first_tick": 1, "last_tick": 1})))
        ops.append(put_op(store._k("acks", aid, target), encode({
            "action_id": aid, "node_id": target, "status": "applied", "detail": "", "acked_at": 1.0e9})))
    ops.append(put_op(store._k("tick"), "1"))
    for start in range(0, len(ops), 100):
        store.client.txn([], ops[start:start + 100])


def _slot(store: EtcdStateStore) -> int:
    """The reads of one follower slot; how many rows they gave."""
    store.last_tick()
    rows = store.node_rows()
    actions = store.actions("in_force")
    return len(rows) + len(actions) + len(store.notice_rows()) + len(store.action_acks()) + len(store.trust_rows())


def _timed(store: EtcdStateStore, slots: int, change: Any) -> tuple[float, int]:
    total, rows = 0.0, 0
    for n in range(slots):
        change(n)
        start = time.perf_counter()
        rows = _slot(store)
        total += time.perf_counter() - start
    return total / slots, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--actions", type=int, default=500)
    ap.add_argument("--slots", type=int, default=20)
    ap.add_argument("--changes", type=int, default=50, help="node rows written between slots")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalEtcdCluster(Path(tmp) / "etcd", 3, election_ms=500).start()
        try:
            store = EtcdStateStore.open(cluster.endpoints, PREFIX, timeout=10.0)
            _fill(store, args.nodes, args.actions)

            def change(n: int) -> None:
                ops = [put_op(store._k("nodes", f"node-{(n * args.changes + i) % args.nodes:06d}"),
                              encode(_node(i, 0.2 + n / 1000))) for i in range(args.changes)]
                for start in range(0, len(ops), 100):
                    store.client.txn([], ops[start:start + 100])

            direct, rows = _timed(store.reopen(), args.slots, change)
            mirror = PrefixMirror(store.client, PREFIX)
            mirror.start()
            deadline = time.monotonic() + 60
            while not mirror.synced and time.monotonic() < deadline:
                time.sleep(0.05)
            followed = store.reopen()
            followed.client = MirrorClient(store.client, mirror)  # type: ignore[assignment]
            followed.memo = {}

            def change_and_wait(n: int) -> None:
                change(n)
                target = store.client.call("kv/range", {"key": "eA==", "limit": 1})["header"]["revision"]
                while mirror.revision < int(target) and time.monotonic() < deadline + 120:
                    time.sleep(0.002)  # the watch has the writes (not timed)

            watched, rows_w = _timed(followed, args.slots, change_and_wait)
            mirror.stop()
            store.close()
        finally:
            cluster.stop()
    result = {"nodes": args.nodes, "actions": args.actions, "slots": args.slots, "changes": args.changes,
              "rows": rows, "rows_watch": rows_w, "etcd_ms": round(direct * 1000, 2),
              "watch_ms": round(watched * 1000, 2), "ratio": round(watched / direct, 3) if direct else None,
              "events": mirror.events, "reloads": mirror.reloads}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"follower slot, {args.nodes} nodes, {args.actions} actions in force, {args.changes} rows changed "
              f"between slots: etcd reads {result['etcd_ms']} ms, watch copy {result['watch_ms']} ms "
              f"(ratio {result['ratio']}); watch events {mirror.events}, reloads {mirror.reloads}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
