"""Connection-level attacks on ``wyneos serve`` (issue 9, breaks 1-2): giant request
heads, heads and bodies that trickle, sockets that say nothing, and more sockets than
the limit, on a real uvicorn server on 127.0.0.1 with raw sockets."""

from __future__ import annotations

import select
import socket
import time

import httpx
import pytest
from service_helpers import Node, add_token, make_service, write_config

from wyneos_core.service.server import ServerThread

LIMITS = {"max_header_bytes": 8192, "header_timeout": 1.0, "body_timeout": 1.0, "idle_timeout": 2.0,
          "max_connections": 24}


@pytest.fixture
def served(tmp_path):
    service = make_service(write_config(tmp_path), **LIMITS)
    with ServerThread(service) as url:
        yield service, url


def _address(url: str) -> tuple[str, int]:
    host, port = url.rsplit("//", 1)[1].split(":")
    return host, int(port)


def _read_all(sock: socket.socket, limit: int = 65536) -> bytes:
    """What the server sends until it closes the connection (socket timeout: 10 s)."""
    data = b""
    while len(data) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_a_giant_request_head_is_cut_with_431_after_the_limit(served):
    service, url = served
    sock = socket.create_connection(_address(url), timeout=10)
    sent = 0
    line = b"X-Pad: " + b"a" * 1000 + b"\r\n"
    refused_after = None
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(128 * 1024):  # up to 128 MB of header lines
            sock.sendall(line * 64)
            sent += len(line) * 64
    except (BrokenPipeError, ConnectionResetError):
        refused_after = sent
    assert refused_after is not None, "the server read 128 MB of headers"
    # the socket buffers of both ends hold a few MB at most: the server stopped reading early
    assert refused_after < 32 * 1024 * 1024
    sock.close()
    # a head just over the limit gets the status
    sock = socket.create_connection(_address(url), timeout=10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"b" * 9000)
    assert _read_all(sock).startswith(b"HTTP/1.1 431 ")
    sock.close()
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/healthz").status_code == 200


def test_a_trickling_head_and_a_silent_socket_are_closed_at_the_deadline(served):
    service, url = served
    slow = socket.create_connection(_address(url), timeout=10)
    slow.sendall(b"GET /healthz HTTP/1.1\r\n")
    silent = socket.create_connection(_address(url), timeout=10)
    for _ in range(3):  # trickles a header line now and then, never finishes the head
        slow.sendall(b"X-A: b\r\n")
        time.sleep(0.3)
    assert _read_all(slow).startswith(b"HTTP/1.1 408 ")  # closed, not left hanging (recv would time out)
    assert _read_all(silent) == b""
    slow.close()
    silent.close()


def test_a_trickling_body_is_refused_with_408(served):
    service, url = served
    node = Node("edge-1")
    with httpx.Client(base_url=url, timeout=10) as client:
        body, headers = node.enrol_request(add_token(service))
        assert client.post("/v1/enrol", content=body, headers=headers).status_code == 201
    body, headers = node.heartbeat()
    sock = socket.create_connection(_address(url), timeout=10)
    head = "POST /v1/heartbeats HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(head.encode() + f"content-length: {len(body)}\r\n\r\n".encode() + body[:5])
    answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"body_timeout" in answer
    sock.close()
    assert len(service.orchestrator.intake) == 0


def test_idle_and_slow_sockets_are_shed_so_heartbeats_enrolment_and_healthz_go_on(tmp_path):
    # a long head deadline: only shedding can make room here
    service = make_service(write_config(tmp_path), **{**LIMITS, "header_timeout": 60.0})
    hostile = []
    with ServerThread(service) as url:
        try:
            for i in range(3 * LIMITS["max_connections"]):
                s = socket.create_connection(_address(url), timeout=10)
                if i % 2:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")  # a head that never ends
                hostile.append(s)
            node = Node("edge-2")
            with httpx.Client(base_url=url, timeout=10) as client:
                assert client.get("/healthz").status_code == 200
                body, headers = node.enrol_request(add_token(service))
                assert client.post("/v1/enrol", content=body, headers=headers).status_code == 201
                for _ in range(5):
                    body, headers = node.heartbeat()
                    assert client.post("/v1/heartbeats", content=body, headers=headers).status_code == 202
                assert client.get("/v1/nodes").status_code == 200
            # the oldest hostile sockets were closed by the server to make room, the newest kept
            closed: set[socket.socket] = set()
            for _ in range(10):  # until a round finds no more closed sockets
                readable, _, _ = select.select([s for s in hostile if s not in closed], [], [], 1.0)
                for s in readable:
                    try:
                        if s.recv(4096) == b"":
                            closed.add(s)
                    except ConnectionResetError:
                        closed.add(s)
                if not readable:
                    break
            closed = len(closed)
            assert 2 * LIMITS["max_connections"] - 8 <= closed < 3 * LIMITS["max_connections"]
        finally:
            for s in hostile:
                s.close()


def test_connection_settings_are_checked(tmp_path):
    from wyneos_core.config import ConfigError

    for key, value in (("max_header_bytes", 10), ("max_connections", 0), ("header_timeout", 0),
                       ("read_token", 5), ("heartbeat_burst", 0)):
        with pytest.raises(ConfigError) as err:
            make_service(write_config(tmp_path), **{key: value})
        assert f"plugins.settings.service.{key}" in str(err.value)
