"""A single session heartbeat of the usual shape taken at once (``SessionIntake.accept_one``):
its answer and the state after it (sessions' sequence numbers, rate buckets and last
metadata, the queue, the registry after the tick) are what the item-by-item path
(``SessionIntake.accept``) gives the same request, on random heartbeats with hostile
ones among them: bad, short, non-ASCII MACs, replays, unknown and expired sessions,
revoked keys, bad sequence numbers, bodies that do not decode or name another node, new
or reserved metadata, out-of-range numbers, a spent rate."""

from __future__ import annotations

import json
import random

import pytest
from test_heartbeat_batch_fast import IDS, bad_body, good_body, held_still, registry_state, state, trouble, twin

from wyneos_core.service.sessions import mac


def _single(api, sid: str, seq_text: str | None, tag: str | None, body: bytes):
    """The answer without what differs between two services by design (their orchestrator
    keys sign the key reference, the neighbour list and the answer's MAC)."""
    status, data, extra = api.session_single(sid, seq_text, tag, body)
    answer = json.loads(data)
    for signed_by_the_key in ("orchestrator_key", "neighbours"):
        answer.pop(signed_by_the_key, None)
    return status, answer, [name for name, _ in extra]


def _hostile(rng: random.Random, now: float, node_id: str, sid: str, seq: int, key: bytes):
    kind = rng.randrange(8)
    raw = good_body(rng, now)
    if kind == 0:
        return sid, str(seq), "00" * 16, raw  # bad MAC
    if kind == 1:
        return sid, str(seq), "é" * 32, raw  # non-ASCII MAC
    if kind == 2:
        return sid, str(seq), mac(key, seq, raw)[:-1], raw  # short MAC
    if kind == 3:
        old = max(1, seq - 5)
        return sid, str(old), mac(key, old, raw), raw  # replay
    if kind == 4:
        return "nope." + sid[-20:], str(seq), mac(key, seq, raw), raw  # unknown session
    if kind == 5:
        return sid, rng.choice(["0", "-1", str(2**63), "1.5", "²", None, "x"]), mac(key, 1, raw), raw
    raw = bad_body(rng, now, node_id)
    return sid, str(seq), mac(key, seq, raw), raw


@pytest.mark.parametrize("seed", range(6))
def test_a_single_heartbeat_gets_the_same_answer_and_state_as_item_by_item(tmp_path, seed):
    rng = random.Random(seed)
    twins = [twin(tmp_path, "one", True), twin(tmp_path, "items", True)]
    taken: list = []
    accept_one = twins[0][1].intake.accept_one
    twins[0][1].intake.accept_one = lambda *a: taken.append(r := accept_one(*a)) or r
    twins[1][1].intake.accept_one = lambda *a: None  # the item-by-item path, for comparison
    keys, clock, sids = held_still(twins)
    seqs = {n: 0 for n in IDS}
    revoked, expired = rng.choice(IDS[:-1]), rng.choice(IDS[:-1])
    for step in range(120):
        clock[0] += rng.choice([0.0, 0.0, 0.5, 3.0, 20.0])
        now = clock[0]
        trouble(twins, sids, step, (50, revoked), (80, expired), now)
        node_id = rng.choice(IDS)
        seqs[node_id] += 1
        seq = seqs[node_id]
        raw = good_body(rng, now)
        clean = step < 10 or rng.random() < 0.6
        answers, states = [], []
        for k, ((service, api), sid_of) in enumerate(zip(twins, sids)):
            sid = sid_of[node_id]
            if clean:
                request = sid, str(seq), mac(keys[node_id], seq, raw), raw
            else:
                request = _hostile(random.Random(seed * 1000 + step), now, node_id, sid, seq, keys[node_id])
            answers.append(_single(api, *request))
            states.append(state(service, sid_of))
            if step % 7 == 6:
                service.orchestrator.tick()
        assert answers[0] == answers[1], (step, answers)
        assert states[0] == states[1], step
        assert registry_state(twins[0][0]) == registry_state(twins[1][0]), step
    for service, _ in twins:
        service.orchestrator.tick()
    assert registry_state(twins[0][0]) == registry_state(twins[1][0])
    assert any(r is not None for r in taken) and None in taken  # both ways were compared
