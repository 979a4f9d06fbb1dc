"""The usual session batch answered whole (``HeartbeatAPI._usual_batch``,
``SessionIntake.accept_usual``, ``SessionTable.check_all``): every answer, byte for byte,
and the state after it (sessions' sequence numbers, rate buckets and last metadata, the
registry after the tick) are what the same request gets from the item-by-item path, on
random batches with hostile items: bad, short, non-ASCII MACs, replays, unknown and
expired sessions, revoked keys, a node twice, bodies that do not decode or name another
node, new or reserved metadata, out-of-range numbers, extra item fields, oversize
batches, a spent rate. A request refused whole changes nothing."""

from __future__ import annotations

import json
import math
import random
import time

import httpx
import pytest
from service_helpers import Node, make_service, write_config

from wyneos_core.licensing.keys import public_bytes
from wyneos_core.service import session_intake
from wyneos_core.service.heartbeat_api import HeartbeatAPI, TooLarge
from wyneos_core.service.identity import sign_request
from wyneos_core.service.server import ServerThread
from wyneos_core.service.sessions import ack_mac, mac

IDS = [f"f-{i:02d}" for i in range(24)]
MAX_BATCH = 40
PUBLIC = {node_id: public_bytes(Node(node_id).key) for node_id in IDS}  # the same enrolled keys on both twins


def twin(tmp_path, name: str, usual: bool):
    folder = tmp_path / name
    folder.mkdir()
    service = make_service(write_config(folder, interval=0.2, stale=5, offline=10), heartbeat_burst=6,
                           heartbeat_rate=0.5, max_batch=MAX_BATCH)
    now = time.time()
    for node_id in IDS:
        service.keys.set(node_id, PUBLIC[node_id])
    for i, node_id in enumerate(IDS[:-1]):  # the last one is enrolled, not registered
        service.orchestrator.registry.register(node_id, now=now,
                                               fingerprint=service.keys.fingerprint(node_id) if i % 3 else None)
    api = HeartbeatAPI(service)
    if not usual:
        api._usual_batch = lambda body, now: None  # noqa: SLF001 - the item-by-item path, for comparison
    return service, api


def watched(api: HeartbeatAPI) -> list:
    """What ``accept_usual`` answers on ``api``, call by call (None: it left the batch)."""
    seen: list = []
    accept_usual = api.intake.accept_usual
    api.intake.accept_usual = lambda *a: seen.append(r := accept_usual(*a)) or r
    return seen


def answer(api: HeartbeatAPI, body: bytes):
    try:
        return api.batch(body)
    except TooLarge as exc:
        return "413", str(exc)


def item_bytes(sid: str, seq, tag, raw: bytes, extra: str = "") -> bytes:
    return ('{"session":%s,"seq":%s,"mac":%s,"body":%s%s}' % (
        json.dumps(sid), json.dumps(seq), json.dumps(tag), json.dumps(raw.decode("utf-8", "surrogatepass")),
        extra)).encode("utf-8", "surrogatepass")


def good_body(rng: random.Random, now: float) -> bytes:
    data: dict = {"timestamp": round(now - rng.random(), 3), "load": rng.choice([0.5, 1.25, 0])}
    if rng.random() < 0.6:
        data["metadata"] = {"sim": True}
    return json.dumps(data).encode()


def bad_body(rng: random.Random, now: float, node_id: str) -> bytes:
    return rng.choice([
        b"{not json", b'{"load": 1e400}', b'{"load": -1}', b'{"load": 1e9}', b'{"timestamp": 1e300}',
        json.dumps({"timestamp": now - 1e4}).encode(), json.dumps({"timestamp": now + 1e4}).encode(),
        b'{"surprise": 1}', json.dumps({"node_id": "f-00" if node_id != "f-00" else "f-01"}).encode(),
        b'{"metadata": {"sim": 1}}', b'{"metadata": {"restrictions": ["x"]}}', b'{"licence_ref": "lic-1"}',
        b'{"metrics": {"nope": 1.0}}', b'{"metadata": {"new": "value"}}', b"[]", b'"\xed\xa0\x80"',
    ])


def hostile_item(rng: random.Random, now: float, node_id: str, sid: str, seq: int, key: bytes) -> bytes:
    kind = rng.randrange(12)
    raw = good_body(rng, now)
    if kind == 0:
        return item_bytes(sid, seq, "00" * 16, raw)  # bad MAC
    if kind == 1:
        return item_bytes(sid, seq, "é" * 32, raw)  # non-ASCII MAC
    if kind == 2:
        return item_bytes(sid, seq, mac(key, seq, raw)[:-1], raw)  # short MAC
    if kind == 3:
        return item_bytes(sid, max(1, seq - 5), mac(key, max(1, seq - 5), raw), raw)  # replay
    if kind == 4:
        return item_bytes("nope." + sid[-20:], seq, mac(key, seq, raw), raw)  # unknown session
    if kind == 5:
        seq_value = rng.choice([0, -1, 2**63, 2**70, "7", None, True, 1.5])
        return item_bytes(sid, seq_value, mac(key, 1, raw), raw)
    if kind == 6:
        return item_bytes(sid, seq, mac(key, seq, raw), raw, ', "node": null')  # an extra (null) field
    if kind == 7:
        return item_bytes(sid, seq, mac(key, seq, raw), raw, ', "surprise": 1')
    if kind == 8:
        raw = "{\"metadata\": {\"x\": \"\ud800\"}}".encode("utf-8", "surrogatepass")  # a lone surrogate
        return item_bytes(sid, seq, "00" * 16, raw)
    raw = bad_body(rng, now, node_id)
    return item_bytes(sid, seq, mac(key, seq, raw), raw)


def state(service, sids: dict[str, str]) -> tuple:
    table = service.sessions
    sessions = []
    for node_id, sid in sids.items():
        s = table.get(sid)
        sessions.append(None if s is None else (s.seq, s.bucket.tokens, s.bucket.refilled, s.meta))
    return sessions, len(service.orchestrator.intake)


def registry_state(service) -> list:
    out = []
    for v in service.orchestrator.registry:
        row = (v.id, v.last_seen, v.load, dict(v.metadata), v.fingerprint, v.last_rollback is None)
        out.append(tuple("nan" if isinstance(x, float) and math.isnan(x) else x for x in row))
    return out


def held_still(twins) -> tuple[dict[str, bytes], list[float], list[dict[str, str]]]:
    """Session keys by node, one clock (``clock[0]``) held still for both twins, and each
    twin's session ids by node (a session of every node, from its ticket)."""
    keys = {node_id: bytes([i + 1] * 32) for i, node_id in enumerate(IDS)}
    clock = [time.time()]
    sids = []
    for service, api in twins:
        api.clock = service.orchestrator.clock = lambda: clock[0]  # one clock held still per request
        sids.append({n: service.sessions.issue_ticket(n, keys[n], clock[0] + 600) for n in IDS})
    return keys, clock, sids


def trouble(twins, sids, step: int, revoke: tuple[int, str], expire: tuple[int, str], now: float) -> None:
    """At step ``revoke[0]`` node ``revoke[1]``'s key revoked, at ``expire[0]`` the session of
    node ``expire[1]`` past its expiry (on both twins)."""
    if step == revoke[0]:
        for service, _ in twins:
            service.keys.set(revoke[1], service.keys.get(revoke[1]), revoked=True)
    if step == expire[0]:
        for (service, _), sid_of in zip(twins, sids):
            session = service.sessions.get(sid_of[expire[1]])
            if session is not None:
                session.expires = now - 1


@pytest.mark.parametrize("seed", range(6))
def test_a_batch_gets_the_same_answer_and_state_as_item_by_item(tmp_path, seed):
    rng = random.Random(seed)
    twins = [twin(tmp_path, "usual", True), twin(tmp_path, "items", False)]
    seen = watched(twins[0][1])
    keys, clock, sids = held_still(twins)
    seqs = {n: 0 for n in IDS}
    revoked = rng.choice(IDS[:-1])
    expired = rng.choice(IDS[:-1])
    for step in range(30):
        clock[0] += rng.choice([0.0, 0.5, 3.0, 20.0])
        now = clock[0]
        trouble(twins, sids, step, (12, revoked), (18, expired), now)
        clean = step < 2 or rng.random() < 0.55
        size = rng.choice([9, 12, 20, MAX_BATCH, MAX_BATCH + 1]) if not clean else rng.choice([9, 15, 23])
        pool = IDS[:-1] if clean else IDS
        chosen = rng.sample(pool, min(size, len(pool))) if clean or rng.random() < 0.5 else \
            [rng.choice(pool) for _ in range(size)]
        plan = []
        for node_id in chosen:
            seqs[node_id] += 1
            plan.append((node_id, seqs[node_id], good_body(rng, now), clean or rng.random() < 0.85))
        acks = rng.random() < 0.3
        answers, states = [], []
        for (service, api), sid_of in zip(twins, sids):
            items = [item_bytes(sid_of[n], seq, mac(keys[n], seq, raw), raw) if ok
                     else hostile_item(random.Random(seed * 1000 + step * 50 + k), now, n, sid_of[n], seq, keys[n])
                     for k, (n, seq, raw, ok) in enumerate(plan)]
            body = b'{"heartbeats":[' + b",".join(items) + b"]" + (b',"acks":true' if acks else b"") + b"}"
            answers.append(answer(api, body))
            states.append(state(service, sid_of))
            service.orchestrator.tick()
        assert answers[0] == answers[1], step
        assert states[0] == states[1], step
        assert registry_state(twins[0][0]) == registry_state(twins[1][0]), step
    taken = [r is not None for r in seen]
    assert any(taken) and not all(taken)  # both ways were compared


def test_the_usual_batch_is_answered_whole_and_acknowledged(tmp_path):
    service, api = twin(tmp_path, "usual", True)
    seen = watched(api)
    key = bytes(range(32))
    now = time.time()
    known = [n for i, n in enumerate(IDS[:-1]) if i % 3]  # nodes whose key fingerprint the registry holds
    sids = {n: service.sessions.issue_ticket(n, key, now + 600) for n in known}
    for n, sid in sids.items():  # in the table (a ticket is taken up the careful way first)
        service.sessions._take_up(sid, now)  # noqa: SLF001
    raws = {n: json.dumps({"timestamp": now, "load": 0.5}).encode() for n in sids}
    body = b'{"heartbeats":[' + b",".join(item_bytes(sids[n], 3, mac(key, 3, raws[n]), raws[n]) for n in sids) \
        + b'],"acks":true}'
    status, data = api.batch(body)
    assert status == 202 and seen[-1] is not None
    got = json.loads(data)
    assert (got["accepted"], got["refused"], got["results"]) == (len(known), 0, [])
    assert got["acks"] == {str(i): ack_mac(key, 3, got["server_time"]) for i in range(len(known))}
    drained = service.orchestrator.intake.drain()
    assert list(drained) == [] and len(drained.columns) == 1 and drained.columns[0].node_ids == list(sids)
    assert all(service.sessions.get(sid).seq == 3 for sid in sids.values())
    # the same batch again: every item a replay, refused, nothing changed
    tokens = [service.sessions.get(sid).bucket.tokens for sid in sids.values()]
    status, data = api.batch(body)
    assert status == 409 and seen[-1] is None
    assert [r["code"] for r in json.loads(data)["results"]] == ["replay"] * len(known)
    assert [service.sessions.get(sid).bucket.tokens for sid in sids.values()] == tokens
    assert len(service.orchestrator.intake) == 0


def test_an_oversize_or_a_refused_batch_changes_nothing(tmp_path):
    service, api = twin(tmp_path, "usual", True)
    key = bytes(range(32))
    now = time.time()
    sids = {n: service.sessions.issue_ticket(n, key, now + 600) for n in IDS[:-1]}
    for sid in sids.values():
        service.sessions._take_up(sid, now)  # noqa: SLF001
    raw = json.dumps({"timestamp": now, "load": 0.5}).encode()
    items = [item_bytes(sids[n], 1, mac(key, 1, raw), raw) for n in sids]
    with pytest.raises(TooLarge):
        api.batch(b'{"heartbeats":[' + b",".join(items * 2) + b"]}")  # 46 items, the limit is 40
    bad = list(items)
    bad[5] = item_bytes(sids[IDS[5]], 1, "0" * 32, raw)  # one bad MAC: refused alone, the rest taken
    status, data = api.batch(b'{"heartbeats":[' + b",".join(bad) + b"]}")
    got = json.loads(data)
    assert status == 202 and got["accepted"] == len(items) - 1
    assert [(r["index"], r["code"]) for r in got["results"]] == [(5, "bad_mac")]
    assert service.sessions.get(sids[IDS[5]]).seq == 0 and service.sessions.get(sids[IDS[6]]).seq == 1


def test_a_non_ascii_mac_is_a_bad_mac_not_an_error(tmp_path):
    service, api = twin(tmp_path, "usual", True)
    key = bytes(range(32))
    now = time.time()
    sid = service.sessions.issue_ticket(IDS[0], key, now + 600)
    raw = json.dumps({"timestamp": now}).encode()
    status, data, _ = api.session_single(sid, "1", "é" * 32, raw)
    assert status == 401 and json.loads(data)["code"] == "bad_mac"


def test_few_items_go_the_item_by_item_way(tmp_path, monkeypatch):
    monkeypatch.setattr(session_intake, "_FEW", 8)
    service, api = twin(tmp_path, "usual", True)
    seen = watched(api)
    key = bytes(range(32))
    now = time.time()
    sids = [service.sessions.issue_ticket(n, key, now + 600) for n in IDS[:8]]
    for sid in sids:
        service.sessions._take_up(sid, now)  # noqa: SLF001
    raw = json.dumps({"timestamp": now}).encode()
    status, data = api.batch(b'{"heartbeats":[' + b",".join(item_bytes(s, 1, mac(key, 1, raw), raw) for s in sids)
                             + b"]}")
    assert status == 202 and json.loads(data)["accepted"] == 8 and seen == [None]



def test_big_batches_over_http_take_the_batch_thread_or_the_pool(tmp_path):
    """On a real server: a big usual batch is answered whole on the batch thread, a big
    batch with a bad item goes on to the item-by-item way, a signed batch is verified."""
    ids = [f"h-{i:03d}" for i in range(60)]  # 60 items of about 300 bytes: past the inline size
    nodes = {n: Node(n) for n in ids}
    service = make_service(write_config(tmp_path, interval=0.2, stale=5, offline=10), heartbeat_burst=100)
    now = time.time()
    for n in ids:
        service.keys.set(n, public_bytes(nodes[n].key))
        service.orchestrator.registry.register(n, now=now, fingerprint=service.keys.fingerprint(n))
    key = bytes(range(32))
    sids = {n: service.sessions.issue_ticket(n, key, now + 600) for n in ids}
    thread = ServerThread(service)
    seen = watched(thread.server.config.http.single.api)
    with thread as url:
        def post(items: list[bytes]) -> dict:
            body = b'{"heartbeats":[' + b",".join(items) + b"]}"
            assert len(body) > 64 * 200
            answer = httpx.post(url + "/v1/heartbeats", content=body, headers={"content-type": "application/json"})
            return {"status": answer.status_code, **answer.json()}

        def good() -> bytes:
            return json.dumps({"timestamp": time.time(), "load": 0.5}).encode()

        for seq in (1, 2):  # the tickets taken up item by item first, then the batch whole
            body = good()
            got = post([item_bytes(sids[n], seq, mac(key, seq, body), body) for n in ids])
            assert (got["status"], got["accepted"], got["refused"]) == (202, 60, 0)
        assert seen[0] is None and seen[1] == (60, None)
        body = good()
        items = [item_bytes(sids[n], 3, mac(key, 3, body), body) for n in ids]
        items[7] = item_bytes(sids[ids[7]], 3, "0" * 32, body)
        got = post(items)
        assert (got["status"], got["accepted"], got["refused"]) == (202, 59, 1) and seen[2] is None
        assert [(r["index"], r["code"]) for r in got["results"]] == [(7, "bad_mac")]
        signed = []
        for n in ids:
            body = good()
            h = sign_request(nodes[n].key, n, "POST", "/v1/heartbeats", body)
            signed.append(json.dumps({"node": n, "timestamp": h["x-wyneos-timestamp"], "nonce": h["x-wyneos-nonce"],
                                      "signature": h["x-wyneos-signature"], "body": body.decode()}).encode())
        got = post(signed)
        assert (got["status"], got["accepted"], got["refused"]) == (202, 60, 0)
    assert [service.sessions.get(sids[n]).seq for n in ids] == [2 if n == ids[7] else 3 for n in ids]
