"""Load test of the heartbeat API: session and signed heartbeats, batched and single, over loopback.

The server is a real ``wyneos serve`` process; this script is the second process that
plays the nodes (the load generator). It provisions N node keys into a fresh state
file (as enrolment would), starts the server, opens one heartbeat session per node
(the signed handshake, through ``SessionClient``: the orchestrator's signed answer is
verified and the session key derived), prepares every request before the clock starts
(signing and MACing are the nodes' cost, not the server's), then measures four modes:

* **session batched**: ``{"heartbeats": [...]}`` of ``--batch`` session items (session
  id, sequence number, MAC, body), as a relay forwards them;
* **session single**: one session heartbeat per request (what ``wyneos agent`` sends);
* **signed batched** and **signed single**: the same with a per-message Ed25519
  signature instead of the session MAC.

Batched rounds go one after the other (every node once per round, a round only after
the previous one was answered), so no heartbeat overtakes an older one of its node;
single requests of one node always travel on the same connection, in order. Each
batched phase ends when every heartbeat the API accepted has been **applied** to the
registry (``/metrics``: ``wyneos_heartbeats_applied_total`` plus
``..._rejected_by_registry_total`` up by that many; the server applies relays' batches
to the registry's columns as they are queued, between ticks, ``service.applier``), and
its rate counts the heartbeats applied, not HTTP answers. The
requests go over ``--connections`` keep-alive connections, one thread each, written
and read as raw HTTP/1.1 on sockets (so the generator's own cost stays small).

Per mode it reports heartbeats/s, p50/p99 latency (per request: a batched request
carries ``--batch`` heartbeats) and the server's CPU time per heartbeat (Linux
``/proc``). The same-run baseline is the rate at which this machine verifies Ed25519
signatures on one core with the server's own function (libsodium). Targets, as
ratios to that baseline (issue 17): session batched >= 5.0, session single >= 0.6.

It also measures, in this process: the registry's memory per node at ``--nodes``
(tracemalloc, nodes with a typical heartbeat applied), the session table's memory per
session, and the decoding of a heartbeat body with msgspec against ``json`` plus the
type checks it replaces.

``--soak SECONDS`` replaces the four modes by a soak: every node sends a session
heartbeat every ``--interval`` seconds (spread evenly, in batches every 0.1 s, as
relays would) for that long, with the tick running; it fails unless every heartbeat
was answered 202 and applied, and no node was ever reported stale. Every loop is
bounded; the server is stopped at the end.

``--relays K`` puts K real ``wyneos relay`` processes between the generator and the
server in the soak (each node always through the same relay, so its heartbeats stay in
order); ``--sessions ticket`` opens the soak's sessions without a handshake each: the
generator holds the server's ticket secret (derived from the orchestrator key of the
state it provisioned, as a replica would) and seals each node's session ticket, which
the server takes up on the node's first heartbeat (``sessions.SessionTable``). The cost
of the handshakes this skips is measured on ``--handshake-sample`` real handshakes and
reported per handshake and extrapolated to N.

The generator's raw HTTP and ``/metrics`` reading live in ``heartbeat_http.py``, the
soak in ``heartbeat_soak.py`` (both beside this script).

    python bench/bench_heartbeats.py                       # 10,000 nodes, 10 batched rounds
    python bench/bench_heartbeats.py --nodes 100000 --rounds 2 --json out.json
    python bench/bench_heartbeats.py --nodes 100000 --soak 60 --interval 6
    python bench/bench_heartbeats.py --nodes 1000000 --soak 60 --interval 30 --relays 2 --sessions ticket --warm-up
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its two helper modules, however it is loaded

from heartbeat_http import (PATH, applied_all, batches, body_of, cpu_seconds, drained, load_average,  # noqa: E402
                            pct, request_bytes, scrape, send_parts)
from heartbeat_soak import mint_sessions, soak, start_relays, stop  # noqa: E402

from wyneos_core.licensing.keys import fingerprint, generate_key, public_bytes  # noqa: E402
from wyneos_core.service.identity import canonical_bytes, sign_request, verify_signature  # noqa: E402
from wyneos_core.service.session_client import SessionClient  # noqa: E402
from wyneos_core.service.sessions import mac  # noqa: E402
from wyneos_core.store import StateStore  # noqa: E402

CONFIG = """\
cluster: bench
tick: {{interval: {tick}}}
heartbeat: {{interval: {interval}, stale_after: {stale}, offline_after: {offline}, max_clock_skew: 60,
            max_queue: 2000000, max_nodes: {max_nodes}}}
mesh: {{topology: star}}
healing: {{isolate_offline: false}}
plugins: {{disable: [licence], settings: {{service: {{port: 0, replay_window: 600, verify_threads: {threads},
  heartbeat_rate: {rate}, heartbeat_burst: {burst}, max_sessions: {max_sessions}, session_ttl: 7200}}}}}}
state: {{path: state.db}}
report: {{json_path: null, stdout: none}}
"""
def provision(db: Path, n: int) -> list[tuple[str, object]]:
    store = StateStore.open(db)
    store.ensure_service_tables()
    nodes = []
    now = time.time()
    store.conn.execute("BEGIN")
    for i in range(n):
        key = generate_key()
        node_id = f"sim-{i:06d}"
        raw = public_bytes(key)
        store.put_node_key(node_id, raw, fingerprint(raw), now)  # as enrolment stores it
        nodes.append((node_id, key))
    store.conn.execute("COMMIT")
    store.close()
    return nodes


# -- what the nodes send ---------------------------------------------------------------------------


class SimNode:
    """One simulated node: its key, its session (key, id, next sequence number)."""

    __slots__ = ("id", "key", "sid", "skey", "seq")

    def __init__(self, node_id: str, key: object) -> None:
        self.id, self.key, self.sid, self.skey, self.seq = node_id, key, "", b"", 0

    def session_item(self, body: bytes) -> bytes:
        self.seq += 1
        return b'{"session":"%s","seq":%d,"mac":"%s","body":%s}' % (
            self.sid.encode(), self.seq, mac(self.skey, self.seq, body).encode(), json.dumps(body.decode()).encode())

    def session_headers(self, body: bytes) -> dict[str, str]:
        self.seq += 1
        return {"x-wyneos-session": self.sid, "x-wyneos-seq": str(self.seq), "x-wyneos-mac": mac(self.skey, self.seq,
                                                                                                    body)}

    def signed_item(self, body: bytes) -> bytes:
        h = sign_request(self.key, self.id, "POST", PATH, body)
        return json.dumps({"node": self.id, "timestamp": h["x-wyneos-timestamp"], "nonce": h["x-wyneos-nonce"],
                           "signature": h["x-wyneos-signature"], "body": body.decode()}).encode()


def open_sessions(url: str, nodes: list[SimNode], connections: int) -> float:
    """One session per node through the real handshake; seconds taken."""
    def work(part: list[SimNode]) -> None:
        clients: dict[int, SessionClient] = {}
        for node in part:
            client = SessionClient(url, node.id, node.key)
            session = client.open()
            node.sid, node.skey, node.seq = session.id, session.key, 0
            client.close()
        del clients

    t0 = time.perf_counter()
    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(work, [nodes[i::connections] for i in range(connections)]))
    return time.perf_counter() - t0


def run_batched(host: str, port: int, pid: int, rounds: list[list[bytes]], connections: int) -> dict:
    before = scrape(host, port)
    cpu0 = cpu_seconds(pid)
    lat: list[float] = []
    statuses: dict[int, int] = {}
    ok = 0
    t0 = time.perf_counter()
    for bodies in rounds:
        reqs = [request_bytes(host, port, b, {}) for b in bodies]
        parts = [reqs[i::connections] for i in range(connections)]
        rl, rs, rok, _ = send_parts(host, port, parts, count_accepted=True)
        lat += rl
        ok += rok
        for k, v in rs.items():
            statuses[k] = statuses.get(k, 0) + v
    sent_s = time.perf_counter() - t0
    after = applied_all(host, port, before, ok)  # every heartbeat the API accepted, applied to the registry
    elapsed = time.perf_counter() - t0
    cpu1 = cpu_seconds(pid)
    applied = int(after.get("wyneos_heartbeats_applied_total", 0) - before.get("wyneos_heartbeats_applied_total", 0))
    rejected = int(after.get("wyneos_heartbeats_rejected_by_registry_total", 0)
                   - before.get("wyneos_heartbeats_rejected_by_registry_total", 0))
    return {"heartbeats": applied, "accepted_by_api": ok, "rejected_by_registry": rejected,
            "requests": len(lat), "seconds": round(elapsed, 3), "sending_seconds": round(sent_s, 3),
            "per_s": round(applied / elapsed) if elapsed else 0,
            "p50_ms": round(pct(lat, 50), 2), "p99_ms": round(pct(lat, 99), 2), "statuses": statuses,
            "server_cpu_us_per_heartbeat": None if cpu0 is None or cpu1 is None or not applied
            else round((cpu1 - cpu0) / applied * 1e6, 1)}


def run_single(host: str, port: int, pid: int, parts: list[list[bytes]]) -> dict:
    cpu0 = cpu_seconds(pid)
    lat, statuses, ok, elapsed = send_parts(host, port, parts)
    cpu1 = cpu_seconds(pid)
    return {"heartbeats": ok, "sent": sum(len(p) for p in parts), "seconds": round(elapsed, 3),
            "per_s": round(ok / elapsed) if elapsed else 0, "p50_ms": round(pct(lat, 50), 3),
            "p99_ms": round(pct(lat, 99), 3), "statuses": statuses,
            "server_cpu_us_per_heartbeat": None if cpu0 is None or cpu1 is None or not ok
            else round((cpu1 - cpu0) / ok * 1e6, 1)}


# -- in-process measurements ------------------------------------------------------------------


def verify_baseline(nodes: list[SimNode], count: int) -> float:
    """Ed25519 verifications per second on one core with the server's function (libsodium)."""
    items = []
    for node in nodes[:count]:
        body = body_of(0.5, time.time())
        h = sign_request(node.key, node.id, "POST", PATH, body)
        msg = canonical_bytes("POST", PATH, node.id, h["x-wyneos-timestamp"], h["x-wyneos-nonce"], body)
        items.append((public_bytes(node.key), node.key.sign(msg), msg))
    t0 = time.perf_counter()
    for raw, sig, msg in items:
        if not verify_signature(raw, sig, msg):
            raise AssertionError("baseline signature refused")
    return len(items) / (time.perf_counter() - t0)


def decode_rates(count: int) -> dict:
    """Heartbeat bodies decoded per second: msgspec into the typed struct, against
    ``json`` into a dict plus the field and type checks that the struct does."""
    from wyneos_core.intake import decode_body

    bodies = [b'{"timestamp":%.3f,"load":0.%02d,"metadata":{"sim":true,"rack":"r%d"},"licence_ref":"lic-1"}'
              % (1.7e9 + i, i % 100, i % 7) for i in range(count)]
    fields = frozenset(("node_id", "timestamp", "load", "metadata", "licence_ref"))
    decode = json.JSONDecoder().decode

    def by_json(raw: bytes) -> tuple:
        data = decode(raw.decode("utf-8"))
        if not isinstance(data, dict) or not fields.issuperset(data):
            raise ValueError("fields")
        ts, load, meta, ref = data.get("timestamp"), data.get("load"), data.get("metadata"), data.get("licence_ref")
        for v in (ts, load):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ValueError("type")
        if meta is not None and not isinstance(meta, dict) or ref is not None and not isinstance(ref, str):
            raise ValueError("type")
        return ts, load, meta, ref

    t0 = time.perf_counter()
    for raw in bodies:
        decode_body(raw)
    fast = count / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for raw in bodies:
        by_json(raw)
    slow = count / (time.perf_counter() - t0)
    return {"msgspec_per_s": round(fast), "json_per_s": round(slow), "ratio": round(fast / slow, 2)}


def memory_per_node(n: int) -> dict:
    """Bytes per node of a registry of ``n`` nodes, each with a typical heartbeat
    applied, and per session of a session table of ``n`` sessions (tracemalloc)."""
    from wyneos_core.intake import CheckedHeartbeat
    from wyneos_core.registry import Registry
    from wyneos_core.service.identity import KeyCache
    from wyneos_core.service.sessions import Bucket, Session, SessionTable

    settings = {"stale_after": 18, "offline_after": 48, "max_clock_skew": 60, "unknown_nodes": "reject",
                "max_metadata_bytes": 8192, "max_load": 64, "max_nodes": n + 1}
    ids = [f"sim-{i:06d}" for i in range(n)]
    now = time.time()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    registry = Registry(settings)
    for node_id in ids:
        registry.register(node_id, now=now, fingerprint="sha256:" + "ab" * 32)
    registry.accept_all([CheckedHeartbeat(i, now, 0.5, {"sim": True}, None) for i in ids], now, trusted=True)
    registry_bytes = tracemalloc.get_traced_memory()[0] - base
    base = tracemalloc.get_traced_memory()[0]
    table = SessionTable(KeyCache(), lambda fmt, payload: {}, max_sessions=n + 1)
    for node_id in ids:
        sid = os.urandom(18).hex()[:24]
        table._sessions[sid] = Session(sid, node_id, os.urandom(32), now + 3600, Bucket(10.0, now))  # noqa: SLF001
        table._by_node[node_id] = [sid]  # noqa: SLF001
    session_bytes = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del registry, table
    return {"nodes": n, "registry_bytes_per_node": round(registry_bytes / n),
            "session_bytes_per_session": round(session_bytes / n)}


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=10, help="heartbeats per node in each batched phase")
    p.add_argument("--batch", type=int, default=2000)
    p.add_argument("--singles", type=int, default=20_000, help="requests in each single phase")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--verify-threads", type=int, default=0, help="server verifier threads (0: one per CPU)")
    p.add_argument("--modes", default="session_batched,session_single,signed_batched,signed_single")
    p.add_argument("--soak", type=float, default=0.0, metavar="SECONDS", help="run the soak instead of the modes")
    p.add_argument("--interval", type=float, default=6.0, help="soak: seconds between a node's heartbeats")
    p.add_argument("--tick", type=float, default=None, metavar="SECONDS",
                   help="the server's tick interval (default: 1 s for the modes, 2 s for the soak)")
    p.add_argument("--relays", type=int, default=0, help="soak: wyneos relay processes between generator and server")
    p.add_argument("--sessions", choices=["handshake", "ticket"], default="handshake",
                   help="soak: open every session by a handshake, or seal tickets (then --handshake-sample measures)")
    p.add_argument("--handshake-sample", type=int, default=2000,
                   help="with --sessions ticket: real handshakes measured, then extrapolated to --nodes")
    p.add_argument("--warm-up", action="store_true",
                   help="soak: the nodes send on their schedule, untimed, until a tick has seen every node "
                        "online; then the clock starts")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if (args.relays or args.sessions == "ticket" or args.warm_up) and not args.soak > 0:
        p.error("--relays, --sessions ticket and --warm-up go with --soak")

    load0 = load_average()
    if args.tick is not None and not 0.05 <= args.tick <= 3600:
        p.error(f"--tick must be 0.05-3600 seconds, not {args.tick:g}")
    result: dict = {"nodes": args.nodes, "cpus": os.cpu_count(), "load_average_start": load0, "tick_s": args.tick,
                    "connections": args.connections, "batch": args.batch}
    with tempfile.TemporaryDirectory(prefix="wyneos-bench-") as tmp:
        tmp_path = Path(tmp)
        soaking = args.soak > 0
        (tmp_path / "config.yaml").write_text(CONFIG.format(
            threads=args.verify_threads, tick=args.tick or (1.0 if not soaking else 2.0),
            interval=args.interval, stale=3 * args.interval, offline=8 * args.interval,
            max_nodes=args.nodes + 10, rate=1000000.0 if not soaking else 1.0, burst=1000000 if not soaking else 10,
            max_sessions=2 * args.nodes + 10))
        t0 = time.perf_counter()
        nodes = [SimNode(i, k) for i, k in provision(tmp_path / "state.db", args.nodes)]
        result["provision_s"] = round(time.perf_counter() - t0, 2)
        server = subprocess.Popen(
            [sys.executable, "-m", "wyneos_core.cli", "serve", "-c", str(tmp_path / "config.yaml")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp)
        try:
            line = server.stdout.readline()
            if "listening on" not in line:
                print(line + server.stdout.read(), file=sys.stderr)
                return 1
            url = line.split("listening on ")[1].split()[0]
            host, port_text = url.removeprefix("http://").rsplit(":", 1)
            port = int(port_text)
            relays: list[subprocess.Popen] = []
            cpu0 = cpu_seconds(server.pid)
            minted = args.sessions == "ticket"
            sample = nodes[:min(args.handshake_sample, len(nodes))] if minted else nodes
            seconds = open_sessions(url, sample, min(args.connections, 4)) \
                if soaking or any(m.startswith("session") for m in modes) else 0.0
            cpu1 = cpu_seconds(server.pid)
            per = None if cpu0 is None or cpu1 is None or not sample else (cpu1 - cpu0) / len(sample)
            result["handshakes"] = {"sessions": len(sample), "seconds": round(seconds, 2),
                                    "per_s": round(len(sample) / seconds) if seconds else 0,
                                    "server_cpu_us_per_handshake": None if per is None else round(per * 1e6, 1)}
            if minted:
                result["handshakes"]["extrapolated_to"] = args.nodes
                result["handshakes"]["extrapolated_seconds"] = round(seconds * args.nodes / max(1, len(sample)))
                result["handshakes"]["extrapolated_server_cpu_s"] = None if per is None else round(per * args.nodes)
                result["minted_sessions_s"] = round(mint_sessions(tmp_path / "state.db", nodes[len(sample):],
                                                                  7200.0), 2)
            try:
                if args.relays:
                    relays, targets = start_relays(url, args.relays, tmp)
                    result["relays"] = args.relays
                else:
                    targets = None
                if soaking:
                    result["soak"] = soak(host, port, server.pid, nodes, args.soak, args.interval, args.connections,
                                          targets, [r.pid for r in relays], warm_up=args.warm_up)
            finally:
                stop(relays)
            singles = [m for m in modes if m.endswith("_single")]
            if singles and not soaking:
                # untimed: the first answer to each node seals its neighbour list (an Ed25519
                # signature, once per change of the list): a one-off, not a heartbeat's cost
                wall = time.time()
                warm: list[list[bytes]] = [[] for _ in range(args.connections)]
                for i, nd in enumerate(nodes):
                    body = body_of(0.25, wall)
                    headers = nd.session_headers(body) if nd.sid else sign_request(nd.key, nd.id, "POST", PATH, body)
                    warm[i % args.connections].append(request_bytes(host, port, body, headers))
                t0 = time.perf_counter()
                send_parts(host, port, warm)
                result["warm_up_s"] = round(time.perf_counter() - t0, 2)
                drained(host, port)
            for mode in ([] if soaking else modes):
                wall = time.time()
                if mode == "session_batched":
                    rounds = [batches([nd.session_item(body_of(0.5, wall + r)) for nd in nodes], args.batch)
                              for r in range(args.rounds)]
                    result[mode] = run_batched(host, port, server.pid, rounds, args.connections)
                    result[mode]["sent"] = args.rounds * args.nodes
                elif mode == "signed_batched":
                    rounds = [batches([nd.signed_item(body_of(0.5, wall + r)) for nd in nodes], args.batch)
                              for r in range(args.rounds)]
                    result[mode] = run_batched(host, port, server.pid, rounds, args.connections)
                    result[mode]["sent"] = args.rounds * args.nodes
                elif mode in ("session_single", "signed_single"):
                    parts: list[list[bytes]] = [[] for _ in range(args.connections)]
                    for i in range(args.singles):  # a node's requests stay on one connection, in order
                        nd = nodes[i % len(nodes)]
                        body = body_of(0.25, wall + i / len(nodes))
                        headers = nd.session_headers(body) if mode == "session_single" else \
                            sign_request(nd.key, nd.id, "POST", PATH, body)
                        parts[(i % len(nodes)) % args.connections].append(request_bytes(host, port, body, headers))
                    result[mode] = run_single(host, port, server.pid, parts)
                    drained(host, port)
                else:
                    print(f"unknown mode {mode!r}", file=sys.stderr)
                    return 2
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
        baseline = verify_baseline(nodes, min(3000, len(nodes)))
    result["ed25519_verify_per_s"] = round(baseline)
    result["decode"] = decode_rates(min(100_000, max(1000, args.nodes)))
    # (a soak of a large fleet skips it: a second registry of that size in this process)
    result["memory"] = memory_per_node(args.nodes) if not soaking or args.nodes <= 100_000 else None
    result["load_average_end"] = load_average()
    for mode in modes:
        if mode in result:
            result[f"{mode}_per_s"] = result[mode]["per_s"]
            result[f"{mode}_ratio"] = round(result[mode]["per_s"] / baseline, 2)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    report(result, modes, args)
    failed = []
    if soaking:
        if not result["soak"]["ok"]:
            failed.append("soak: " + json.dumps(result["soak"]))
    for mode in modes:
        r = result.get(mode)
        if r is None:
            continue
        want = r.get("sent", 0)
        if r["heartbeats"] != want or r.get("accepted_by_api", want) != want:
            failed.append(f"{mode}: {r['heartbeats']} of {want} applied; statuses {r['statuses']}")
    for line in failed:
        print("NOT ALL ACCEPTED: " + line, file=sys.stderr)
    return 1 if failed else 0


def report(result: dict, modes: list[str], args: argparse.Namespace) -> None:
    print(f"heartbeat API load test: {args.nodes} simulated nodes over loopback, {result['cpus']} CPUs, "
          f"{args.connections} connections; load average {result['load_average_start']} at the start, "
          f"{result['load_average_end']} at the end")
    h = result["handshakes"]
    print(f"handshakes: {h['sessions']} sessions opened in {h['seconds']} s ({h['per_s']}/s), server CPU "
          f"{h['server_cpu_us_per_handshake']} us each")
    if "extrapolated_to" in h:
        print(f"  the other {h['extrapolated_to'] - h['sessions']} sessions sealed as tickets in "
              f"{result['minted_sessions_s']} s (no handshake); {h['extrapolated_to']} handshakes at this rate: "
              f"{h['extrapolated_seconds']} s, {h['extrapolated_server_cpu_s']} s of server CPU")
    if "soak" in result:
        s = result["soak"]
        if s.get("warm_up_s") is not None:
            print(f"warm-up: the nodes on their schedule, untimed: every node online after {s['warm_up_s']} s "
                  f"({s['warm_up_sent']} heartbeats; counted below with the {s['sent_timed']} of the timed part)")
        print(f"soak: {s['nodes']} nodes every {s['interval']} s for {s['seconds']} s: {s['sent']} sent, "
              f"{s['answered_202']} answered 202, {s['applied']} applied ({s['lost']} lost), all online after "
              f"{s['all_online_after_s']} s, then stale or offline seen "
              f"{s['stale_or_offline_seen_max']} in {s['status_checks']} checks, {s['online_at_end']} online after "
              f"the drain; {s['rate_per_s']}/s, "
              f"server CPU {s['server_cpu_us_per_heartbeat']} us per heartbeat"
              + (f", {s['relays']} relays {s['relay_cpu_us_per_heartbeat']} us per heartbeat" if s["relays"] else "")
              + f", generator behind by at most "
              f"{s['generator_behind_max_s']} s -> {'ok' if s['ok'] else 'FAILED'}")
    else:
        print(f"{'mode':<16} {'applied':>9} {'sent':>9} {'seconds':>8} {'per s':>8} {'x verify':>8} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'CPU us/hb':>9}  latency of")
        for mode in modes:
            r = result.get(mode)
            if r is None:
                continue
            per = f"one request of {args.batch}" if mode.endswith("batched") else "one heartbeat"
            print(f"{mode:<16} {r['heartbeats']:>9} {r['sent']:>9} {r['seconds']:>8} {r['per_s']:>8} "
                  f"{result[mode + '_ratio']:>8} {r['p50_ms']:>8} {r['p99_ms']:>8} "
                  f"{r['server_cpu_us_per_heartbeat']!s:>9}  {per}")
    print(f"baseline: Ed25519 verify on one core (libsodium, as the server): {result['ed25519_verify_per_s']}/s; "
          f"targets: session_batched >= 5.0x, session_single >= 0.6x")
    d = result["decode"]
    print(f"decode: msgspec {d['msgspec_per_s']}/s, json + checks {d['json_per_s']}/s ({d['ratio']}x)")
    m = result["memory"]
    if m is not None:
        print(f"memory at {m['nodes']} nodes: registry {m['registry_bytes_per_node']} B/node, session table "
              f"{m['session_bytes_per_session']} B/session")


if __name__ == "__main__":
    sys.exit(main())
