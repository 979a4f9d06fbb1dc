"""Single session heartbeats answered in the HTTP protocol (``service.fast_single``) answer
byte for byte what the ASGI route answers, for good and bad requests, on a real uvicorn
server on 127.0.0.1: the same request sent as ``POST /v1/heartbeats`` (taken by the
protocol) and as ``POST /v1/heartbeats?asgi`` (a query string: the ASGI way), through two
sessions of the same node with the same key, with the route's clock held still. Only
uvicorn's ``date`` header may differ (the second may turn)."""

from __future__ import annotations

import json
import re
import time

import pytest
from service_helpers import Node, RawConnection, make_service, write_config

from wyneos_core.licensing.keys import public_bytes
from wyneos_core.service import heartbeat_api
from wyneos_core.service.server import ServerThread
from wyneos_core.service.sessions import mac

KEY = bytes(range(32))


def request(path: str, sid: str, seq: str, tag: str, body: bytes, *, host: bytes = b"127.0.0.1",
            extra: bytes = b"") -> bytes:
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nhost: " + host + b"\r\ncontent-type: application/json\r\n"
            b"x-wyneos-session: " + sid.encode() + b"\r\nx-wyneos-seq: " + seq.encode() + b"\r\nx-wyneos-mac: "
            + tag.encode() + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


def undated(answer: bytes) -> bytes:
    return re.sub(rb"date: [^\r]*\r\n", b"date: -\r\n", answer)


@pytest.fixture
def served(tmp_path, monkeypatch):
    service = make_service(write_config(tmp_path, interval=0.2, stale=5, offline=10), heartbeat_burst=100,
                           body_timeout=1.0)
    service.keys.set("f-1", public_bytes(Node("f-1").key))
    service.orchestrator.registry.register("f-1", now=time.time())
    frozen = time.time()

    class Clock:  # the route's clock held still: both answers carry the same server_time
        @staticmethod
        def time() -> float:
            return frozen

    monkeypatch.setattr(heartbeat_api, "time", Clock)
    thread = ServerThread(service)
    with thread as url:
        yield service, url, frozen, thread.server.config.http.single


def test_the_protocol_answers_single_session_heartbeats_as_the_asgi_route_does(served):
    service, url, now, single = served
    fast_sid = service.sessions.issue_ticket("f-1", KEY, now + 600)
    asgi_sid = service.sessions.issue_ticket("f-1", KEY, now + 600)
    good = json.dumps({"timestamp": now, "load": 0.5, "metadata": {"rack": "r1"}}).encode()
    cases = [  # name, seq, body, tag (None: the right MAC), more head lines
        ("accepted", "1", good, None, b""),
        ("accepted again", "2", json.dumps({"timestamp": now, "load": 0.25}).encode(), None, b""),
        ("replay", "2", good, None, b""),
        ("bad mac", "3", good, "00" * 16, b""),
        ("seq not a number", "x3", good, "00" * 16, b""),
        ("body not JSON", "3", b"{nope", None, b""),
        ("unknown field", "4", b'{"load": 0.5, "colour": "red"}', None, b""),
        ("load out of range", "5", json.dumps({"timestamp": now, "load": -1}).encode(), None, b""),
        ("timestamp ahead", "6", json.dumps({"timestamp": now + 1e6}).encode(), None, b""),
        ("another node's", "7", json.dumps({"node_id": "f-2"}).encode(), None, b""),
        ("reserved metadata", "8", json.dumps({"metadata": {"restrictions": []}}).encode(), None, b""),
        ("empty body", "9", b"", None, b""),
        ("more headers", "10", good, None, b"x-other: 1\r\n"),
        ("closes", "11", good, None, b"connection: close\r\n"),
    ]
    fast, asgi = RawConnection(url), RawConnection(url)
    before = single.answered
    for name, seq, body, tag, extra in cases:
        tag = tag if tag is not None else mac(KEY, int(seq), body)
        a = fast.ask(request("/v1/heartbeats", fast_sid, seq, tag, body, extra=extra))
        b = asgi.ask(request("/v1/heartbeats?asgi", asgi_sid, seq, tag, body, extra=extra))
        assert undated(a) == undated(b), name
    assert fast.closed() and asgi.closed()  # the last asked to close: both did
    assert single.answered - before == len(cases)  # every one of the first kind was answered in the protocol
    assert service.sessions.get(fast_sid).seq == service.sessions.get(asgi_sid).seq == 11


def test_the_statuses_cover_acceptance_and_every_refusal(served):
    """The cases above are not all one answer: each path's statuses, asked one by one."""
    service, url, now, single = served
    sid = service.sessions.issue_ticket("f-1", KEY, now + 600)
    conn = RawConnection(url)
    body = json.dumps({"timestamp": now, "load": 0.5}).encode()
    seen = []
    for seq, raw, tag in [("1", body, None), ("1", body, None), ("2", body, "00" * 16), ("2", b"{", None),
                          ("3", json.dumps({"node_id": "f-2"}).encode(), None)]:
        answer = conn.ask(request("/v1/heartbeats", sid, seq, tag or mac(KEY, int(seq), raw), raw))
        seen.append(int(answer[9:12]))
    assert seen == [202, 409, 401, 422, 403]
    answer = conn.ask(request("/v1/heartbeats", "no-such-session", "4", "00" * 16, body))
    assert answer.startswith(b"HTTP/1.1 401 ") and b"unknown_session" in answer
    assert single.answered == 6


@pytest.mark.parametrize("case", ["too large", "bad host", "length not a number"])
def test_requests_the_protocol_does_not_take_are_refused_the_asgi_way(served, case):
    """A body over the limit (413, before it is read), a Host that is not loopback (421) and
    a Content-Length that is not a number (422) are left to the ASGI route: same answers."""
    service, url, now, single = served
    sid = service.sessions.issue_ticket("f-1", KEY, now + 600)
    answers = []
    for path in ("/v1/heartbeats", "/v1/heartbeats?asgi"):
        conn = RawConnection(url)
        if case == "too large":
            data = request(path, sid, "1", "00" * 16, b"") .replace(
                b"content-length: 0", b"content-length: " + str(service.settings.max_request_bytes + 1).encode())
        elif case == "bad host":
            data = request(path, sid, "1", "00" * 16, b"{}", host=b"evil.example")
        else:
            data = request(path, sid, "1", "00" * 16, b"").replace(b"content-length: 0", b"content-length: 1x")
        try:
            answers.append(undated(conn.ask(data)))
        except ConnectionError as exc:  # the parser refused the head itself: so must both
            answers.append(str(exc).encode()[:40])
    assert answers[0] == answers[1]
    assert single.answered == 0
    assert service.sessions.get(sid) is None or service.sessions.get(sid).seq == 0


def test_a_trickling_body_is_refused_with_408_and_closed(served):
    service, url, now, single = served
    sid = service.sessions.issue_ticket("f-1", KEY, now + 600)
    answers = []
    for path in ("/v1/heartbeats", "/v1/heartbeats?asgi"):
        conn = RawConnection(url)
        conn.sock.sendall(request(path, sid, "1", "00" * 16, b"{}")[:-1])  # one byte short, never sent
        answers.append(undated(conn.answer()))
        assert conn.closed()
    assert answers[0] == answers[1] and answers[0].startswith(b"HTTP/1.1 408 ") and b"body_timeout" in answers[0]
    assert single.answered == 0 and single.timed_out == 1  # the first taken by the protocol, timed out there
