"""The load generator's HTTP for ``bench_heartbeats.py``: raw HTTP/1.1 on keep-alive
sockets (so the generator's own cost stays small), the server's ``/metrics``, its CPU
time from ``/proc``, and what the simulated nodes send."""

from __future__ import annotations

import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path

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


# -- the generator's HTTP: raw HTTP/1.1 on keep-alive sockets ----------------------------------


def request_bytes(host: str, port: int, body: bytes, headers: dict[str, str]) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"POST {PATH} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{head}\r\n").encode() + body


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
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
                status, body = read_response(sock, buf)
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


def scrape(host: str, port: int, timeout: float = 120.0) -> dict[str, float]:
    """The server's metric samples (``name`` or ``name{labels}`` -> value); a server busy
    with a million-node tick may take a while to answer, hence the long ``timeout``."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.sendall(f"GET /metrics HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
    _, body = read_response(sock, bytearray())
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


def applied_all(host: str, port: int, before: dict[str, float], want: int, timeout: float = 600.0) -> dict[str, float]:
    """Wait until ``want`` more heartbeats than at ``before`` (a ``scrape``) were applied to
    the registry or refused by it (``wyneos_heartbeats_applied_total`` and
    ``..._rejected_by_registry_total``; the server applies relays' batches as they come,
    between ticks, and a tick applies the rest; bounded)."""
    deadline = time.monotonic() + timeout
    a0 = before.get("wyneos_heartbeats_applied_total", 0) + before.get("wyneos_heartbeats_rejected_by_registry_total", 0)
    while True:
        m = scrape(host, port)
        done = m.get("wyneos_heartbeats_applied_total", 0) + m.get("wyneos_heartbeats_rejected_by_registry_total", 0)
        if done - a0 >= want:
            return m
        if time.monotonic() > deadline:
            raise TimeoutError(f"{int(done - a0)} of {want} heartbeats applied")
        time.sleep(0.01)


def pct(values: list[float], q: int) -> float:
    if not values:
        return 0.0
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) >= 2 else values[0] * 1000


# -- what the nodes send ---------------------------------------------------------------------------


def body_of(load: float, ts: float) -> bytes:
    return b'{"timestamp":%.3f,"load":%.2f,"metadata":{"sim":true}}' % (ts, load)


def batches(items: list[bytes], size: int) -> list[bytes]:
    return [b'{"heartbeats":[' + b",".join(items[i:i + size]) + b"]}" for i in range(0, len(items), size)]
