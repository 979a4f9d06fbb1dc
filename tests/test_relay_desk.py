"""The relay desk answers each heartbeat with its sender's relay work from an index by
relay (``RelayDesk._by_relay``), not by scanning every hand-over: on random hand-overs,
acknowledgements, failures and time-outs, every relay's answer is what a scan of the
hand-overs gives (the first ``MAX_PER_ANSWER`` of them, in the order handed)."""

from __future__ import annotations

import random

from service_helpers import make_service
from test_service_tick import CONFIG

from wyneos_core.licensing.keys import generate_key, public_bytes
from wyneos_core.service.action_relay import MAX_PER_ANSWER, Handover

NODES = [f"n0{i}" for i in range(1, 7)]  # the nodes of test_service_tick's config


def scanned(desk, relay: str) -> list[tuple[str, str]]:
    """What ``for_relay`` hands ``relay``, found by scanning every hand-over (the old way)."""
    return [(h.target, h.action_id) for h in desk.handovers.values() if h.relay == relay][:MAX_PER_ANSWER]


def test_each_relay_gets_exactly_its_hand_overs_whatever_happened_before(tmp_path):
    (tmp_path / "config.yaml").write_text(CONFIG)
    service = make_service(tmp_path / "config.yaml")
    try:
        for node_id in NODES:
            service.keys.set(node_id, public_bytes(generate_key()))
        desk, outbox = service.relay_desk, service.outbox
        rng = random.Random(3)
        actions = []
        for k in range(160):  # more than MAX_PER_ANSWER for a relay at times
            target = rng.choice(NODES[:3])
            action = {"id": f"a{k:03d}", "type": "quarantine", "target": target, "reason": "test", "origin": "rules",
                      "severity": "high", "params": {}, "tick": 1}
            outbox.put(target, action)
            actions.append((target, action["id"]))
        relays = NODES[3:]
        most = 0
        for step in range(400):
            kind = 0 if step < 150 else rng.randrange(4)  # hand many first, then everything at random
            key = rng.choice(actions)
            with desk._lock:  # noqa: SLF001 - what the tick's planning does
                if kind == 0 and key not in desk.handovers:
                    desk._hand(key, Handover(key[0], key[1], rng.choice(relays), step))  # noqa: SLF001
                elif kind == 1:
                    desk._drop(key)  # noqa: SLF001 - a hand-over timed out before the relay came
            if kind == 2:
                desk.acked(key[0], key[1], rng.choice([None, *relays]))
            elif kind == 3:
                desk.forged(rng.choice(relays), key[0], "made up")
            for relay in relays:
                most = max(most, sum(h.relay == relay for h in desk.handovers.values()))
                expected = scanned(desk, relay)
                work = desk.for_relay(relay)
                got = [(item["to"], env["payload"]["id"]) for item in work for env in item["envelopes"]]
                assert sorted(got) == sorted(expected), (step, relay)
            assert set(desk._by_relay) == {h.relay for h in desk.handovers.values()}  # noqa: SLF001
        assert most > MAX_PER_ANSWER  # a relay had more work than one answer carries
    finally:
        service.stop()
