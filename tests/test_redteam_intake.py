"""A hostile review of the heartbeat intake: the applier (batches applied between ticks),
the connection guard's timers and the single session fast path, each attacked on a real
``wyneos serve`` (and ``wyneos relay``) on 127.0.0.1. Every wait is a bounded loop; no
test asserts a duration."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import pytest
from service_helpers import Node, RawConnection, make_service, wait_for, write_config

from wyneos_core import hookimpl
from wyneos_core.licensing.keys import public_bytes
from wyneos_core.service.server import ServerThread
from wyneos_core.service.sessions import mac

KEY = bytes(range(32))
LIMITS = {"header_timeout": 1.0, "idle_timeout": 1.0, "body_timeout": 1.0}


class Reports:
    """Test plugin: the sum of every tick report's accepted heartbeats and refusals."""

    __wyneos_name__ = "test-reports"

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected = 0
        self.ticks = 0

    @hookimpl
    def wyneos_tick_report(self, ctx: Any, report: Any) -> None:
        self.accepted += report.heartbeats_accepted
        self.rejected += len(report.heartbeats_rejected)
        self.ticks += 1


def _config(tmp_path, interval: float = 0.2, max_queue: int | None = None):
    path = write_config(tmp_path, interval=interval, stale=3600, offline=7200)
    if max_queue is not None:
        path.write_text(path.read_text().replace("unknown_nodes: reject}", f"unknown_nodes: reject, max_queue: {max_queue}}}"))
    return path


@contextmanager
def serving(tmp_path, *, interval: float = 0.2, max_queue: int | None = None, plugins: tuple = (),
            loop: str | None = None, **settings: Any) -> Iterator[tuple[Any, str]]:
    settings = {"heartbeat_burst": 10_000, "heartbeat_rate": 10_000.0, **settings}
    service = make_service(_config(tmp_path, interval, max_queue), plugins, **settings)
    thread = ServerThread(service)
    if loop is not None:  # else the loop serve names
        thread.server.config.loop = loop
    with thread as url:
        service.server_thread = thread
        yield service, url
    assert not thread.thread.is_alive()  # stopped cleanly


def sessions_for(service: Any, ids: list[str]) -> list[str]:
    """Register ``ids`` and open a session (key ``KEY``) for each: their session ids."""
    now = time.time()
    with service.lock:
        for node_id in ids:
            service.keys.set(node_id, public_bytes(Node(node_id).key))
            service.orchestrator.registry.register(node_id, now=now - 60)
    return [service.sessions.issue_ticket(node_id, KEY, now + 600) for node_id in ids]


def item(sid: str, seq: int, body: bytes) -> dict[str, Any]:
    return {"session": sid, "seq": seq, "mac": mac(KEY, seq, body), "body": body.decode()}


def hb_body(timestamp: float, load: float) -> bytes:
    return json.dumps({"timestamp": timestamp, "load": load}).encode()


def session_request(sid: str, seq: int, body: bytes, *, tag: str | None = None, extra: bytes = b"",
                    path: bytes = b"/v1/heartbeats", length: int | None = None) -> bytes:
    tag = mac(KEY, seq, body) if tag is None else tag
    return (b"POST " + path + b" HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"x-wyneos-session: " + sid.encode() + b"\r\nx-wyneos-seq: " + str(seq).encode()
            + b"\r\nx-wyneos-mac: " + tag.encode() + b"\r\ncontent-length: "
            + str(len(body) if length is None else length).encode() + b"\r\n" + extra + b"\r\n" + body)


def endless_head(path: bytes = b"/healthz") -> Iterator[bytes]:
    """A request head that never ends, a line at a time."""
    yield b"GET " + path + b" HTTP/1.1\r\nhost: 127.0.0.1\r\n"
    i = 0
    while True:
        yield b"x-pad-%d: %s\r\n" % (i, b"a" * 20)
        i += 1


def trickle(conn: RawConnection, data: bytes, pause: float = 0.02, most: int = 5000) -> int:
    """Send ``data`` a byte at a time until the server answers or closes (at most ``most``
    bytes): how many were sent."""
    sent = 0
    for byte in data[:most]:
        if conn.answered() or not conn.send(bytes([byte])):
            break
        sent += 1
        time.sleep(pause)
    return sent


def seq_of(service: Any, sid: str) -> int:
    session = service.sessions.get(sid)  # a ticket never used has no session held yet
    return 0 if session is None else session.seq


# -- the applier: every accepted heartbeat applied and reported once, in order -------------------


def test_batches_racing_ticks_are_applied_in_order_and_counted_once(tmp_path):
    """Two relays send rounds of batches while the server ticks every 50 ms: each round
    newer than the last. Whatever the interleaving of the applier and the ticks, every
    node ends on its newest heartbeat, the tick reports add up to what the API accepted,
    and the applied counter counts each heartbeat once."""
    reports = Reports()
    with serving(tmp_path, interval=0.05, plugins=(reports,)) as (service, url):
        ids = [[f"a{k}-{i}" for i in range(12)] for k in range(2)]
        sids = [sessions_for(service, group) for group in ids]
        total = [0, 0]
        last: dict[str, tuple[float, float]] = {}
        rounds = 25

        def relay(k: int) -> None:
            import httpx

            with httpx.Client(base_url=url, timeout=30) as client:
                for r in range(1, rounds + 1):
                    stamp = time.time()
                    items = []
                    for node_id, sid in zip(ids[k], sids[k]):
                        load = round(((r * 7 + len(node_id)) % 100) / 100, 2)
                        items.append(item(sid, r, hb_body(stamp, load)))
                        last[node_id] = (stamp, load)
                    answer = client.post("/v1/heartbeats", content=json.dumps({"heartbeats": items, "acks": True}),
                                         headers={"content-type": "application/json"})
                    assert answer.status_code == 202, answer.text
                    total[k] += answer.json()["accepted"]
                    time.sleep(0.005 * (r % 3))

        threads = [threading.Thread(target=relay, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)
        sent = 2 * 12 * rounds
        assert sum(total) == sent
        wait_for(lambda: len(service.orchestrator.intake) == 0 and service.metrics.applied._value.get() == sent)
        wait_for(lambda: reports.accepted == sent, timeout=30)  # reported by the ticks that followed
        registry = service.orchestrator.registry
        for node_id, (stamp, load) in last.items():
            assert (registry[node_id].last_seen, registry[node_id].load) == (stamp, load), node_id
        ticks = reports.ticks
        wait_for(lambda: reports.ticks >= ticks + 3)
        assert reports.accepted == sent and reports.rejected == 0  # never reported twice
        assert service.metrics.applied._value.get() == sent  # noqa: SLF001 - never counted twice
        assert service.applier.applies >= 1  # the applier did take part


def test_an_older_heartbeat_queued_after_a_newer_one_does_not_move_the_node_back(tmp_path):
    """Within one batch and across batches applied between ticks: a later sequence number
    carrying an older timestamp (within the skew) teaches nothing."""
    import httpx

    with serving(tmp_path, interval=3600) as (service, url), httpx.Client(base_url=url, timeout=30) as client:
        wait_for(lambda: client.get("/healthz").json()["tick"] >= 1)
        sid, sid2 = sessions_for(service, ["o-1", "o-2"])
        now = time.time()
        batch = {"heartbeats": [item(sid, 1, hb_body(now, 0.9)), item(sid, 2, hb_body(now - 5, 0.1))]}
        assert client.post("/v1/heartbeats", content=json.dumps(batch)).status_code == 202
        registry = service.orchestrator.registry
        wait_for(lambda: registry["o-1"].last_seen == now)
        assert registry["o-1"].load == 0.9
        # the same across two batches, each applied on its own between ticks
        r = client.post("/v1/heartbeats", content=json.dumps({"heartbeats": [item(sid2, 1, hb_body(now, 0.8))]}))
        assert r.status_code == 202
        wait_for(lambda: registry["o-2"].last_seen == now)
        applies = service.applier.applies
        r = client.post("/v1/heartbeats", content=json.dumps({"heartbeats": [item(sid2, 2, hb_body(now - 5, 0.2))]}))
        assert r.status_code == 202
        wait_for(lambda: service.applier.applies > applies or len(service.orchestrator.intake) == 0)
        wait_for(lambda: len(service.orchestrator.intake) == 0)
        assert (registry["o-2"].last_seen, registry["o-2"].load) == (now, 0.8)
        assert registry["o-1"].load == 0.9


def test_a_full_queue_refuses_the_whole_batch_and_the_same_items_go_through_later(tmp_path):
    """Nothing of a batch the queue cannot take is queued or recorded: the sessions'
    sequence numbers stay, so the relay's retry of the very same items is accepted and
    applied once."""
    import httpx

    with serving(tmp_path, interval=3600, max_queue=4) as (service, url), \
            httpx.Client(base_url=url, timeout=30) as client:
        wait_for(lambda: client.get("/healthz").json()["tick"] >= 1)
        ids = [f"q-{i}" for i in range(6)]
        sids = sessions_for(service, ids)
        now = time.time()
        items = [item(sid, 1, hb_body(now, 0.5)) for sid in sids]
        registry = service.orchestrator.registry
        before = [registry[i].last_seen for i in ids]
        r = client.post("/v1/heartbeats", content=json.dumps({"heartbeats": items}))
        assert r.status_code == 503 and r.json()["accepted"] == 0, r.text
        assert {x["code"] for x in r.json()["results"]} == {"queue_full"}
        assert [seq_of(service, s) for s in sids] == [0] * 6 and len(service.orchestrator.intake) == 0
        assert [registry[i].last_seen for i in ids] == before
        for part in (items[:4], items[4:]):
            r = client.post("/v1/heartbeats", content=json.dumps({"heartbeats": part}))
            assert r.status_code == 202 and r.json()["accepted"] == len(part), r.text
            wait_for(lambda: len(service.orchestrator.intake) == 0)
        wait_for(lambda: all(registry[i].last_seen == now for i in ids))
        assert service.metrics.applied._value.get() == 6  # noqa: SLF001
        # a replay of the accepted items changes nothing
        r = client.post("/v1/heartbeats", content=json.dumps({"heartbeats": items}))
        assert r.json()["accepted"] == 0
        assert service.tick().heartbeats_accepted == 6


# -- the guard: head and body deadlines, sizes, idle and pipelined connections ---------------------


def test_a_head_trickled_a_byte_at_a_time_is_closed_on_a_fresh_and_on_a_kept_alive_connection(tmp_path):
    with serving(tmp_path, **{**LIMITS, "idle_timeout": 60.0}) as (service, url):  # only the head deadline closes
        sid, = sessions_for(service, ["t-1"])
        fresh = RawConnection(url)
        head = b"".join(part for _, part in zip(range(400), endless_head()))
        sent = trickle(fresh, head)
        assert sent < len(head)  # the server ended it before the head could end
        assert fresh.rest_until_closed().startswith(b"HTTP/1.1 408 ")
        # the same after a heartbeat answered on the connection (the second head's deadline)
        kept = RawConnection(url)
        kept.send(session_request(sid, 1, hb_body(time.time(), 0.5)))
        assert kept.answer().startswith(b"HTTP/1.1 202 ")
        sent = trickle(kept, head)
        assert sent < len(head)
        assert kept.rest_until_closed().startswith(b"HTTP/1.1 408 ")
        # and a head trickled into the same chunk as a whole request before it
        piped = RawConnection(url)
        piped.send(session_request(sid, 2, hb_body(time.time(), 0.5)) + b"GET /healthz HTTP/1.1\r\n")
        assert piped.answer().startswith(b"HTTP/1.1 202 ")
        assert trickle(piped, head[len(b"GET /healthz HTTP/1.1\r\n"):]) < len(head)
        assert piped.rest_until_closed().startswith(b"HTTP/1.1 408 ")
        assert seq_of(service, sid) == 2


@pytest.mark.parametrize("where", ["fresh", "kept alive", "after a pipelined request"])
def test_the_head_size_limit_holds_across_chunks(tmp_path, where):
    with serving(tmp_path, max_header_bytes=4096, header_timeout=30.0) as (service, url):
        sid, = sessions_for(service, ["h-1"])
        conn = RawConnection(url)
        if where == "kept alive":
            conn.send(session_request(sid, 1, hb_body(time.time(), 0.5)))
            assert conn.answer().startswith(b"HTTP/1.1 202 ")
        prefix = session_request(sid, 1, hb_body(time.time(), 0.5)) if where == "after a pipelined request" else b""
        parts = endless_head()
        conn.send(prefix + next(parts))
        if prefix:
            assert conn.answer().startswith(b"HTTP/1.1 202 ")
        sent = 0
        for part in parts:
            if sent > 64 * 1024 or conn.answered() or not conn.send(part):
                break
            sent += len(part)
            time.sleep(0.001)
        assert sent <= 64 * 1024, "the head was never refused"
        rest = conn.rest_until_closed()
        assert rest.startswith(b"HTTP/1.1 431 "), rest[:80]
        assert seq_of(service, sid) == (0 if where == "fresh" else 1)


def test_an_idle_kept_alive_connection_is_closed_and_one_that_keeps_talking_is_not(tmp_path):
    with serving(tmp_path, **LIMITS) as (service, url):
        sid, = sessions_for(service, ["i-1"])
        idle = RawConnection(url)
        idle.send(session_request(sid, 1, hb_body(time.time(), 0.5)))
        assert idle.answer().startswith(b"HTTP/1.1 202 ")
        assert idle.rest_until_closed() == b""  # closed by the server, nothing more said
        # a connection that asks again and again stays open and answered (its timer moved on)
        busy = RawConnection(url)
        began, seq = time.monotonic(), 1
        while seq < 300 and (time.monotonic() - began < 2.5 or seq < 3):  # past idle_timeout, never idle long
            seq += 1
            busy.send(session_request(sid, seq, hb_body(time.time(), 0.5)))
            assert busy.answer().startswith(b"HTTP/1.1 202 "), seq
            time.sleep(0.01)
        assert seq_of(service, sid) == seq
        assert busy.rest_until_closed() == b""  # and closed once it stops


@pytest.mark.parametrize("kind", ["single", "batch", "enrol", "ack"])
def test_a_complete_head_then_a_stalled_body_is_refused_on_every_route(tmp_path, kind):
    with serving(tmp_path, **LIMITS) as (service, url):
        sid, = sessions_for(service, ["b-1"])
        body = hb_body(time.time(), 0.5)
        if kind == "single":
            data = session_request(sid, 1, body)
        else:
            path = {"batch": b"/v1/heartbeats", "enrol": b"/v1/enrol", "ack": b"/v1/nodes/b-1/actions/ack"}[kind]
            payload = json.dumps({"heartbeats": [item(sid, 1, body)]}).encode() if kind == "batch" else b'{"x": 1}'
            data = (b"POST " + path + b" HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                    b"content-length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        conn = RawConnection(url)
        conn.send(data[:-3])  # the head whole, the body three bytes short, never finished
        answer = conn.rest_until_closed()
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
        assert seq_of(service, sid) == 0
        assert len(service.orchestrator.intake) == 0


def test_pipelined_requests_are_answered_in_order_on_both_paths(tmp_path):
    with serving(tmp_path, **LIMITS) as (service, url):
        sid, = sessions_for(service, ["p-1"])
        now = time.time()
        conn = RawConnection(url)
        conn.send(session_request(sid, 1, hb_body(now - 4, 0.1)) + b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
                  + session_request(sid, 2, hb_body(now - 3, 0.2)) + session_request(sid, 2, hb_body(now - 2, 0.3))
                  + session_request(sid, 3, hb_body(now - 1, 0.4), tag="00" * 16)
                  + session_request(sid, 3, hb_body(now, 0.5)))
        statuses = [conn.answer().split(b"\r\n", 1)[0] for _ in range(6)]
        assert [s.split(b" ")[1] for s in statuses] == [b"202", b"200", b"202", b"409", b"401", b"202"], statuses
        assert seq_of(service, sid) == 3
        service.tick()
        assert service.orchestrator.registry["p-1"].last_seen == now
        assert service.orchestrator.registry["p-1"].load == 0.5


def test_silent_and_idle_connections_never_lock_out_a_heartbeat(tmp_path):
    """Twice ``max_connections`` sockets that connect and say nothing, or half a head, or
    are idle after an answer: a heartbeat on a new connection is still answered."""
    with serving(tmp_path, max_connections=8, header_timeout=30.0, idle_timeout=30.0) as (service, url):
        sid, = sessions_for(service, ["c-1"])
        hogs = []
        try:
            for k in range(16):
                hog = RawConnection(url)
                if k % 3 == 1:
                    hog.send(b"GET /healthz HTTP/1.1\r\nhost: 1")
                elif k % 3 == 2:
                    hog.send(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
                    hog.answer()
                hogs.append(hog)
            for seq in (1, 2, 3):
                conn = RawConnection(url)
                conn.send(session_request(sid, seq, hb_body(time.time(), 0.5)))
                assert conn.answer().startswith(b"HTTP/1.1 202 "), seq
                conn.close()
            shed = sum(1 for h in hogs if h.answered())
            assert shed >= 16 - 8  # the excess was closed to make room
        finally:
            for hog in hogs:
                hog.close()


# -- the single fast path: every check, and refusals change nothing -------------------------------


def test_refused_single_heartbeats_change_nothing(tmp_path):
    with serving(tmp_path, **{**LIMITS, "idle_timeout": 60.0}) as (service, url):
        sid, = sessions_for(service, ["f-1"])
        registry = service.orchestrator.registry
        now = time.time()
        conn = RawConnection(url)
        conn.send(session_request(sid, 1, hb_body(now, 0.5)))
        assert conn.answer().startswith(b"HTTP/1.1 202 ")
        wait_for(lambda: registry["f-1"].last_seen == now)

        def state() -> tuple:
            return seq_of(service, sid), registry["f-1"].last_seen, registry["f-1"].load, len(service.orchestrator.intake)

        held = state()
        later = hb_body(now + 1, 0.9)
        cases = [
            ("replayed seq", session_request(sid, 1, later), b"409"),
            ("bad mac", session_request(sid, 2, later, tag="00" * 16), b"401"),
            ("mac of another body", session_request(sid, 2, later, tag=mac(KEY, 2, hb_body(now + 1, 0.1))), b"401"),
            ("mac of another seq", session_request(sid, 2, later, tag=mac(KEY, 3, later)), b"401"),
            # the MAC is checked before the body is decoded: garbage with a bad MAC is 401, not 422
            ("garbage, bad mac", session_request(sid, 2, b"{nope" * 10, tag="00" * 16), b"401"),
            ("unknown session", session_request("x" * len(sid), 2, later), b"401"),
        ]
        for name, data, status in cases:
            conn.send(data)
            answer = conn.answer()
            assert answer.split(b" ")[1] == status, (name, answer[:200])
            assert state() == held, name


def test_a_body_above_the_limit_is_refused_before_it_is_sent(tmp_path):
    with serving(tmp_path, max_request_bytes=2048, **LIMITS) as (service, url):
        sid, = sessions_for(service, ["s-1"])
        for length in (2049, 10**12, 10**30):
            conn = RawConnection(url)
            head = session_request(sid, 1, b"", length=length)
            conn.send(head)  # no body at all: the answer must come from the head alone
            answer = conn.answer()
            # 413 (too large), or 400 from the parser for a length it cannot hold
            assert answer.split(b" ")[1] in (b"413", b"400") if length > 2**63 else answer.startswith(b"HTTP/1.1 413 "), \
                answer[:100]
            conn.close()
        assert seq_of(service, sid) == 0


def test_a_body_longer_than_its_content_length_is_not_taken_as_a_second_heartbeat(tmp_path):
    """The bytes past ``Content-Length`` are the next request: here not a valid one, so
    the connection ends with 400 and nothing of it is applied."""
    with serving(tmp_path, **LIMITS) as (service, url):
        sid, = sessions_for(service, ["l-1"])
        now = time.time()
        body = hb_body(now, 0.5)
        conn = RawConnection(url)
        conn.send(session_request(sid, 1, body, length=len(body)) + b'{"timestamp": 1, "load": 1.0}\r\n\r\n')
        first = conn.answer()
        assert first.startswith(b"HTTP/1.1 202 ")
        rest = conn.rest_until_closed()
        assert rest.startswith(b"HTTP/1.1 400 ") or rest == b"", rest[:100]
        assert seq_of(service, sid) == 1
        service.tick()
        assert service.orchestrator.registry["l-1"].load == 0.5


# -- ``wyneos relay``: the same guard --------------------------------------------------------------


RELAY_LIMITS = {"max_header_bytes": 4096, "header_timeout": 1.0, "idle_timeout": 1.0, "body_timeout": 1.0,
                "max_connections": 8}


def relay_thread(upstream: str, **limits: Any) -> Any:
    from tests.test_sessions_relay import RelayThread
    from wyneos_core.service.relay import Relay

    return RelayThread(Relay(upstream, flush=0.05), **{**RELAY_LIMITS, **limits})


@contextmanager
def relaying(tmp_path, **limits: Any) -> Iterator[tuple[Any, str, str]]:
    with serving(tmp_path) as (service, url), relay_thread(url, **limits) as relay_url:
        yield service, url, relay_url


def test_the_relay_holds_the_guard_limits_on_every_path(tmp_path):
    with relaying(tmp_path, idle_timeout=60.0) as (service, url, relay_url):  # idle: a relay of its own below
        sid, = sessions_for(service, ["r-1"])
        head = b"".join(part for _, part in zip(range(400), endless_head(b"/v1/heartbeats")))
        # a trickled head, on a fresh connection and on one kept alive after an answer
        fresh = RawConnection(relay_url)
        assert trickle(fresh, head) < len(head)
        assert fresh.rest_until_closed().startswith(b"HTTP/1.1 408 ")
        kept = RawConnection(relay_url)
        kept.send(session_request(sid, 1, hb_body(time.time(), 0.5)))
        assert kept.answer().startswith(b"HTTP/1.1 202 ")
        assert trickle(kept, head) < len(head)
        assert kept.rest_until_closed().startswith(b"HTTP/1.1 408 ")
        # a head above the limit
        big = RawConnection(relay_url)
        big.send(head[:3000])
        for part in endless_head():
            if big.answered() or not big.send(part):
                break
        assert big.rest_until_closed().startswith(b"HTTP/1.1 431 ")
        # a complete head, then a stalled body
        stalled = RawConnection(relay_url)
        stalled.send(session_request(sid, 2, hb_body(time.time(), 0.5))[:-2])
        assert stalled.rest_until_closed().startswith(b"HTTP/1.1 408 ")
        # an idle kept-alive connection (a relay closing idle ones after 1 s)
        with relay_thread(url) as quick_url:
            idle = RawConnection(quick_url)
            idle.send(session_request(sid, 2, hb_body(time.time(), 0.5)))
            assert idle.answer().startswith(b"HTTP/1.1 202 ")
            assert idle.rest_until_closed() == b""
        assert seq_of(service, sid) == 2
        # silent sockets past max_connections never lock a heartbeat out
        hogs = [RawConnection(relay_url) for _ in range(16)]
        try:
            conn = RawConnection(relay_url)
            conn.send(session_request(sid, 3, hb_body(time.time(), 0.5)))
            assert conn.answer().startswith(b"HTTP/1.1 202 ")
        finally:
            for hog in hogs:
                hog.close()
        wait_for(lambda: seq_of(service, sid) == 3)


# -- the event loop: the same limits under asyncio's and uvloop's ---------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_guard_limits_hold_under_either_event_loop(tmp_path, loop):
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    with serving(tmp_path, loop=loop, max_header_bytes=4096, **LIMITS) as (service, url):
        running = service.server_thread.server.servers[0].get_loop()
        assert type(running).__module__.split(".")[0] == loop
        sid, = sessions_for(service, ["u-1"])
        now = time.time()
        head = b"".join(part for _, part in zip(range(400), endless_head()))
        trickled = RawConnection(url)
        assert trickle(trickled, head) < len(head)
        assert trickled.rest_until_closed().startswith(b"HTTP/1.1 408 ")
        big = RawConnection(url)
        for part in endless_head():
            if big.answered() or not big.send(part):
                break
        assert big.rest_until_closed().startswith(b"HTTP/1.1 431 ")
        stalled = RawConnection(url)
        stalled.send(session_request(sid, 1, hb_body(now, 0.5))[:-2])
        assert stalled.rest_until_closed().startswith(b"HTTP/1.1 408 ")
        conn = RawConnection(url)
        conn.send(session_request(sid, 1, hb_body(now - 1, 0.25)) + b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
                  + session_request(sid, 1, hb_body(now, 0.75)) + session_request(sid, 2, hb_body(now, 0.75)))
        statuses = [conn.answer().split(b" ")[1] for _ in range(4)]
        assert statuses == [b"202", b"200", b"409", b"202"]
        assert conn.rest_until_closed() == b""  # idle, then closed
        assert seq_of(service, sid) == 2


def test_forged_and_replayed_single_heartbeats_do_not_spend_the_nodes_rate(tmp_path):
    """Who knows a session id (a relay sees them all) but not its key cannot use up the
    node's rate: the MAC and the sequence number are checked before the rate, which is
    charged only when a heartbeat is queued; over the rate, a real heartbeat gets 429 and
    changes nothing."""
    with serving(tmp_path, heartbeat_burst=2, heartbeat_rate=0.001, **{**LIMITS, "idle_timeout": 60.0}) \
            as (service, url):
        sid, = sessions_for(service, ["z-1"])
        now = time.time()
        conn = RawConnection(url)
        conn.send(session_request(sid, 1, hb_body(now - 3, 0.5)))
        assert conn.answer().split(b" ")[1] == b"202"
        for k in range(20):
            forged = session_request(sid, 2 + k, hb_body(now, 0.9), tag=f"{k:032x}")
            replayed = session_request(sid, 1, hb_body(now - 3, 0.5))
            conn.send(forged + replayed)
            assert [conn.answer().split(b" ")[1] for _ in range(2)] == [b"401", b"409"]
        conn.send(session_request(sid, 2, hb_body(now - 2, 0.25)))
        assert conn.answer().split(b" ")[1] == b"202"  # the burst of two: still one left for it
        queued = len(service.orchestrator.intake)
        conn.send(session_request(sid, 3, hb_body(now - 1, 0.75)))
        assert conn.answer().split(b" ")[1] == b"429"
        assert seq_of(service, sid) == 2 and len(service.orchestrator.intake) == queued
        service.tick()
        assert service.orchestrator.registry["z-1"].load == 0.25


# -- ``wyneos serve`` and ``wyneos relay`` with uvloop missing (or present) ------------------------

_RUN_CLI = ("import runpy, sys\n"
            "if sys.argv[1] == 'missing':\n"
            "    sys.modules['uvloop'] = None  # import uvloop raises ImportError, as when not installed\n"
            "sys.argv = ['wyneos', *sys.argv[2:]]\n"
            "runpy.run_module('wyneos_core.cli', run_name='__main__')\n")


def _required(name: str) -> bool:
    import re
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    return any(re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0].strip().lower() == name
               for dep in project.get("dependencies", []))


@pytest.mark.parametrize("uvloop", ["missing", "present"])
def test_serve_and_relay_start_hold_the_limits_and_stop_cleanly_with_uvloop(tmp_path, uvloop):
    import signal
    import subprocess
    import sys

    import httpx
    from service_helpers import end_processes

    if uvloop == "present":
        pytest.importorskip("uvloop")
    elif _required("uvloop"):
        pytest.skip("uvloop is a required dependency: it cannot be missing")
    path = _config(tmp_path)
    path.write_text(path.read_text().replace("replay_window: 60", "replay_window: 60, header_timeout: 1, idle_timeout: 1"))
    procs = []

    def start(*args: str) -> str:
        proc = subprocess.Popen([sys.executable, "-c", _RUN_CLI, uvloop, *args], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        line = proc.stdout.readline()
        assert "listening on" in line, line + (proc.stdout.read() if proc.poll() is not None else "")
        return line.split("listening on ")[1].split()[0].rstrip(",")

    try:
        url = start("serve", "-c", str(path), "--port", "0")
        relay_url = start("relay", "--upstream", url, "--port", "0", "--flush", "0.05", "--header-timeout", "1")
        for target in (url, relay_url):
            assert httpx.get(target + "/healthz", timeout=10).status_code == 200
            conn = RawConnection(target)
            head = b"".join(part for _, part in zip(range(400), endless_head()))
            assert trickle(conn, head) < len(head)
            assert conn.rest_until_closed().startswith(b"HTTP/1.1 408 ")
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, proc.stdout.read()
    finally:
        end_processes(procs)


def test_stopping_while_the_applier_waits_for_a_tick_loses_nothing(tmp_path):
    """The applier woken while a tick holds the lock, and stopped meanwhile: what it
    drained is applied (nothing drained and dropped) or still queued; heartbeats queued
    after it stopped stay queued for the next tick, which applies and reports them all,
    once."""
    from wyneos_core.intake import CheckedHeartbeat

    path = _config(tmp_path, interval=3600)
    path.write_text(path.read_text().replace("unknown_nodes: reject}", "unknown_nodes: reject}\nnodes: [{id: a}, {id: b}]"))
    reports = Reports()
    service = make_service(path, (reports,))
    try:
        orch, applier = service.orchestrator, service.applier
        applier.start()
        now = time.time()
        with service.lock:  # as a tick does
            orch.intake.put_many([CheckedHeartbeat("a", now, 0.5, {})])
            applier.wake()
            wait_for(lambda: not applier._wanted.is_set())  # noqa: SLF001 - taken up: on its way to the lock
            stopper = threading.Thread(target=applier.stop)
            stopper.start()
            wait_for(lambda: applier._stop.is_set())  # noqa: SLF001 - stop asked while the apply waits
        stopper.join(30)
        assert not stopper.is_alive()
        applied = orch.registry["a"].last_seen == now
        assert len(orch.intake) == (0 if applied else 1)  # applied, or still queued: never dropped
        orch.intake.put_many([CheckedHeartbeat("b", now, 0.25, {})])  # after the stop: left for the tick
        applier.wake()
        assert len(orch.intake) == (1 if applied else 2)
        report = service.tick()
        assert report.heartbeats_accepted == 2 and orch.registry["b"].load == 0.25
        assert orch.registry["a"].last_seen == now and len(orch.intake) == 0
        assert service.metrics.applied._value.get() == 2  # noqa: SLF001 - each counted once
        assert service.tick().heartbeats_accepted == 0 and reports.accepted == 2
    finally:
        service.stop()
