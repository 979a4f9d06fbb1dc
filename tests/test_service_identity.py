"""Node signatures: libsodium verification (interoperable with ``cryptography`` keys,
stricter than it), and the threaded batch path giving the same answer per item."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from service_helpers import Node, add_token, make_service, write_config

from wyneos_core.licensing.keys import generate_key, public_bytes
from wyneos_core.service.outcomes import ItemResult
from wyneos_core.service.signed_intake import verify_chunk
from wyneos_core.service.identity import SignedItem, b64e, sign_request, verify_signature
from wyneos_core.service.server import ServerThread

#: the group order of Ed25519
L = 2**252 + 27742317777372353535851937790883648493
#: the identity point (small order), canonical and non-canonical (y = 1 + p) encodings
IDENTITY = bytes([1]) + bytes(31)
IDENTITY_NON_CANONICAL = (2**255 - 18).to_bytes(32, "little")
#: R = the base point, S = 1: "valid" for every message under an identity key ([1]B = B + [k]O)
FORGERY = bytes.fromhex("58" + "66" * 31) + (1).to_bytes(32, "little")


def test_signatures_made_by_cryptography_verify_and_any_change_is_refused():
    key = generate_key()
    raw = public_bytes(key)
    message = b"wyneos-sig-v1\nPOST\n/v1/heartbeats\nn1\n1.000\nnonce\nabc"
    signature = key.sign(message)
    assert verify_signature(raw, signature, message)
    assert not verify_signature(raw, signature, message + b"x")
    assert not verify_signature(raw, signature[:-1] + bytes([signature[-1] ^ 1]), message)
    assert not verify_signature(public_bytes(generate_key()), signature, message)
    assert not verify_signature(raw, signature[:63], message)
    assert not verify_signature(raw[:31], signature, message)


def test_stricter_than_cryptography_on_weak_keys_and_non_canonical_signatures():
    message = b"anything at all"
    for weak in (IDENTITY, IDENTITY_NON_CANONICAL):
        Ed25519PublicKey.from_public_bytes(weak).verify(FORGERY, message)  # cryptography: accepted (!)
        assert not verify_signature(weak, FORGERY, message)
    key = generate_key()
    signature = key.sign(message)
    s = int.from_bytes(signature[32:], "little")
    malleated = signature[:32] + (s + L).to_bytes(32, "little")  # same point equation, S not reduced
    assert not verify_signature(public_bytes(key), malleated, message)


def test_a_weak_key_cannot_enrol(tmp_path):
    service = make_service(write_config(tmp_path))
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        body = json.dumps({"node_id": "weak", "public_key": b64e(IDENTITY), "token": add_token(service)}).encode()
        headers = {"x-wyneos-node": "weak", "x-wyneos-timestamp": f"{time.time():.3f}",
                   "x-wyneos-nonce": "n" * 22, "x-wyneos-signature": b64e(FORGERY)}
        r = client.post("/v1/enrol", content=body, headers=headers)
        assert r.status_code == 401 and r.json()["code"] == "bad_signature"
        assert "weak" not in service.keys and "weak" not in service.orchestrator.registry
        with service.db_lock:
            assert [row for row in service.db.node_keys() if row["node_id"] == "weak"] == []


@pytest.fixture
def enrolled(tmp_path):
    service = make_service(write_config(tmp_path), verify_threads=2)
    nodes = [Node(f"t{i:03d}") for i in range(120)]
    token = add_token(service, uses=len(nodes))
    for node in nodes:
        body, headers = node.enrol_request(token)
        assert service.enrol(SignedItem.from_headers(headers, body))[0] == 201
    yield service, nodes
    service.stop()


def _item(node: Node, body: dict, **sign) -> SignedItem:
    raw = json.dumps(body).encode()
    h = sign_request(node.key, node.id, "POST", "/v1/heartbeats", raw, **sign)
    return SignedItem(node.id, h["x-wyneos-timestamp"], h["x-wyneos-nonce"], h["x-wyneos-signature"], raw)


def test_threaded_batch_verification_answers_like_one_thread_item_by_item(enrolled):
    service, nodes = enrolled
    items, expected = [], []
    for i, node in enumerate(nodes):
        kind = i % 8
        if kind == 1:  # signed, then tampered
            item = _item(node, {"load": 0.5})
            item.body = item.body.replace(b"0.5", b"0.9")
            code = "bad_signature"
        elif kind == 2:  # signed by another node's key
            item = _item(node, {"load": 0.5})
            item.signature = _item(nodes[i - 1], {"load": 0.5}).signature
            code = "bad_signature"
        elif kind == 3:
            item = _item(Node(f"ghost-{i}"), {"load": 0.5})
            code = "not_enrolled"
        elif kind == 4:
            item = _item(node, {"node_id": nodes[0].id, "load": 0.5})
            code = "node_mismatch"
        elif kind == 5:
            item = _item(node, {"load": 0.5, "colour": "red"})
            code = "invalid"
        elif kind == 6:
            item = _item(node, {"load": 0.5}, timestamp=time.time() - 3600)
            code = "stale_timestamp"
        else:
            item = _item(node, {"load": round(i / 1000, 3), "metadata": {"i": i}})
            code = "accepted"
        items.append(item)
        expected.append(code)
    items.append(items[0])  # replayed inside the batch
    expected.append("replay")
    now = time.time()
    threaded = service.verify_all(items, now)
    serial = verify_chunk(items, service.keys)
    assert len(threaded) == len(items) >= 64  # big enough for the verifier threads
    assert [_summary(v) for v in threaded] == [_summary(v) for v in serial]
    results = service.accept(items, threaded, now)
    assert [r.code for r in results] == expected
    assert [r.status for r in results if r.code == "invalid"] == [422] * expected.count("invalid")
    assert {r.field for r in results if r.code == "invalid"} == {"colour"}
    queued = {hb.node_id: hb for hb in service.orchestrator.intake.drain()}
    accepted = [n for n, code in zip(nodes, expected) if code == "accepted"]
    assert sorted(queued) == sorted(n.id for n in accepted)
    sample = accepted[3]
    assert queued[sample.id].metadata == {"i": nodes.index(sample)}
    assert queued[sample.id].fingerprint == service.keys.fingerprint(sample.id)


def _summary(v: object) -> tuple:
    if isinstance(v, ItemResult):
        return ("refused", v.status, v.code)
    problem = v.problem  # type: ignore[attr-defined]
    return ("verified", v.ts, None if problem is None else problem.code,  # type: ignore[attr-defined]
            None if v.heartbeat is None else (v.heartbeat.node_id, v.heartbeat.load))  # type: ignore[attr-defined]


def test_malformed_batch_items_are_refused_one_by_one():
    from wyneos_core.service.heartbeat_api import parse_batch

    good = {"node": "n1", "timestamp": "1.0", "nonce": "n" * 22, "signature": "AAAA", "body": "{}"}
    raw = [good, {**good, "node": 7}, {k: v for k, v in good.items() if k != "nonce"}, "text", None,
           {**good, "body": "\ud800"}]
    items, early, _ = parse_batch(json.dumps({"heartbeats": raw}).encode(), 100)
    assert len(items) == 6 and sorted(early) == [1, 2, 3, 4, 5]
    assert {r.code for r in early.values()} == {"malformed"} and early[5].field == "heartbeats[5]"
    assert items[0].body == b"{}" and items[0].node_id == "n1"
