"""The connection guard against three holes a red-team review found: a stray line break
after an answer that left a connection without any timer, a whole head above
``max_header_bytes`` in one read that was served, and pipelined complete requests counted
as the head of the request after them. Each on a real ``wyneos serve`` (or ``wyneos
relay``) on 127.0.0.1; every wait is a bounded loop, no test asserts a duration."""

from __future__ import annotations

import socket
import time

import pytest
from service_helpers import RawConnection

from test_redteam_intake import LIMITS, hb_body, relaying, seq_of, serving, session_request, sessions_for


def _closed_within(conn: RawConnection, seconds: float) -> bytes:
    """What the server sent until it closed; fails if it is still open after ``seconds``."""
    conn.sock.settimeout(seconds)
    try:
        return conn.rest_until_closed()
    except socket.timeout:
        pytest.fail(f"the connection is still open {seconds:g} s after its last byte (idle_timeout 1 s)")


# -- a stray line break after an answer ------------------------------------------------------------


@pytest.mark.parametrize("stray", [b"\r\n", b"\n", b"\r\n\r\n\r\n"])
@pytest.mark.parametrize("route", ["single heartbeat", "healthz"])
def test_a_stray_line_break_after_an_answer_is_closed_by_the_idle_timeout(tmp_path, stray, route):
    """The parser skips line breaks between requests without beginning a message: they
    start no head deadline, and must not stop the idle one either."""
    with serving(tmp_path, **LIMITS) as (service, url):  # idle_timeout and header_timeout 1 s
        sid, = sessions_for(service, ["k-1"])
        conn = RawConnection(url)
        if route == "healthz":
            conn.send(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            assert conn.answer().startswith(b"HTTP/1.1 200 ")
        else:
            conn.send(session_request(sid, 1, hb_body(time.time(), 0.5)))
            assert conn.answer().startswith(b"HTTP/1.1 202 ")
        conn.send(stray)
        rest = _closed_within(conn, 20)  # twenty times both deadlines
        assert rest == b"" or rest.startswith(b"HTTP/1.1 408 "), rest[:80]


def test_line_breaks_alone_do_not_keep_an_idle_connection_open(tmp_path):
    """A connection that sends nothing but line breaks after its answer, every 100 ms,
    never begins a request: it is idle, and closed by the idle timeout."""
    with serving(tmp_path, **LIMITS) as (service, url):
        sid, = sessions_for(service, ["k-2"])
        conn = RawConnection(url)
        conn.send(session_request(sid, 1, hb_body(time.time(), 0.5)))
        assert conn.answer().startswith(b"HTTP/1.1 202 ")
        sent = 0
        while sent < 300 and not conn.answered() and conn.send(b"\r\n"):  # at most 30 s: 30 idle timeouts
            sent += 1
            time.sleep(0.1)
        assert sent < 300, "300 line breaks over 30 s and the connection is still open"
        assert _closed_within(conn, 20) == b""
        assert seq_of(service, sid) == 1


def test_the_relay_closes_a_connection_left_with_a_stray_line_break(tmp_path):
    with relaying(tmp_path, **LIMITS) as (service, url, relay_url):
        sid, = sessions_for(service, ["k-3"])
        conn = RawConnection(relay_url)
        conn.send(session_request(sid, 1, hb_body(time.time(), 0.5)))
        assert conn.answer().startswith(b"HTTP/1.1 202 ")
        conn.send(b"\r\n")
        _closed_within(conn, 20)


# -- a whole head above max_header_bytes in one read ------------------------------------------------


def _pad(size: int) -> bytes:
    return b"".join(b"x-pad-%d: %s\r\n" % (i, b"a" * 90) for i in range(size // 100))


@pytest.mark.parametrize("size", [40_000, 100_000])
def test_a_whole_head_above_max_header_bytes_in_one_read_is_refused(tmp_path, size):
    """The single heartbeat route (answered by the fast path): 431, nothing applied."""
    with serving(tmp_path, **LIMITS) as (service, url):  # max_header_bytes 32 KiB
        sid, = sessions_for(service, ["m-1"])
        conn = RawConnection(url)
        conn.send(session_request(sid, 1, hb_body(time.time(), 0.5), extra=_pad(size)))
        answer = conn.rest_until_closed()
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:60]
        assert b"HTTP/1.1 202" not in answer
        assert seq_of(service, sid) == 0


@pytest.mark.parametrize("request_line", [b"GET /healthz HTTP/1.1", b"GET /healthz?" + b"q" * 40_000 + b" HTTP/1.1",
                                          b"POST /v1/heartbeats HTTP/1.1"])
def test_a_whole_head_above_the_limit_is_refused_on_the_asgi_path_too(tmp_path, request_line):
    """Big headers, or a big URL, on routes uvicorn's request cycle serves; and a batch
    of heartbeats (also the ASGI path) whose head is too big: 431, nothing applied."""
    with serving(tmp_path, **LIMITS) as (service, url):
        sid, = sessions_for(service, ["m-2"])
        body = b'{"heartbeats": []}'
        pad = b"" if b"?" in request_line else _pad(40_000)
        conn = RawConnection(url)
        conn.send(request_line + b"\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: "
                  + str(len(body)).encode() + b"\r\n" + pad + b"\r\n" + body)
        answer = conn.rest_until_closed()
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:60]
        assert seq_of(service, sid) == 0


def test_a_head_just_under_the_limit_is_served_in_one_read_in_pieces_and_after_pipelined_requests(tmp_path):
    """What is counted is the head itself: a head of 3.9 KB against a 4 KiB limit is
    served whole, split over many reads, and behind complete requests in the same read."""
    with serving(tmp_path, max_header_bytes=4096, header_timeout=30.0) as (service, url):
        sid, = sessions_for(service, ["m-3"])
        pad = b"".join(b"x-pad-%d: %s\r\n" % (i, b"a" * 40) for i in range(70))
        whole = session_request(sid, 1, hb_body(time.time(), 0.5), extra=pad)
        assert 3800 < len(whole.partition(b"\r\n\r\n")[0]) < 4000
        conn = RawConnection(url)
        conn.send(whole)
        assert conn.answer().startswith(b"HTTP/1.1 202 ")
        pieces = session_request(sid, 2, hb_body(time.time(), 0.5), extra=pad)
        for start in range(0, len(pieces), 500):
            conn.send(pieces[start:start + 500])
            time.sleep(0.01)
        assert conn.answer().startswith(b"HTTP/1.1 202 ")
        now = time.time()
        piped = b"".join(session_request(sid, seq, hb_body(now, 0.5), extra=pad) for seq in range(3, 13))
        last = session_request(sid, 13, hb_body(now, 0.5), extra=pad)
        conn.send(piped + last[:3000])
        assert [conn.answer().split(b" ")[1] for _ in range(10)] == [b"202"] * 10
        conn.send(last[3000:])
        assert conn.answer().startswith(b"HTTP/1.1 202 ")
        assert seq_of(service, sid) == 13


# -- pipelined complete requests are not the next head ------------------------------------------


@pytest.mark.parametrize("route", ["single heartbeat", "healthz"])
def test_pipelined_complete_requests_are_not_counted_as_the_next_head(tmp_path, route):
    """200 pipelined requests (about 46 KB, above the 32 KiB limit together) then the
    first line of one more in the same send: all answered, and the last one too."""
    with serving(tmp_path, **LIMITS) as (service, url):
        sid, = sessions_for(service, ["pp-1"])
        now = time.time()
        if route == "healthz":
            requests = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-pad: " + b"a" * 200 + b"\r\n\r\n"
            requests *= 200
            expected = b"200"
        else:
            requests = b"".join(session_request(sid, seq, hb_body(now, 0.5)) for seq in range(1, 201))
            expected = b"202"
        assert len(requests) > 32 * 1024
        conn = RawConnection(url)
        conn.send(requests + b"GET /healthz HTTP/1.1\r\n")
        statuses = [conn.answer().split(b" ")[1] for _ in range(200)]
        assert set(statuses) == {expected}
        conn.send(b"host: 127.0.0.1\r\n\r\n")
        assert conn.answer().startswith(b"HTTP/1.1 200 "), "the 201st request was refused"


# -- the same under uvloop ---------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_three_holes_stay_closed_under_either_event_loop(tmp_path, loop):
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    with serving(tmp_path, loop=loop, **LIMITS) as (service, url):
        sid, = sessions_for(service, ["e-1"])
        now = time.time()
        stray = RawConnection(url)
        stray.send(session_request(sid, 1, hb_body(now, 0.5)))
        assert stray.answer().startswith(b"HTTP/1.1 202 ")
        stray.send(b"\r\n")
        assert _closed_within(stray, 20) == b""
        big = RawConnection(url)
        big.send(session_request(sid, 2, hb_body(now, 0.5), extra=_pad(100_000)))
        assert big.rest_until_closed().startswith(b"HTTP/1.1 431 ")
        piped = RawConnection(url)
        piped.send(b"".join(session_request(sid, seq, hb_body(now, 0.5)) for seq in range(2, 202))
                   + b"GET /healthz HTTP/1.1\r\n")
        assert [piped.answer().split(b" ")[1] for _ in range(200)] == [b"202"] * 200
        piped.send(b"host: 127.0.0.1\r\n\r\n")
        assert piped.answer().startswith(b"HTTP/1.1 200 ")
        assert seq_of(service, sid) == 201
