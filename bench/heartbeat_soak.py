"""The soak of ``bench_heartbeats.py``: every node's session heartbeat on its schedule,
straight to the server or through real ``wyneos relay`` processes, with sessions
opened by handshakes or sealed as tickets (see ``bench_heartbeats.py``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from heartbeat_http import batches, body_of, cpu_seconds, drained, pct, read_response, request_bytes, scrape

from wyneos_core.service.orchestrator_key import OrchestratorKey
from wyneos_core.service.sessions import SessionTable

if TYPE_CHECKING:
    from bench_heartbeats import SimNode


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


def soak(host: str, port: int, pid: int, nodes: list[SimNode], seconds: float, interval: float,
         connections: int, targets: list[tuple[str, int]] | None = None, relay_pids: list[int] | None = None,
         warm_up: bool = False) -> dict:
    """Every node sends a session heartbeat every ``interval`` s for ``seconds`` s, in
    batches every 0.1 s (each node at its own phase in the interval).

    A scheduler thread builds each slot's batch on time and hands it to the sender of
    its connection (slot k always goes to connection k mod C, so a node's heartbeats
    stay in order); the senders write and read on their keep-alive connections without
    holding the schedule up. How far the schedule fell behind is reported: a run whose
    generator could not keep up says nothing about the server.

    ``targets``: where the batches go (relays: connection k to ``targets[k % len]``);
    the server itself when None. ``/metrics`` is always read from the server, by a
    thread of its own once a second (a slow answer never holds the schedule up).

    ``warm_up``: the nodes start sending on their schedule before the clock starts (a
    session sealed as a ticket is taken up by the server on its first heartbeat), and
    the timed part begins, on the same schedule without a pause, once a tick has seen
    every node online: it starts from a fleet in its steady state, and every status
    check counts. (An earlier warm-up sent one heartbeat per node, stamped an interval
    old, and then nothing until every node was online: a tick slower than
    ``stale_after`` less that interval found them all stale, and they stayed so, as
    nodes that stopped sending would.) Nothing is left out of the counts: ``sent``,
    ``answered_202`` and ``applied`` cover the warm-up and the timed part (``lost``
    compares them); ``sent_timed`` is the timed part's share, ``warm_up_sent`` the rest."""
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
                status, body = read_response(sock, buf)
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

    relay_pids = list(relay_pids or ())
    # warm_at: seconds from the first heartbeat to the first tick that saw every node online;
    # at that moment the timed part starts (its CPU readings are taken then, by the checker)
    state: dict = {"warm_at": None, "checks": 0, "stale_seen": 0, "unanswered": 0, "cpu0": None, "relay_cpu0": None}
    done = threading.Event()
    before = scrape(host, port)
    t_begin = time.monotonic()

    def checker() -> None:
        # before it, nodes had sent nothing (offline): once a tick has seen every node
        # online, none may turn stale or offline while they keep sending
        while not done.wait(1.0):
            try:
                m = scrape(host, port)
            except OSError:
                state["unanswered"] += 1
                continue
            if done.is_set():
                break
            down = int(m.get('wyneos_nodes{status="stale"}', 0) + m.get('wyneos_nodes{status="offline"}', 0))
            if state["warm_at"] is None:
                if int(m.get('wyneos_nodes{status="online"}', 0)) == n:
                    state["cpu0"], state["relay_cpu0"] = cpu_seconds(pid), [cpu_seconds(p) for p in relay_pids]
                    state["warm_at"] = time.monotonic() - t_begin
            else:
                state["checks"] += 1
                state["stale_seen"] = max(state["stale_seen"], down)

    if not warm_up:
        state["cpu0"], state["relay_cpu0"] = cpu_seconds(pid), [cpu_seconds(p) for p in relay_pids]
    watcher = threading.Thread(target=checker)
    watcher.start()
    sent = warm_sent = 0
    k = 0
    timed_from: int | None = None if warm_up else 0  # the slot the timed part starts at
    warm_deadline = t_begin + 600 + n / 1000
    behind = 0.0
    try:
        while True:
            if timed_from is None:
                if state["warm_at"] is not None:
                    timed_from = k
                elif errors or time.monotonic() > warm_deadline:
                    raise TimeoutError(f"warm-up: not every node online within {warm_deadline - t_begin:.0f} s")
            if timed_from is not None and (k - timed_from) * step >= seconds:
                break
            due = t_begin + k * step
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            else:
                behind = max(behind, now - due)
            wall = time.time()
            items = [node.session_item(body_of(0.5, wall)) for node in per_slot[k % slots]]
            for body in batches(items, 2000):
                lanes[k % connections].put(request_bytes(host, port, body, {}))
            if timed_from is None:
                warm_sent += len(items)
            else:
                sent += len(items)
            k += 1
    finally:
        done.set()
        for lane in lanes:
            lane.put(None)
        for t in senders:
            t.join(600)
        watcher.join(300)
    warm_at, checks, stale_seen = state["warm_at"], state["checks"], state["stale_seen"]
    if errors:
        raise errors[0]
    after = drained(host, port)
    cpu0, cpu1 = state["cpu0"], cpu_seconds(pid)
    relay_cpu = sum((cpu_seconds(p) or 0.0) - (c or 0.0) for p, c in zip(relay_pids, state["relay_cpu0"] or ()))
    total = sent + warm_sent
    ok = tally["ok"]
    applied = int(after.get("wyneos_heartbeats_applied_total", 0) - before.get("wyneos_heartbeats_applied_total", 0))
    stale_end = int(after.get('wyneos_nodes{status="stale"}', 0) + after.get('wyneos_nodes{status="offline"}', 0))
    online = int(after.get('wyneos_nodes{status="online"}', 0))
    return {"nodes": n, "seconds": seconds, "interval": interval, "sent": total, "answered_202": ok,
            "applied": applied, "lost": total - applied, "sent_timed": sent, "warm_up_sent": warm_sent,
            "statuses": statuses,
            "warm_up_s": round(warm_at, 1) if warm_up and warm_at is not None else None,
            "all_online_after_s": None if warm_at is None else round(warm_at, 1),
            "metrics_unanswered": state["unanswered"],
            "status_checks": checks, "stale_or_offline_seen_max": stale_seen,
            "stale_or_offline_at_end": stale_end, "online_at_end": online,
            "rate_per_s": round(sent / seconds), "p50_batch_ms": round(pct(lat, 50), 2),
            "p99_batch_ms": round(pct(lat, 99), 2), "generator_behind_max_s": round(behind, 2),
            # per heartbeat sent in the timed part (a cost per tick is spread over them)
            "server_cpu_us_per_heartbeat": None if cpu0 is None or cpu1 is None or not sent
            else round((cpu1 - cpu0) / sent * 1e6, 1),
            "relays": len(relay_pids),
            "relay_cpu_us_per_heartbeat": round(relay_cpu / sent * 1e6, 1) if relay_pids and sent else None,
            # the status checks run while heartbeats flow; at the end, after the drain, a
            # node may turn stale only because the generator stopped (reported, not judged)
            "ok": total == ok == applied and checks > 0 and stale_seen == 0 and warm_at is not None}
