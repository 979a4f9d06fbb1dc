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
batched phase ends when the server's tick has **applied** the queue to the registry
(``/metrics``: empty queue, then one more finished tick), and its rate counts the
heartbeats applied (``wyneos_heartbeats_applied_total``), not HTTP answers. The
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

    python bench/bench_heartbeats.py                       # 10,000 nodes, 10 batched rounds
    python bench/bench_heartbeats.py --nodes 100000 --rounds 2 --json out.json
    python bench/bench_heartbeats.py --nodes 100000 --soak 60 --interval 6
    python bench/bench_heartbeats.py --nodes 1000000 --soak 60 --interval 30 --relays 2 --sessions ticket
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from wyneos_core.licensing.keys import fingerprint, generate_key, public_bytes
from wyneos_core.service.identity import canonical_bytes, sign_request, verify_signature
from wyneos_core.service.session_client import SessionClient
from wyneos_core.service.orchestrator_key import OrchestratorKey
from wyneos_core.service.sessions import SessionTable, mac
from wyneos_core.store import StateStore

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
PATH = "/v1/heartbeats"


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


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


# -- the generator's HTTP: raw HTTP/1.1 on keep-alive sockets ----------------------------------


def request_bytes(host: str, port: int, body: bytes, headers: dict[str, str]) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"POST {PATH} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{head}\r\n").encode() + body


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    head = bytes(buf[:end]).decode("latin-1")
    status = int(head[9:12])
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
    total = end + 4 + length
    while len(buf) < total:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    body = bytes(buf[end + 4:total])
    del buf[:total]
    return status, body


def send_parts(host: str, port: int, parts: list[list[bytes]], count_accepted: bool = False):
    """Send each part's requests in order on its own connection (one thread each).

    Returns (latencies, statuses, accepted, elapsed): ``accepted`` sums the answers'
    ``accepted`` (batches) or counts 202s (singles)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    accepted = [0]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(part: list[bytes]) -> None:
        try:
            sock = socket.create_connection((host, port), timeout=300)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = bytearray()
            mine, seen, ok = [], {}, 0
            perf = time.perf_counter
            for req in part:
                t0 = perf()
                sock.sendall(req)
                status, body = _read_response(sock, buf)
                mine.append(perf() - t0)
                seen[status] = seen.get(status, 0) + 1
                if status == 202:
                    ok += json.loads(body)["accepted"] if count_accepted else 1
            sock.close()
            with lock:
                latencies.extend(mine)
                for k, v in seen.items():
                    statuses[k] = statuses.get(k, 0) + v
                accepted[0] += ok
        except BaseException as exc:  # noqa: BLE001 - reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(p,)) for p in parts if p]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    if errors:
        raise errors[0]
    return latencies, statuses, accepted[0], time.perf_counter() - t0


def scrape(host: str, port: int) -> dict[str, float]:
    """The server's metric samples (``name`` or ``name{labels}`` -> value)."""
    sock = socket.create_connection((host, port), timeout=30)
    sock.sendall(f"GET /metrics HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
    _, body = _read_response(sock, bytearray())
    sock.close()
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def drained(host: str, port: int, timeout: float = 600.0) -> dict[str, float]:
    """Wait until the tick has applied every queued heartbeat: the queue is empty and a
    tick that started after that has finished (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(host, port)
        if m.get("wyneos_heartbeat_queue_depth", 1) == 0:
            empty_at, last = time.time(), m.get("wyneos_last_tick", 0)
            break
        if time.monotonic() > deadline:
            raise TimeoutError("the heartbeat queue did not drain")
        time.sleep(0.05)
    while True:
        m = scrape(host, port)
        if m.get("wyneos_last_tick", 0) > last and m.get("wyneos_last_tick_timestamp_seconds", 0) >= empty_at - 1.5:
            return m
        if time.monotonic() > deadline:
            raise TimeoutError("no tick after the queue drained")
        time.sleep(0.05)


def pct(values: list[float], q: int) -> float:
    if not values:
        return 0.0
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) >= 2 else values[0] * 1000


# -- what the nodes send ---------------------------------------------------------------------------


def body_of(load: float, ts: float) -> bytes:
    return b'{"timestamp":%.3f,"load":%.2f,"metadata":{"sim":true}}' % (ts, load)


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


def mint_sessions(state: Path, nodes: list[SimNode], ttl: float) -> float:
    """Each node's session sealed as a ticket under the server's ticket secret (derived
    from the orchestrator key of ``state``, as the service derives it); seconds taken."""
    from wyneos_core.service.identity import KeyCache

    t0 = time.perf_counter()
    okey = OrchestratorKey.for_state(state)  # made here if the server has not run yet; it loads the same
    table = SessionTable(KeyCache(), okey.seal, secret=okey.sign(b"wyneos-session-tickets-v1"))
    expires = time.time() + ttl
    for node in nodes:
        node.skey = os.urandom(32)
        node.sid, node.seq = table.issue_ticket(node.id, node.skey, expires), 0
    return time.perf_counter() - t0


def start_relays(url: str, count: int, cwd: str) -> tuple[list[subprocess.Popen], list[tuple[str, int]]]:
    """``count`` real ``wyneos relay`` processes forwarding to ``url``; (processes, addresses)."""
    procs, addresses = [], []
    for _ in range(count):
        proc = subprocess.Popen([sys.executable, "-m", "wyneos_core.cli", "relay", "--upstream", url, "--port", "0",
                                 "--max-pending", "1000000", "--timeout", "120"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)
        procs.append(proc)
        line = proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"wyneos relay did not start: {line}")
        host, port = line.split("listening on http://")[1].split(",")[0].rsplit(":", 1)
        addresses.append((host, int(port)))
    return procs, addresses


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def batches(items: list[bytes], size: int) -> list[bytes]:
    return [b'{"heartbeats":[' + b",".join(items[i:i + size]) + b"]}" for i in range(0, len(items), size)]


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
    after = drained(host, port)
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


# -- the soak --------------------------------------------------------------------------------------


def soak(host: str, port: int, pid: int, nodes: list[SimNode], seconds: float, interval: float,
         connections: int, targets: list[tuple[str, int]] | None = None, relay_pids: list[int] | None = None) -> dict:
    """Every node sends a session heartbeat every ``interval`` s for ``seconds`` s, in
    batches every 0.1 s (each node at its own phase in the interval).

    A scheduler thread builds each slot's batch on time and hands it to the sender of
    its connection (slot k always goes to connection k mod C, so a node's heartbeats
    stay in order); the senders write and read on their keep-alive connections without
    holding the schedule up. How far the schedule fell behind is reported: a run whose
    generator could not keep up says nothing about the server.

    ``targets``: where the batches go (relays: connection k to ``targets[k % len]``);
    the server itself when None. ``/metrics`` is always read from the server."""
    import queue as queue_mod

    n = len(nodes)
    step = 0.1
    slots = max(1, round(interval / step))
    per_slot = [nodes[i::slots] for i in range(slots)]
    lanes = [queue_mod.Queue() for _ in range(connections)]
    lock = threading.Lock()
    tally = {"ok": 0, "requests": 0}
    statuses: dict[int, int] = {}
    lat: list[float] = []
    errors: list[BaseException] = []

    targets = targets or [(host, port)]

    def sender(lane: queue_mod.Queue, target: tuple[str, int]) -> None:
        try:
            sock = socket.create_connection(target, timeout=300)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = bytearray()
            while True:
                req = lane.get()
                if req is None:
                    break
                t0 = time.perf_counter()
                sock.sendall(req)
                status, body = _read_response(sock, buf)
                took = time.perf_counter() - t0
                got = json.loads(body)["accepted"] if status == 202 else 0
                with lock:
                    lat.append(took)
                    statuses[status] = statuses.get(status, 0) + 1
                    tally["ok"] += got
                    tally["requests"] += 1
            sock.close()
        except BaseException as exc:  # noqa: BLE001 - reported after the join
            errors.append(exc)

    senders = [threading.Thread(target=sender, args=(lane, targets[k % len(targets)])) for k, lane in enumerate(lanes)]
    for t in senders:
        t.start()
    sent = 0
    stale_seen = checks = 0
    warm_at: float | None = None
    before = scrape(host, port)
    cpu0 = cpu_seconds(pid)
    relay_cpu0 = [cpu_seconds(p) for p in relay_pids or ()]
    t_start = time.monotonic()
    tick = 0
    next_check = t_start + interval
    behind = 0.0
    try:
        while True:
            due = t_start + tick * step
            now = time.monotonic()
            if due - t_start >= seconds:
                break
            if due > now:
                time.sleep(due - now)
            else:
                behind = max(behind, now - due)
            wall = time.time()
            items = [node.session_item(body_of(0.5, wall)) for node in per_slot[tick % slots]]
            for body in batches(items, 2000):
                lanes[tick % connections].put(request_bytes(host, port, body, {}))
            sent += len(items)
            tick += 1
            if time.monotonic() >= next_check:
                # before the soak, nodes had sent nothing (offline): once a tick has seen
                # every node online, none may turn stale or offline while they keep sending
                m = scrape(host, port)
                down = int(m.get('wyneos_nodes{status="stale"}', 0) + m.get('wyneos_nodes{status="offline"}', 0))
                if warm_at is None and int(m.get('wyneos_nodes{status="online"}', 0)) == n:
                    warm_at = time.monotonic() - t_start
                elif warm_at is not None:
                    checks += 1
                    stale_seen = max(stale_seen, down)
                next_check = time.monotonic() + 1.0
    finally:
        for lane in lanes:
            lane.put(None)
        for t in senders:
            t.join(600)
    if errors:
        raise errors[0]
    after = drained(host, port)
    cpu1 = cpu_seconds(pid)
    relay_cpu = sum((cpu_seconds(p) or 0.0) - (c or 0.0) for p, c in zip(relay_pids or (), relay_cpu0))
    ok = tally["ok"]
    applied = int(after.get("wyneos_heartbeats_applied_total", 0) - before.get("wyneos_heartbeats_applied_total", 0))
    stale_end = int(after.get('wyneos_nodes{status="stale"}', 0) + after.get('wyneos_nodes{status="offline"}', 0))
    online = int(after.get('wyneos_nodes{status="online"}', 0))
    return {"nodes": n, "seconds": seconds, "interval": interval, "sent": sent, "answered_202": ok,
            "applied": applied, "lost": sent - applied, "statuses": statuses,
            "all_online_after_s": None if warm_at is None else round(warm_at, 1),
            "status_checks": checks, "stale_or_offline_seen_max": stale_seen,
            "stale_or_offline_at_end": stale_end, "online_at_end": online,
            "rate_per_s": round(sent / seconds), "p50_batch_ms": round(pct(lat, 50), 2),
            "p99_batch_ms": round(pct(lat, 99), 2), "generator_behind_max_s": round(behind, 2),
            "server_cpu_us_per_heartbeat": None if cpu0 is None or cpu1 is None or not applied
            else round((cpu1 - cpu0) / applied * 1e6, 1),
            "relays": len(relay_pids or ()),
            "relay_cpu_us_per_heartbeat": round(relay_cpu / applied * 1e6, 1) if relay_pids and applied else None,
            # the status checks run while heartbeats flow; at the end, after the drain, a
            # node may turn stale only because the generator stopped (reported, not judged)
            "ok": sent == ok == applied and checks > 0 and stale_seen == 0}


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
    p.add_argument("--relays", type=int, default=0, help="soak: wyneos relay processes between generator and server")
    p.add_argument("--sessions", choices=["handshake", "ticket"], default="handshake",
                   help="soak: open every session by a handshake, or seal tickets (then --handshake-sample measures)")
    p.add_argument("--handshake-sample", type=int, default=2000,
                   help="with --sessions ticket: real handshakes measured, then extrapolated to --nodes")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if (args.relays or args.sessions == "ticket") and not args.soak > 0:
        p.error("--relays and --sessions ticket go with --soak")

    load0 = load_average()
    result: dict = {"nodes": args.nodes, "cpus": os.cpu_count(), "load_average_start": load0,
                    "connections": args.connections, "batch": args.batch}
    with tempfile.TemporaryDirectory(prefix="wyneos-bench-") as tmp:
        tmp_path = Path(tmp)
        soaking = args.soak > 0
        (tmp_path / "config.yaml").write_text(CONFIG.format(
            threads=args.verify_threads, tick=1.0 if not soaking else 2.0,
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
                                          targets, [r.pid for r in relays])
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
