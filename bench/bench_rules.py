"""Benchmark: ruleset engines against a hand-written Python predicate loop, same data, same run.

For 10k and 100k nodes x 50 rules, times (best of ``--repeat``):

* baseline: 50 hand-written Python predicates, each run over all nodes in a list
  comprehension (what a programmer would write for the same rules, missing values
  handled the obvious way);
* native: the same 50 rules as YAML conditions, compiled by the native engine.

It does so for two sets of 50 rules: "fast shapes" (field or metadata key against a
literal, ``in`` a list, boolean logic: the shapes with specialised closures) and
"mixed" (35 of those and 15 with helpers and nested data: version comparison, globs,
regular expressions, nested metadata, lists, ``violated``).

The ratio native / baseline is the figure of merit (target: at most 1.5). Both must
select exactly the same (rule, node) pairs, which is checked. Then the durable engine
on 10k nodes (``--durable-nodes``): its cost per tick and whether it lost any firing
compared with the native engine (past 1,024 nodes, where durable-rules' per-session
limits bite).

    python bench/bench_rules.py                 # full run
    python bench/bench_rules.py --quick         # 2k nodes, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any, Callable

from wyneos_core.model import LicenceResult, Node, NodeStatus
from wyneos_core.rules.durable import DurableEngine
from wyneos_core.rules.expr import parse
from wyneos_core.rules.interp import NO_LICENCE, EvalEnv, cluster_summary
from wyneos_core.rules.native import NativeEngine

REGIONS = ["eu-west", "eu-central", "us-east", "ap-south"]


def make_cluster(size: int, seed: int = 1) -> tuple[list[Node], list[LicenceResult], EvalEnv]:
    rng = random.Random(seed)
    now = 1_700_000_000.0
    nodes, lics = [], []
    for i in range(size):
        md: dict[str, Any] = {}
        if rng.random() < 0.95:
            md["region"] = rng.choice(REGIONS)
        if rng.random() < 0.9:
            md["version"] = rng.choice(["2.3.9", "2.4.0", "2.4.1", "2.5.0"])
        if rng.random() < 0.5:
            md["replicas"] = rng.randint(0, 5)
        if rng.random() < 0.3:
            md["gpu"] = rng.random() < 0.5
        if rng.random() < 0.7:
            md["hw"] = {"cpu": {"cores": rng.choice([2, 4, 8, 16])}, "gpu": rng.random() < 0.3}
        if rng.random() < 0.6:
            md["tags"] = rng.sample(["edge", "core", "batch", "canary", "pci"], rng.randint(0, 4))
        node = Node(f"node-{i:06d}", rng.choice([NodeStatus.ONLINE] * 8 + [NodeStatus.STALE, NodeStatus.OFFLINE]),
                    last_seen=now - rng.uniform(0, 60), load=None if rng.random() < 0.05 else rng.random(),
                    metadata=md, isolated=rng.random() < 0.02)
        nodes.append(node)
        lics.append(NO_LICENCE if rng.random() < 0.05 else LicenceResult(
            node.id, rng.random() < 0.95, "ok", features=("gpu",) if rng.random() < 0.5 else ()))
    violated = {"load-ceiling": {n.id for n in nodes if n.load is not None and n.load > 0.9}}
    return nodes, lics, EvalEnv(now, cluster_summary(nodes, now), violated)


def rules() -> list[tuple[str, Callable[[Node, LicenceResult], bool]]]:
    """50 rules: (YAML condition, the hand-written predicate for the same thing)."""
    out: list[tuple[str, Callable[[Node, LicenceResult], bool]]] = []
    for k in range(10):
        t = 0.5 + k * 0.05
        out.append((f"node.load > {t}", lambda n, l, t=t: n.load is not None and n.load > t))
    for region in REGIONS:
        out.append((f"node.metadata.region == '{region}'",
                    lambda n, l, r=region: n.metadata.get("region") == r))
        out.append((f"node.metadata.region != '{region}'",
                    lambda n, l, r=region: (v := n.metadata.get("region")) is not None and v != r))
    for s in ("online", "stale", "offline"):
        out.append((f"node.status == '{s}'", lambda n, l, s=NodeStatus(s): n.status is s))
    for k in range(5):
        out.append((f"node.metadata.replicas < {k}",
                    lambda n, l, k=k: type(v := n.metadata.get("replicas")) is int and v < k))
    out.append(("node.metadata.region is missing", lambda n, l: n.metadata.get("region") is None))
    out.append(("node.metadata.version is missing", lambda n, l: n.metadata.get("version") is None))
    out.append(("node.metadata.gpu == True", lambda n, l: n.metadata.get("gpu") is True))
    out.append(("node.isolated", lambda n, l: n.isolated))
    out.append(("not licence.valid", lambda n, l: not l.valid))
    out.append(("licence.reason == 'no_licence'", lambda n, l: l.reason == "no_licence"))
    out.append(("node.metadata.region in ['eu-west', 'eu-central']",
                lambda n, l: n.metadata.get("region") in ("eu-west", "eu-central")))
    out.append(("node.metadata.region not in ['eu-west', 'eu-central']",
                lambda n, l: (v := n.metadata.get("region")) is not None and v not in ("eu-west", "eu-central")))
    for k in range(4):
        t = 0.3 + 0.1 * k
        out.append((f"node.load > {t} and node.status == 'online'",
                    lambda n, l, t=t: n.load is not None and n.load > t and n.status is NodeStatus.ONLINE))
    for k in range(4):
        t = 0.2 + 0.1 * k
        out.append((f"node.load < {t} or node.isolated",
                    lambda n, l, t=t: (n.load is not None and n.load < t) or n.isolated))
    out.append(("not (node.metadata.region == 'us-east')", lambda n, l: n.metadata.get("region") != "us-east"))
    out.append(("node.metadata.replicas >= 2 and node.metadata.region == 'eu-west'",
                lambda n, l: type(v := n.metadata.get("replicas")) is int and v >= 2
                and n.metadata.get("region") == "eu-west"))
    for k in range(3):
        age = 10 + 20 * k
        out.append((f"heartbeat_age(node) > {age}",
                    lambda n, l, age=age, now=None: n.last_seen is not None and NOW[0] - n.last_seen > age))
    out.append(("entitled(licence, 'gpu')", lambda n, l: l.valid and "gpu" in l.features))
    out.append(("node.metadata.gpu == False", lambda n, l: n.metadata.get("gpu") is False))
    out.append(("node.load is missing", lambda n, l: n.load is None))
    assert len(out) == 50, len(out)
    return out


NOW = [0.0]
VIOLATED: dict[str, set[str]] = {}


def _version(v: object) -> tuple[int, ...] | None:
    if not isinstance(v, str):
        return None
    try:
        return tuple(int(p) for p in v.split("."))
    except ValueError:
        return None


def mixed_rules() -> list[tuple[str, Callable[[Node, LicenceResult], bool]]]:
    """50 rules as real rulesets mix them: 35 of the shapes above and 15 with helpers
    and nested data that have no specialised closure (versions, globs, regular
    expressions, nested metadata, lists, ``violated``)."""
    import fnmatch
    import re

    eu_us = re.compile(r"^(eu|us)-[a-z]+$")
    ends7 = re.compile(r"7$")
    out = rules()[:35]

    def md(n: Node, *path: str) -> Any:
        v: Any = n.metadata
        for p in path:
            if not isinstance(v, dict):
                return None
            v = v.get(p)
        return v

    def cores(n: Node) -> Any:
        v = md(n, "hw", "cpu", "cores")
        return v if type(v) is int else None

    out += [
        ("version_at_least(node.metadata.version, '2.4.0')",
         lambda n, l: (v := _version(md(n, "version"))) is not None and v >= (2, 4, 0)),
        ("version_at_least(node.metadata.version, '2.5.0')",
         lambda n, l: (v := _version(md(n, "version"))) is not None and v >= (2, 5, 0)),
        ("version_below(node.metadata.version, '2.4.1')",
         lambda n, l: (v := _version(md(n, "version"))) is not None and v < (2, 4, 1)),
        ("matches(node.id, 'node-00*')", lambda n, l: fnmatch.fnmatchcase(n.id, "node-00*")),
        ("matches(node.metadata.region, 'eu-*')",
         lambda n, l: isinstance(r := md(n, "region"), str) and r.startswith("eu-")),
        ("regex(node.metadata.region, '^(eu|us)-[a-z]+$')",
         lambda n, l: isinstance(r := md(n, "region"), str) and eu_us.search(r) is not None),
        ("regex(node.id, '7$')", lambda n, l: ends7.search(n.id) is not None),
        ("node.metadata.hw.cpu.cores >= 8", lambda n, l: (c := cores(n)) is not None and c >= 8),
        ("node.metadata.hw.cpu.cores < 4", lambda n, l: (c := cores(n)) is not None and c < 4),
        ("node.metadata.hw.gpu == True", lambda n, l: md(n, "hw", "gpu") is True),
        ("has(node.metadata.hw)", lambda n, l: md(n, "hw") is not None),
        ("length(node.metadata.tags) > 2", lambda n, l: isinstance(t := md(n, "tags"), list) and len(t) > 2),
        ("'edge' in node.metadata.tags", lambda n, l: isinstance(t := md(n, "tags"), list) and "edge" in t),
        ("violated('load-ceiling')", lambda n, l: n.id in VIOLATED.get("load-ceiling", ())),
        ("violated('load-ceiling') and node.metadata.region == 'eu-west'",
         lambda n, l: n.id in VIOLATED.get("load-ceiling", ()) and md(n, "region") == "eu-west"),
    ]
    assert len(out) == 50, len(out)
    return out


def baseline(preds, nodes, lics) -> list[list[int]]:
    out = []
    pairs = list(zip(nodes, lics))
    for pred in preds:
        out.append([i for i, (n, l) in enumerate(pairs) if pred(n, l)])
    return out


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--durable-nodes", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2k nodes, 2 repeats, durable on 2k")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.durable_nodes, args.repeat = "2000", 2000, 2
    table = rules()
    conds = [parse(text) for text, _ in table]
    engine = NativeEngine(conds)
    results: dict[str, Any] = {"rules": len(table), "sizes": []}
    ok = True
    for name, rows in (("fast shapes", table), ("mixed", mixed_rules())):
        t_conds = [parse(text, "enforcement") for text, _ in rows]
        preds = [p for _, p in rows]
        t_engine = NativeEngine(t_conds)
        for size in [int(s) for s in args.sizes.split(",")]:
            nodes, lics, env = make_cluster(size)
            NOW[0] = env.now
            VIOLATED.clear()
            VIOLATED.update(env.violated)
            t_base, want = best(lambda: baseline(preds, nodes, lics), args.repeat)
            t_native, got = best(lambda: t_engine.evaluate(nodes, lics, env), args.repeat)
            same = got == want
            ratio = t_native / t_base
            ok &= same and ratio <= 1.5
            row = {"rules": name, "nodes": size, "baseline_s": round(t_base, 4), "native_s": round(t_native, 4),
                   "ratio": round(ratio, 3), "same_results": same, "firings": sum(map(len, want))}
            results["sizes"].append(row)
            if not args.json:
                print(f"{name:>11}: {size:>7} nodes x {len(rows)} rules: hand-written loop {t_base * 1000:8.1f} ms, "
                      f"native engine {t_native * 1000:8.1f} ms, ratio {ratio:.2f} "
                      f"({'same' if same else 'DIFFERENT'} results, {row['firings']} firings)", flush=True)
    if args.durable_nodes:
        nodes, lics, env = make_cluster(args.durable_nodes, seed=2)
        NOW[0] = env.now
        want = engine.evaluate(nodes, lics, env)
        durable = DurableEngine(conds, timeout=600)
        try:
            t0 = time.perf_counter()
            first = durable.evaluate(nodes, lics, env)
            t_first = time.perf_counter() - t0
            t0 = time.perf_counter()
            second = durable.evaluate(nodes, lics, env)
            t_second = time.perf_counter() - t0
        finally:
            durable.close()
        lost = sum(len(set(w) - set(g)) for w, g in zip(want, first)) + \
            sum(len(set(w) - set(g)) for w, g in zip(want, second))
        extra = sum(len(set(g) - set(w)) for w, g in zip(want, first))
        t_native, _ = best(lambda: engine.evaluate(nodes, lics, env), 3)
        row = {"nodes": args.durable_nodes, "first_tick_s": round(t_first, 3), "next_tick_s": round(t_second, 3),
               "per_node_us": round(t_second / args.durable_nodes * 1e6, 1), "native_s": round(t_native, 4),
               "vs_native": round(t_second / t_native, 1), "firings": sum(map(len, want)),
               "lost_firings": lost, "extra_firings": extra}
        results["durable"] = row
        ok &= lost == 0 and extra == 0
        if not args.json:
            print(f"durable {args.durable_nodes} nodes x {len(table)} rules: first tick {t_first:.2f} s "
                  f"(worker start + load), next tick {t_second:.2f} s ({row['per_node_us']} us/node, "
                  f"{row['vs_native']}x native); {row['firings']} firings, lost {lost}, extra {extra}", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
