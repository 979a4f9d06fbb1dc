"""Benchmark: replicas on etcd - failover time, and decisions committed per second.

1. **Failover time**: a real 3-member etcd cluster on 127.0.0.1 and three `wyneos
   serve` replicas (child processes). The leader is killed with SIGKILL (kill -9) at a
   random moment, ``--kills`` times (the killed replica is started again as a
   follower). Failover time = from the kill to the start of the first tick the new
   leader commits (each committed tick carries its start time and writer in etcd, so
   nothing is polled for this). Reported: p50 and max, and the budget the issue sets,
   lease + 2 ticks. Expected: the rest of the dead leader's lease (it was renewed at
   most one retry period before the kill), plus etcd's lease-expiry check (every
   0.5 s), plus up to one retry period of campaigning and one tick interval.

2. **Decisions committed per second**: the same orchestrator, one plugin proposing
   ``--decisions`` new actions each tick (each one decided, carried and committed; those
   of the tick before are cleared), ``--ticks`` ticks, writing through the etcd store
   (3 members, fenced transactions) against the SQLite store (one local file, WAL) in
   the same run. The ratio etcd / SQLite is what to watch.

    python bench/bench_failover.py [--kills 10] [--lease 2] [--renew S] [--retry S] [--tick 0.25]
                                   [--ticks 200] [--decisions 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wyneos_core import hookimpl  # noqa: E402
from wyneos_core.config import load_config  # noqa: E402
from wyneos_core.ha.local import LocalEtcdCluster, ReplicaProcess  # noqa: E402
from wyneos_core.ha.store import EtcdStateStore  # noqa: E402
from wyneos_core.model import Action, Severity  # noqa: E402
from wyneos_core.store import StateStore  # noqa: E402
from wyneos_core.tick import Orchestrator  # noqa: E402

CONFIG = """\
cluster: bench
tick: {{interval: {tick}}}
heartbeat: {{interval: {tick}, stale_after: 30, offline_after: 60}}
mesh: {{topology: star}}
plugins: {{disable: [licence], settings: {{service: {{port: 0}}}}}}
state: {{backend: etcd, etcd: {{lease_duration: {lease}, renew_deadline: {renew}, retry_period: {retry},
         timeout: 1}}}}
report: {{json_path: null, stdout: none}}
"""


def _wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def _leader(replicas: list[ReplicaProcess]) -> ReplicaProcess | None:
    for r in replicas:
        h = r.health()
        if h is not None and h.get("role") == "leader" and h.get("deciding"):
            return r
    return None


def failover(work: Path, kills: int, lease: float, tick: float, seed: int, renew: float | None = None,
             retry: float | None = None) -> dict[str, Any]:
    renew = renew or round(lease * 2 / 3, 3)
    retry = retry or round(lease / 8, 3)
    work.mkdir(parents=True, exist_ok=True)
    config = work / "config.yaml"
    config.write_text(CONFIG.format(tick=tick, lease=lease, renew=renew, retry=retry))
    rng = random.Random(seed)
    times: list[float] = []
    with LocalEtcdCluster(work / "etcd", 3, election_ms=500) as etcd:
        replicas = [ReplicaProcess(f"r{i}", config, etcd.url, work) for i in range(3)]
        store = EtcdStateStore.open(etcd.endpoints, "/wyneos/bench/", timeout=2.0)
        try:
            for r in replicas:
                r.start()
            for _ in range(kills):
                leader = _wait("a leader", lambda: _leader(replicas), 60)
                before = store.last_tick()
                _wait("a tick of this leader", lambda: store.last_tick() > before, 60)
                time.sleep(rng.uniform(0.0, 2 * tick))  # a random moment of its tick
                killed_at = time.time()
                leader.kill()
                row = _wait("the new leader's first tick", lambda: next(
                    (t for t in sorted(store.tick_rows(), key=lambda t: t["tick"])
                     if t["leader"] != leader.name and t["started_at"] >= killed_at), None), 120)
                times.append(row["started_at"] - killed_at)
                leader.start()
        finally:
            for r in replicas:
                r.stop()
            store.close()
    return {"kills": len(times), "lease_s": lease, "renew_deadline_s": renew, "retry_s": retry, "tick_s": tick,
            "budget_s": lease + 2 * tick, "p50_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3), "min_s": round(min(times), 3), "times_s": [round(t, 3) for t in times]}


class Proposer:
    """Proposes ``count`` new actions each tick (new params: new decisions)."""

    __wyneos_name__ = "bench-proposer"

    def __init__(self, count: int) -> None:
        self.count = count

    @hookimpl
    def wyneos_enforcement(self, ctx: Any, nodes: Any) -> list[Action]:
        return [Action("degrade", f"n{i}", "bench", "bench-proposer", Severity.WARNING, {"round": ctx.tick})
                for i in range(self.count)]


def decisions(work: Path, etcd: LocalEtcdCluster | None, ticks: int, per_tick: int) -> dict[str, Any]:
    nodes = ", ".join(f"{{id: n{i}}}" for i in range(per_tick))
    cfg = work / "decide.yaml"
    cfg.write_text(f"cluster: bench\nnodes: [{nodes}]\nplugins: {{disable: [licence]}}\nmesh: {{topology: star}}\n"
                   "report: {stdout: none, json_path: null}\n")
    if etcd is None:
        store: Any = StateStore.open(work / "decide.db")
    else:
        store = EtcdStateStore.open(etcd.endpoints, f"/wyneos/decide-{time.time_ns()}/")
        lease, _ = store.client.grant(60)
        store.fence.token = store.client.put(store.fence.key, '{"id": "bench"}', lease)
    orch = Orchestrator(load_config(cfg), plugins=[Proposer(per_tick)], load_entrypoints=False, store=store)
    orch.tick()  # warm-up: first tick writes every node row
    t0 = time.perf_counter()
    for _ in range(ticks):
        report = orch.tick()
        if report.errors:
            raise RuntimeError(f"tick failed: {report.errors[0]}")
    seconds = time.perf_counter() - t0
    committed = sum(1 for e in store.action_events(since_tick=2) if e["state"] == "approved")
    orch.stop()
    return {"backend": "sqlite" if etcd is None else "etcd", "ticks": ticks, "decisions": committed,
            "seconds": round(seconds, 4), "per_s": round(committed / seconds, 1) if seconds > 0 else 0.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--lease", type=float, default=2.0, help="lease duration (seconds)")
    ap.add_argument("--renew", type=float, help="renew deadline (default: 2/3 of the lease)")
    ap.add_argument("--retry", type=float, help="retry period (default: 1/8 of the lease)")
    ap.add_argument("--tick", type=float, default=0.25)
    ap.add_argument("--ticks", type=int, default=200)
    ap.add_argument("--decisions", type=int, default=20, help="new decisions per tick")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--json", action="store_true", help="print one JSON line at the end")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="wyneos-bench-failover-"))
    result: dict[str, Any] = {}
    result["failover"] = fo = failover(work / "fo", args.kills, args.lease, args.tick, args.seed, args.renew, args.retry)
    print(f"failover over {fo['kills']} kills (lease {fo['lease_s']:g}s, renew {fo['renew_deadline_s']:g}s, "
          f"retry {fo['retry_s']:g}s, tick {fo['tick_s']:g}s): p50 {fo['p50_s']:.2f}s, max {fo['max_s']:.2f}s "
          f"(budget lease + 2 ticks = {fo['budget_s']:.2f}s)", flush=True)
    (work / "dec").mkdir()
    sqlite = decisions(work / "dec", None, args.ticks, args.decisions)
    with LocalEtcdCluster(work / "dec" / "etcd", 3, election_ms=500) as etcd:
        on_etcd = decisions(work / "dec", etcd, args.ticks, args.decisions)
    result["decisions"] = {"sqlite": sqlite, "etcd": on_etcd,
                           "etcd_over_sqlite": round(on_etcd["per_s"] / sqlite["per_s"], 3) if sqlite["per_s"] else None}
    for r in (sqlite, on_etcd):
        print(f"decisions committed, {r['backend']:<6}: {r['decisions']} in {r['ticks']} ticks, {r['seconds']:.2f}s, "
              f"{r['per_s']:.0f}/s", flush=True)
    print(f"etcd / sqlite: {result['decisions']['etcd_over_sqlite']}", flush=True)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
