"""The peer endpoint gives a whole request (head and body) one deadline of PEER_TIMEOUT.

A socket timeout bounds each read, not a request: a request trickled a byte at a time,
each byte within the timeout of the last, would hold one of the MAX_PEER_CONNECTIONS
threads for as long as the sender likes, and that many such sockets keep every witness
ping out. (The first test is the red-team review's, as it found the bug.)
"""

from __future__ import annotations

import time

from service_helpers import RawConnection, wait_for

from wyneos_core.licensing.keys import fingerprint, generate_key, public_bytes
from wyneos_core.service.orchestrator_key import OrchestratorKey
from wyneos_core.service.peer import MAX_PEER_CONNECTIONS, NEIGHBOURS_FORMAT, PEER_TIMEOUT, PeerNode

PING_LINE = b"GET /v1/peer/ping?nonce=" + b"n" * 60 + b" HTTP/1.1\r\nhost: 127.0.0.1\r\n"


def test_the_peer_endpoint_closes_a_request_trickled_past_its_deadline(tmp_path):
    """peer.py's docstring: "a connection that does not deliver its request within
    PEER_TIMEOUT seconds is closed". The handler's ``timeout = PEER_TIMEOUT`` is a socket
    timeout per read, so a request line trickled a byte a second holds its thread (one of
    MAX_PEER_CONNECTIONS = 64) for as long as the sender likes: 64 such sockets keep every
    witness ping out."""
    okey = OrchestratorKey.for_state(tmp_path / "state.db")
    peer = PeerNode("b", generate_key(), okey.keyring(), interval=60).start()
    try:
        conn = RawConnection("http://" + peer.address)
        line = PING_LINE
        sent = 0
        for byte in line[:41]:  # a byte every 0.5 s, each within PEER_TIMEOUT of the last
            if conn.answered() or not conn.send(bytes([byte])):
                break
            sent += 1
            time.sleep(PEER_TIMEOUT / 4)
        assert sent < 10 * PEER_TIMEOUT / (PEER_TIMEOUT / 4), \
            f"{sent} bytes over {sent * PEER_TIMEOUT / 4:g} s and the connection is still open"
    finally:
        peer.close()


def _trickle_until_closed(conns: list[RawConnection], data: bytes, every: float) -> list[RawConnection]:
    """Send ``data`` a byte at a time to every connection, a byte each ``every`` seconds,
    while the server keeps it open; the connections still open when ``data`` runs out."""
    open_ = list(conns)
    for byte in data:
        open_ = [c for c in open_ if not c.answered() and c.send(bytes([byte]))]
        if not open_:
            break
        time.sleep(every)
    return open_


def test_a_body_trickled_past_the_deadline_is_not_read_and_the_connection_closed(tmp_path):
    okey = OrchestratorKey.for_state(tmp_path / "state.db")
    peer = PeerNode("b", generate_key(), okey.keyring(), interval=60).start()
    taken = []
    peer.on_relay = lambda sender, envelopes: taken.append(sender) or {"node": "b", "acks": [], "refusals": []}
    try:
        body = b'{"from": "a", "envelopes": [{}]}' + b" " * 60
        conn = RawConnection("http://" + peer.address)
        assert conn.send(b"POST /v1/peer/relay HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                         b"content-length: " + str(len(body)).encode() + b"\r\n\r\n")
        # the head came at once; the body a byte every PEER_TIMEOUT / 4 (92 bytes: 23 deadlines)
        assert _trickle_until_closed([conn], body, PEER_TIMEOUT / 4) == [], \
            "a body trickled for 23 deadlines was still being read"
        conn.sock.settimeout(30)
        rest = conn.rest_until_closed()  # closed; at most a 408 on the way
        assert rest == b"" or rest.startswith(b"HTTP/1.0 408 "), rest[:80]
        assert taken == []
    finally:
        peer.close()


def test_trickling_sockets_on_every_slot_do_not_lock_a_witness_ping_out(tmp_path):
    """MAX_PEER_CONNECTIONS connections trickling requests fill every thread of the
    endpoint; once their deadline passes they are closed, and a witness probe is
    answered while the tricklers would still be sending."""
    okey = OrchestratorKey.for_state(tmp_path / "state.db")
    target = PeerNode("b", generate_key(), okey.keyring(), interval=60).start()
    prober = PeerNode("a", generate_key(), okey.keyring(), interval=60)
    conns: list[RawConnection] = []
    try:
        conns = [RawConnection("http://" + target.address) for _ in range(MAX_PEER_CONNECTIONS)]
        conns.append(RawConnection("http://" + target.address))  # one more: shed, as every slot is taken
        wait_for(lambda: target.server.shed == 1, timeout=10)
        # each trickler sends a byte every PEER_TIMEOUT / 4 for 20 deadlines: the server
        # closes every one of them long before (bounded loop; no timing asserted)
        still_open = _trickle_until_closed(conns, PING_LINE[:81], PEER_TIMEOUT / 4)
        assert still_open == [], f"{len(still_open)} of {len(conns)} trickling connections still open"
        assert prober.update(okey.seal(NEIGHBOURS_FORMAT, {
            "node": "a", "tick": 1, "issued_at": int(time.time()),
            "neighbours": [{"id": "b", "address": target.address,
                            "fingerprint": fingerprint(public_bytes(target.key))}]}))
        wait_for(lambda: prober.probe_round() and prober.report()[0]["reachable"], timeout=30)
        (obs,) = prober.report()
        assert obs["subject"] == "b" and obs["reachable"] is True
    finally:
        for c in conns:
            c.close()
        target.close()
        prober.close()
