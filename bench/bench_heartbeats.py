"""Load test of the heartbeat API: 10k simulated nodes, signed heartbeats over loopback.

The server is a real ``wyneos serve`` process; this script is the second process that
plays the nodes. It provisions N node keys into a fresh state file (as enrolment
would), starts the server, pre-signs every heartbeat (signing is the nodes' cost, not
the server's), then sends them

* **batched**: ``{"heartbeats": [...]}`` of ``--batch`` individually signed items, on
  ``--connections`` keep-alive connections;
* **single**: one signed heartbeat per request, on ``--connections`` connections.

The batched rounds go one after the other (every node once per round, a round only
after the previous one was taken), so no heartbeat overtakes an older one of its node
(the registry would skip it cheaply). After the batched phase the script waits until
the server's tick has drained its queue into the registry, and checks the registry's
refusals (``wyneos_heartbeats_rejected_by_registry_total``): the rate it reports is of
heartbeats *applied* through the tick, not of HTTP 202 answers.

It reports heartbeats per second, the phase's duration, and the p50/p99 latency (per
batch request in the batched phase: a request carries ``--batch`` heartbeats; per
heartbeat in the single phase), and as the same-run baseline the rate at which this machine verifies Ed25519
signatures on one core with the server's own function (libsodium; the server's work
per heartbeat is at least one such verification), next to ``cryptography``'s rate.
To read a run on a shared machine it also reports the server's CPU time per
accepted heartbeat and how idle the machine's CPUs were during the batched phase
(Linux ``/proc``; left out elsewhere). Every loop is bounded; the server is stopped
at the end.

    python bench/bench_heartbeats.py            # 10k nodes, 5 batched rounds, 5000 singles
    python bench/bench_heartbeats.py --rounds 20   # a longer batched phase (about 4x)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from wyneos_core.licensing.keys import fingerprint, generate_key, public_bytes
from wyneos_core.service.identity import canonical_bytes, sign_request, verify_signature
from wyneos_core.store import StateStore

CONFIG = """\
cluster: bench
tick: {{interval: 1.0}}
heartbeat: {{interval: 10, stale_after: 30, offline_after: 60, max_clock_skew: 60, max_queue: 2000000}}
mesh: {{topology: star}}
healing: {{isolate_offline: false}}
plugins: {{disable: [licence], settings: {{service: {{port: 0, replay_window: 300, verify_threads: {threads},
                                                  heartbeat_rate: 1000000, heartbeat_burst: 1000000}}}}}}
state: {{path: state.db}}
report: {{json_path: null, stdout: none}}
"""


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int] | None:
    """(idle, total) CPU ticks of the whole machine, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return values[3] + values[4], sum(values)



def provision(db: Path, n: int) -> list[tuple[str, object]]:
    store = StateStore.open(db)
    store.ensure_service_tables()
    nodes = []
    now = time.time()
    store.conn.execute("BEGIN")
    for i in range(n):
        key = generate_key()
        node_id = f"sim-{i:05d}"
        raw = public_bytes(key)
        store.put_node_key(node_id, raw, fingerprint(raw), now)
        nodes.append((node_id, key))
    store.conn.execute("COMMIT")
    store.close()
    return nodes


def signed(node_id: str, key, load: float) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"load": load, "metadata": {"sim": True}}).encode()
    return body, sign_request(key, node_id, "POST", "/v1/heartbeats", body)


def batch_item(node_id: str, key, load: float) -> str:
    body, h = signed(node_id, key, load)
    return json.dumps({"node": node_id, "timestamp": h["x-wyneos-timestamp"], "nonce": h["x-wyneos-nonce"],
                       "signature": h["x-wyneos-signature"], "body": body.decode()})


def send_all(host: str, port: int, requests: list[tuple[bytes, dict[str, str]]], connections: int):
    """Send every request (round-robin over threads); (latencies, statuses, accepted, elapsed)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    accepted = [0]
    lock = threading.Lock()

    def worker(part: list[tuple[bytes, dict[str, str]]]) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=120)
        mine, seen, ok = [], {}, 0
        for body, headers in part:
            t0 = time.perf_counter()
            conn.request("POST", "/v1/heartbeats", body=body, headers={**headers, "content-type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            mine.append(time.perf_counter() - t0)
            seen[response.status] = seen.get(response.status, 0) + 1
            if response.status == 202:
                ok += json.loads(data).get("accepted", 0)
        conn.close()
        with lock:
            latencies.extend(mine)
            for k, v in seen.items():
                statuses[k] = statuses.get(k, 0) + v
            accepted[0] += ok

    parts = [requests[i::connections] for i in range(connections)]
    threads = [threading.Thread(target=worker, args=(p,)) for p in parts]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, statuses, accepted[0], time.perf_counter() - t0


def scrape(host: str, port: int) -> dict[str, float]:
    """The server's unlabelled metric samples (``name -> value``)."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def drained(host: str, port: int, timeout: float = 300.0) -> dict[str, float]:
    """Wait until the tick has taken every queued heartbeat into the registry: the
    queue is empty and a tick that started after that has finished (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(host, port)
        if m.get("wyneos_heartbeat_queue_depth", 1) == 0:
            empty_at, last = time.time(), m.get("wyneos_last_tick", 0)
            break
        if time.monotonic() > deadline:
            raise TimeoutError("the heartbeat queue did not drain")
        time.sleep(0.02)
    while True:
        m = scrape(host, port)
        if m.get("wyneos_last_tick", 0) > last and m.get("wyneos_last_tick_timestamp_seconds", 0) >= empty_at - 1.5:
            return m
        if time.monotonic() > deadline:
            raise TimeoutError("no tick after the queue drained")
        time.sleep(0.02)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) >= 2 else values[0] * 1000


def verify_baseline(nodes, count: int) -> tuple[float, float]:
    """Ed25519 verifications per second on one core, same message shape: with the
    server's ``verify_signature`` (libsodium), and with ``cryptography``."""
    items = []
    for node_id, key in nodes[:count]:
        body, h = signed(node_id, key, 0.5)
        msg = canonical_bytes("POST", "/v1/heartbeats", node_id, h["x-wyneos-timestamp"], h["x-wyneos-nonce"], body)
        items.append((key.public_key(), public_bytes(key), key.sign(msg), msg))
    t0 = time.perf_counter()
    for _pub, raw, sig, msg in items:
        if not verify_signature(raw, sig, msg):
            raise AssertionError("baseline signature refused")
    sodium = len(items) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for pub, _raw, sig, msg in items:
        pub.verify(sig, msg)
    return sodium, len(items) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=5, help="heartbeats per node in the batched phase")
    p.add_argument("--batch", type=int, default=2000)
    p.add_argument("--singles", type=int, default=5000)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--verify-threads", type=int, default=0, help="server verifier threads (0: one per CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="wyneos-bench-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "config.yaml").write_text(CONFIG.format(threads=args.verify_threads))
        t0 = time.perf_counter()
        nodes = provision(tmp_path / "state.db", args.nodes)
        provision_s = time.perf_counter() - t0
        server = subprocess.Popen(
            [sys.executable, "-m", "wyneos_core.cli", "serve", "-c", str(tmp_path / "config.yaml")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp)
        try:
            line = server.stdout.readline()
            if "listening on" not in line:
                print(line + server.stdout.read(), file=sys.stderr)
                return 1
            url = line.split("listening on ")[1].split()[0]
            host, port = url.removeprefix("http://").rsplit(":", 1)
            port = int(port)

            # batched: pre-sign every round (in order: later rounds, later timestamps), then
            # send round after round as fast as the server takes them
            rounds = []
            for r in range(args.rounds):
                items = [batch_item(nid, key, (i % 100) / 100) for i, (nid, key) in enumerate(nodes)]
                rounds.append([(('{"heartbeats":[' + ",".join(items[i:i + args.batch]) + "]}").encode(), {})
                               for i in range(0, len(items), args.batch)])
            before = scrape(host, port)
            cpu0, ticks0 = cpu_seconds(server.pid), machine_ticks()
            b_lat, b_status, b_ok = [], {}, 0
            t_start = time.perf_counter()
            for bodies in rounds:
                lat, status, ok, _ = send_all(host, port, bodies, args.connections)
                b_lat += lat
                b_ok += ok
                for k, v in status.items():
                    b_status[k] = b_status.get(k, 0) + v
            sent_s = time.perf_counter() - t_start
            after = drained(host, port)
            b_elapsed = time.perf_counter() - t_start
            cpu1, ticks1 = cpu_seconds(server.pid), machine_ticks()
            rejected = int(after.get("wyneos_heartbeats_rejected_by_registry_total", 0)
                           - before.get("wyneos_heartbeats_rejected_by_registry_total", 0))
            applied = b_ok - rejected
            batched_rate = applied / b_elapsed
            server_cpu_us = None if cpu0 is None or cpu1 is None or not b_ok else (cpu1 - cpu0) / b_ok * 1e6
            idle = None
            if ticks0 is not None and ticks1 is not None and ticks1[1] > ticks0[1]:
                idle = (ticks1[0] - ticks0[0]) / (ticks1[1] - ticks0[1])

            singles = [signed(nid, key, 0.25) for nid, key in (nodes * (args.singles // len(nodes) + 1))[:args.singles]]
            s_lat, s_status, s_ok, s_elapsed = send_all(host, port, singles, args.connections)
            single_rate = s_ok / s_elapsed
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        baseline, baseline_cryptography = verify_baseline(nodes, min(3000, len(nodes)))

    result = {
        "nodes": args.nodes, "cpus": os.cpu_count(), "provision_s": round(provision_s, 2),
        "batched": {"heartbeats": applied, "accepted_by_api": b_ok, "rejected_by_registry": rejected,
                    "sent": args.rounds * args.nodes, "batch": args.batch, "requests": len(b_lat),
                    "seconds": round(b_elapsed, 2), "sending_seconds": round(sent_s, 2),
                    "per_s": round(batched_rate), "p50_ms": round(pct(b_lat, 50), 1), "p99_ms": round(pct(b_lat, 99), 1),
                    "statuses": b_status,
                    "server_cpu_us_per_heartbeat": None if server_cpu_us is None else round(server_cpu_us, 1),
                    "machine_idle_share": None if idle is None else round(idle, 2)},
        "single": {"heartbeats": s_ok, "sent": args.singles, "seconds": round(s_elapsed, 2),
                   "per_s": round(single_rate),
                   "p50_ms": round(pct(s_lat, 50), 2), "p99_ms": round(pct(s_lat, 99), 2), "statuses": s_status},
        "verify_threads": args.verify_threads or os.cpu_count(),
        "baseline_verify_per_s_one_core": round(baseline),
        "baseline_cryptography_verify_per_s_one_core": round(baseline_cryptography),
        "ratio_batched_to_one_core_verify": round(batched_rate / baseline, 2),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"heartbeat API load test: {args.nodes} simulated nodes over loopback, {os.cpu_count()} CPUs, "
          f"{args.connections} connections, {result['verify_threads']} verifier threads")
    print(f"{'mode':<10} {'applied':>9} {'sent':>9} {'seconds':>8} {'heartbeats/s':>13} {'p50 ms':>8} {'p99 ms':>8}"
          "  latency of")
    for mode, per in (("batched", f"one request of {args.batch}"), ("single", "one heartbeat")):
        r = result[mode]
        print(f"{mode:<10} {r['heartbeats']:>9} {r['sent']:>9} {r['seconds']:>8} {r['per_s']:>13} {r['p50_ms']:>8} "
              f"{r['p99_ms']:>8}  {per}")
    b = result["batched"]
    print(f"batched: {b['requests']} requests; {b['accepted_by_api']} answered 202, {b['rejected_by_registry']} "
          f"refused by the registry at the tick; sent in {b['sending_seconds']} s, applied by the tick "
          f"{b['seconds']} s after the start")
    if b["server_cpu_us_per_heartbeat"] is not None:
        print(f"batched: server CPU {b['server_cpu_us_per_heartbeat']} us per heartbeat; "
              f"machine CPUs idle {b['machine_idle_share']:.0%} of the time")
    print(f"baseline: Ed25519 verify on one core in this process: {result['baseline_verify_per_s_one_core']}/s "
          f"(libsodium, as the server), {result['baseline_cryptography_verify_per_s_one_core']}/s (cryptography); "
          f"batched server rate / baseline = {result['ratio_batched_to_one_core_verify']}")
    if applied != args.rounds * args.nodes or s_ok != args.singles:
        print(f"NOT ALL ACCEPTED: batched statuses {b_status}, single statuses {s_status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
