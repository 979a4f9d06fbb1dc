"""Signed enforcement: actions signed by the orchestrator key, pinned by the agent at
enrolment, refused (logged and reported) when unsigned, badly signed, signed by another
key, expired, replayed or addressed to another node; acknowledgements signed by the
node key and verified by the server; key rotation with a signed hand-over."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import pytest
from hostile_server import HostileServer, wait_for
from service_helpers import Node, Quarantine, acks_body, add_token, make_service, signed, write_config, write_pem

from wyneos_core.service import signed_actions as sa
from wyneos_core.service.agent import Agent, AgentError
from wyneos_core.service.identity import SignedItem
from wyneos_core.service.orchestrator_key import OrchestratorKey
from wyneos_core.service.server import ServerThread, bind

NODE = "n-1"


def scripted(okey, batches, interval=0.05):
    """An orchestrator that enrols anyone with ``okey`` and hands out ``batches`` of actions
    (one list per heartbeat answer, then none)."""
    batches = list(batches)

    def handler(path, body):
        if path == "/v1/enrol":
            return 201, {"node_id": NODE, "enrolled": True, "server_time": time.time(), "heartbeat_interval": interval,
                         "orchestrator_key": sa.key_entry(okey.private)}
        if path == "/v1/heartbeats":
            return 202, {"accepted": 1, "server_time": time.time(), "actions": batches.pop(0) if batches else []}
        if path.endswith("/actions/ack"):
            return 200, {"acknowledged": [], "refused": []}
        return 404, {"error": "no"}

    return handler


def hook_program(tmp_path):
    """A hook that records each call (type and target) in hook.log, and succeeds."""
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\necho \"$1 $2\" >> {tmp_path / 'hook.log'}\n")
    hook.chmod(0o755)
    return hook


def hook_calls(tmp_path):
    path = tmp_path / "hook.log"
    return path.read_text().splitlines() if path.exists() else []


def _tampered(envelope, **changes):
    out = json.loads(json.dumps(envelope))
    out["payload"].update(changes)
    return out


REFUSED = {
    # name: (build the envelope from the orchestrator key and a stranger key, reason reported)
    "unsigned": (lambda ok, st: {"id": "a1", "type": "isolate", "target": NODE, "reason": "r"}, "unsigned"),
    "bad_signature": (lambda ok, st: _tampered(signed(ok, {"id": "a1", "type": "isolate", "target": "n-2"}),
                                               target=NODE), "bad_signature"),
    "other_key": (lambda ok, st: signed(st, {"id": "a1", "type": "isolate", "target": NODE}), "unknown_key"),
    "expired": (lambda ok, st: signed(ok, {"id": "a1", "type": "isolate", "target": NODE},
                                      issued_at=int((time.time() - 7200) * 1000)), "expired"),
    "from_the_future": (lambda ok, st: signed(ok, {"id": "a1", "type": "isolate", "target": NODE},
                                              issued_at=int((time.time() + 3600) * 1000)), "not_yet_valid"),
    "params_not_an_object": (lambda ok, st: {**(e := signed(ok, {"id": "a1", "type": "isolate", "target": NODE})),
                                             "payload": {**e["payload"], "params": "[]"}}, "bad_signature"),
    "garbage": (lambda ok, st: "isolate everything", "malformed"),
    "wrong_format": (lambda ok, st: {**signed(ok, {"id": "a1", "type": "isolate", "target": NODE}),
                                     "format": "wyneos.licence/1"}, "malformed"),
    # a hostile id and detail must still make a report the server takes
    "hostile_id": (lambda ok, st: {"id": "\ud800" + "x" * 500, "type": "isolate", "target": NODE}, "unsigned"),
    "empty_id": (lambda ok, st: {"id": "", "type": "isolate", "target": NODE}, "unsigned"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_agent_refuses_logs_and_reports_an_action_that_is_not_validly_signed(tmp_path, case):
    okey = OrchestratorKey.for_state(tmp_path / "s.db")
    stranger = OrchestratorKey.for_state(tmp_path / "stranger.db")
    build, reason = REFUSED[case]
    with HostileServer(scripted(okey, [[build(okey, stranger)]])) as server:
        agent = Agent(server.url, NODE, tmp_path / "a", token="t", hook=str(hook_program(tmp_path)))
        agent.run(count=3)
        reports = wait_for(lambda: [r for body in server.posted("/actions/ack") for r in body["refusals"]])
    assert agent.state["isolated"] is False and hook_calls(tmp_path) == []
    assert [r["reason"] for r in reports] == [reason], reports
    for r in reports:  # what the real server takes (else the reports would be refused for ever)
        assert r["action_id"] is None or sa.ID_PATTERN.match(r["action_id"])
        r["detail"].encode("utf-8")
    assert agent.stats.refused_actions and not agent.stats.applied
    assert all(body["acks"] == [] for body in server.posted("/actions/ack"))  # nothing acknowledged as done
    assert agent.state["reports"] == []  # delivered: not sent again


NOT_MINE = {
    # name: (action, detail the signed 'ignored' acknowledgement carries)
    "another_node": ({"id": "a2", "type": "isolate", "target": "n-2"}, "addressed to n-2"),
    "isolate_everyone": ({"id": "a3", "type": "isolate", "target": "*"}, "cannot be addressed to every node"),
    "unknown_type_with_hook": ({"id": "a4", "type": "wipe_disk", "target": NODE}, "not handed to the hook"),
}


@pytest.mark.parametrize("case", sorted(NOT_MINE))
def test_agent_does_not_apply_a_signed_action_that_is_not_for_it(tmp_path, case):
    okey = OrchestratorKey.for_state(tmp_path / "s.db")
    action, detail = NOT_MINE[case]
    with HostileServer(scripted(okey, [[signed(okey, action)]])) as server:
        agent = Agent(server.url, NODE, tmp_path / "a", token="t", hook=str(hook_program(tmp_path)))
        agent.run(count=3)
        acks = wait_for(lambda: [a for body in server.posted("/actions/ack") for a in body["acks"]])
    assert agent.state["isolated"] is False and hook_calls(tmp_path) == []
    [ack] = acks
    assert ack["format"] == "wyneos.ack/1" and ack["payload"]["status"] == "ignored"
    assert detail in ack["payload"]["detail"] and ack["payload"]["action_id"] == action["id"]


def test_agent_applies_a_signed_action_once_and_hands_known_types_to_the_hook(tmp_path):
    okey = OrchestratorKey.for_state(tmp_path / "s.db")
    isolate = signed(okey, {"id": "a1", "type": "isolate", "target": NODE})
    reduce = signed(okey, {"id": "a2", "type": "reduce_load", "target": NODE}, params={"target_load": 0.5})
    custom = signed(okey, {"id": "a3", "type": "drain_queue", "target": NODE})
    revoke = signed(okey, {"id": "a4", "type": "revoke", "target": "*"}, params={"licence_ids": ["lic-9"]})
    batches = [[isolate, reduce, custom, revoke], [isolate], [isolate, reduce]]  # then delivered again (replays)
    with HostileServer(scripted(okey, batches)) as server:
        agent = Agent(server.url, NODE, tmp_path / "a", token="t", hook=str(hook_program(tmp_path)),
                      hook_types=["drain_queue"])
        agent.run(count=4)
    assert agent.state["isolated"] is True
    assert sorted(hook_calls(tmp_path)) == ["drain_queue n-1", "isolate n-1", "reduce_load n-1", "revoke *"]
    assert agent.stats.replayed == 3
    acks = [a["payload"] for body in server.posted("/actions/ack") for a in body["acks"]]
    assert [a["status"] for a in acks].count("applied") == 4 + 3  # replays answered with their outcome
    assert all("delivered again" in a["detail"] for a in acks[4:])
    # the hook gets the verified action (params as data) on its standard input
    entry = [json.loads(x) for x in (tmp_path / "a" / "actions.log").read_text().splitlines()]
    assert {e["action"]["type"]: e["action"]["params"] for e in entry}["reduce_load"] == {"target_load": 0.5}
    # replay memory survives a restart of the agent
    again = Agent("http://127.0.0.1:9", NODE, tmp_path / "a")
    sent = []
    again._request = lambda method, path, body=b"": (sent.append(json.loads(body)) or (200, {}, {}))
    again.apply([isolate])
    assert again.stats.replayed == 1 and not again.stats.applied


def test_agent_pins_the_key_and_refuses_an_enrolment_answer_with_another(tmp_path):
    okey = OrchestratorKey.for_state(tmp_path / "s.db")
    impostor = OrchestratorKey.for_state(tmp_path / "other.db")
    # pinned in advance by fingerprint: another key in the enrolment answer is refused
    with HostileServer(scripted(impostor, [])) as server:
        agent = Agent(server.url, NODE, tmp_path / "a", token="t", orchestrator_key=okey.fingerprint)
        with pytest.raises(AgentError, match=f"carries orchestrator key {impostor.fingerprint}, not the pinned"):
            agent.run(count=1)
        assert server.posted("/v1/heartbeats") == []
    # pinned at the first enrolment (trust on first use), then held: a later answer with another key is refused
    with HostileServer(scripted(okey, [])) as server:
        Agent(server.url, NODE, tmp_path / "b", token="t").run(count=1)
    with HostileServer(scripted(impostor, [])) as server:
        with pytest.raises(AgentError, match="not the pinned"):
            Agent(server.url, NODE, tmp_path / "b", token="t").run(count=1)
    # pinned with a PEM file; a file that is no key is refused at start
    with HostileServer(scripted(okey, [])) as server:
        Agent(server.url, NODE, tmp_path / "c", token="t", orchestrator_key=str(write_pem(tmp_path, okey))).run(count=1)
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(AgentError, match="junk.pem"):
        Agent("http://127.0.0.1:9", NODE, tmp_path / "d", orchestrator_key=str(tmp_path / "junk.pem"))
    with pytest.raises(AgentError, match="neither a fingerprint"):
        Agent("http://127.0.0.1:9", NODE, tmp_path / "d", orchestrator_key="sha256:abc")
    with pytest.raises(AgentError, match="is not the key this agent pinned"):
        Agent("http://127.0.0.1:9", NODE, tmp_path / "b", orchestrator_key=impostor.fingerprint)


def test_real_server_signs_actions_and_keeps_node_signed_acks(tmp_path):
    service = make_service(write_config(tmp_path), plugins=(Quarantine(),))
    with ServerThread(service) as url, httpx.Client(base_url=url) as client:
        agent = Agent(url, "w-1", tmp_path / "a", token=add_token(service), interval=0.1, metadata={"role": "bad"},
                      orchestrator_key=service.okey.fingerprint)
        stop = threading.Event()
        thread = threading.Thread(target=agent.run, kwargs={"duration": 30, "stop": stop})
        thread.start()
        try:
            wait_for(lambda: agent.state["isolated"])
            ack = wait_for(lambda: [a for a in client.get("/v1/actions").json()["acks"] if a["node_id"] == "w-1"])[0]
        finally:
            stop.set()
            thread.join(10)
        # what the node got was signed by the orchestrator key, and what it answered by the node key
        kept = service.signed_ack(ack["action_id"], "w-1")
        assert kept["format"] == "wyneos.ack/1" and kept["payload"]["status"] == "applied"
        assert sa.open_ack(kept, "w-1", service.keys.get("w-1"))["action_id"] == ack["action_id"]
        entry = json.loads((tmp_path / "a" / "actions.log").read_text().splitlines()[0])
        assert entry["action"]["key_id"] == service.okey.key_id
        assert sa.TrustedKeys(agent.trusted.raw()).fingerprints() == [service.okey.fingerprint]


def test_server_refuses_acks_not_signed_by_the_node_and_keeps_refusal_reports(tmp_path):
    service = make_service(write_config(tmp_path, stale=60, offline=120), plugins=(Quarantine(),))
    node, other = Node("q1"), Node("q2")
    try:
        token = add_token(service, uses=2)
        for n in (node, other):
            body, headers = n.enrol_request(token)
            assert service.enrol(SignedItem.from_headers(headers, body))[0] == 201
        body, headers = node.heartbeat(metadata={"role": "bad"})
        item = SignedItem.from_headers(headers, body)
        assert service.accept([item], service.verify_all([item], time.time()), time.time())[0].status == 202
        service.tick()
        iso = service.outbox.pending("q1")[0]["id"]
        issued = service.outbox.pending("q1")[0]["issued_at"]
        from wyneos_core.service.core import Unprocessable

        # signed by another node's key, speaking for another node, unsigned: the whole request refused
        forged = json.dumps({"acks": [sa.seal_ack(other.key, "q1", iso, issued, "applied", "")]}).encode()
        other_node = json.dumps({"acks": [sa.seal_ack(node.key, "q2", iso, issued, "applied", "")]}).encode()
        unsigned = json.dumps({"acks": [{"action_id": iso, "status": "applied"}]}).encode()
        tampered_env = sa.seal_ack(node.key, "q1", iso, issued, "failed", "")
        tampered_env["payload"]["status"] = "applied"
        tampered = json.dumps({"acks": [tampered_env]}).encode()
        for body, why in ((forged, "unknown_key"), (other_node, "other_node"), (unsigned, "unsigned"),
                          (tampered, "bad_signature")):
            with pytest.raises(Unprocessable) as info:
                service.acknowledge("q1", body)
            assert info.value.field == "acks[0]" and why in info.value.reason
        assert [a["id"] for a in service.outbox.pending("q1")] == [iso]
        with service.db_lock:
            assert service.db.action_acks() == []
        # refusal reports are kept and shown
        report = json.dumps({"acks": [], "refusals": [{"reason": "bad_signature", "action_id": "zz",
                                                       "detail": "does not verify"}]}).encode()
        assert service.acknowledge("q1", report) == (200, {"acknowledged": [], "refused": [], "reported": 1})
        refusals = service.committed_actions()["refusals"]
        assert [(r["node_id"], r["reason"], r["action_id"]) for r in refusals] == [("q1", "bad_signature", "zz")]
        assert b'wyneos_action_refusals_total{reason="bad_signature"} 1.0' in service.metrics.render()
        with pytest.raises(Unprocessable):
            service.acknowledge("q1", json.dumps({"refusals": [{"reason": "made up"}]}).encode())
        # an ack of another issuance of the same action (an old one, replayed) is refused
        old = json.dumps({"acks": [sa.seal_ack(node.key, "q1", iso, issued - 60_000, "applied", "")]}).encode()
        status, answer = service.acknowledge("q1", old)
        assert status == 422 and answer["field"] == "acks[0].issued_at"
        assert [a["id"] for a in service.outbox.pending("q1")] == [iso]
        # a genuine signed ack goes through
        assert service.acknowledge("q1", acks_body(node, iso, service=service))[1]["acknowledged"] == [iso]
    finally:
        service.orchestrator.stop()
        service.stop()


def test_rotation_hands_over_to_the_new_key_and_a_forged_handover_is_refused(tmp_path):
    config = write_config(tmp_path, stale=60, offline=120)
    sock = bind("127.0.0.1", 0)  # one port for both runs of the server
    port = sock.getsockname()[1]
    sock.close()
    service = make_service(config, plugins=(Quarantine(),), port=port)
    old_fp = service.okey.fingerprint
    with ServerThread(service, port=port) as url:
        agent = Agent(url, "r-1", tmp_path / "a", token=add_token(service), interval=0.1)
        agent.run(count=1)
    service.orchestrator.stop()
    assert agent.trusted.fingerprints() == [old_fp]
    # rotate on the command line, then restart the server with the new key
    done = subprocess.run([sys.executable, "-m", "wyneos_core.cli", "orchestrator-key", "rotate", "-c", str(config)],
                          capture_output=True, text=True, timeout=60, check=True)
    assert "rotated: new key" in done.stdout
    shown = subprocess.run([sys.executable, "-m", "wyneos_core.cli", "orchestrator-key", "show", "-c", str(config)],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    restarted = make_service(config, plugins=(Quarantine(),), port=port)
    assert restarted.okey.fingerprint != old_fp and restarted.okey.fingerprint in shown and "previous" in shown
    with ServerThread(restarted, port=port):
        agent.extra_metadata["role"] = "bad"
        stop = threading.Event()
        thread = threading.Thread(target=agent.run, kwargs={"duration": 30, "stop": stop})
        thread.start()
        try:
            wait_for(lambda: agent.state["isolated"])  # signed by the new key, accepted after the hand-over
        finally:
            stop.set()
            thread.join(10)
    restarted.orchestrator.stop()
    assert agent.trusted.fingerprints() == [old_fp, restarted.okey.fingerprint]
    # a hand-over signed by a key the agent never pinned does not move it
    stranger = OrchestratorKey.for_state(tmp_path / "x.db")
    forged = sa.seal_rotation(stranger.private, stranger.public_raw)
    lonely = Agent("http://127.0.0.1:9", "r-2", tmp_path / "b", orchestrator_key=str(write_pem(tmp_path, restarted.okey)))
    lonely._request = lambda method, path, body=b"": (200, {}, {})
    lonely._follow_key({"key_id": stranger.key_id, "handover": forged})
    assert lonely.trusted.fingerprints() == [restarted.okey.fingerprint]
    assert lonely.state["reports"][0]["reason"] == "unknown_key"


def test_actions_apply_in_issue_order_and_an_older_reinstate_cannot_undo_a_later_isolation(tmp_path):
    okey = OrchestratorKey.for_state(tmp_path / "s.db")
    now = int(time.time() * 1000)
    reinstate = signed(okey, {"id": "re-1", "type": "reinstate", "target": NODE}, issued_at=now - 5000)
    isolate = signed(okey, {"id": "iso-1", "type": "isolate", "target": NODE}, issued_at=now - 1000)
    # one answer delivers them out of order; a later answer plays the held-back reinstate again
    held_back = signed(okey, {"id": "re-0", "type": "reinstate", "target": NODE}, issued_at=now - 3000)
    with HostileServer(scripted(okey, [[isolate, reinstate], [held_back]])) as server:
        agent = Agent(server.url, NODE, tmp_path / "a", token="t")
        agent.run(count=3)
    assert agent.state["isolated"] is True
    acks = {a["payload"]["action_id"]: a["payload"] for body in server.posted("/actions/ack") for a in body["acks"]}
    assert acks["re-1"]["status"] == "applied" and acks["iso-1"]["status"] == "applied"  # reinstate first, then isolate
    assert acks["re-0"]["status"] == "ignored" and "superseded" in acks["re-0"]["detail"]


def test_a_waiting_action_is_signed_again_before_it_expires_as_the_same_issuance(tmp_path):
    from wyneos_core.service.outbox import AgentOutbox

    okey = OrchestratorKey.for_state(tmp_path / "s.db")
    outbox = AgentOutbox(lambda node: True, sign=lambda a, issued, expires: sa.seal_action(okey.private, a, issued,
                                                                                           expires), ttl=3600)
    outbox.put(NODE, {"id": "a1", "type": "isolate", "target": NODE, "reason": "r", "origin": "o",
                      "severity": "critical", "params": {"x": 0.5}, "issued_at": 1_767_000_000_000})
    [first] = outbox.signed(NODE)
    assert outbox.signed(NODE) == [first]  # cached while in the first half of its life
    later = first["payload"]["expires_at"] - 1_000_000  # past half its life
    again = outbox._envelope(NODE, outbox.pending(NODE)[0], now_ms=later)
    assert again["payload"]["issued_at"] == first["payload"]["issued_at"] == 1_767_000_000_000
    assert again["payload"]["expires_at"] > first["payload"]["expires_at"]
    assert sa.open_action(again, sa.TrustedKeys([okey.public_raw]), now=later / 1000)["params"] == {"x": 0.5}
    outbox.ack(NODE, "a1")
    assert outbox.signed(NODE) == []


def test_a_server_whose_key_was_replaced_without_rotation_gets_refusals_not_obedience(tmp_path):
    """The orchestrator key file is replaced behind the agents' back (no hand-over): the
    agent, still enrolled, refuses every action signed by the new key and reports it; a
    real agent process pinned to the old key in advance refuses the new enrolment answer."""
    config = write_config(tmp_path, stale=60, offline=120)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    service = make_service(config, plugins=(Quarantine(),), port=port)
    old_fp = service.okey.fingerprint
    token = add_token(service, uses=2)
    with ServerThread(service, port=port) as url:
        agent = Agent(url, "k-1", tmp_path / "a", token=token, interval=0.1)
        agent.run(count=1)
    service.orchestrator.stop()
    service.okey.path.unlink()  # a new key is made at the next start
    restarted = make_service(config, plugins=(Quarantine(),), port=port)
    assert restarted.okey.fingerprint != old_fp
    try:
        with ServerThread(restarted, port=port) as url, httpx.Client(base_url=url) as client:
            agent.extra_metadata["role"] = "bad"
            stop = threading.Event()
            thread = threading.Thread(target=agent.run, kwargs={"duration": 30, "stop": stop})
            thread.start()
            try:
                refusals = wait_for(lambda: client.get("/v1/actions").json()["refusals"])
            finally:
                stop.set()
                thread.join(10)
            assert {(r["node_id"], r["reason"]) for r in refusals} == {("k-1", "unknown_key")}
            assert 'wyneos_action_refusals_total{reason="unknown_key"}' in client.get("/metrics").text
            assert agent.state["isolated"] is False and not (tmp_path / "a" / "actions.log").exists()
            done = subprocess.run([sys.executable, "-m", "wyneos_core.cli", "agent", "--server", url, "--node", "k-2",
                                   "--state-dir", str(tmp_path / "b"), "--token", token, "--orchestrator-key", old_fp,
                                   "--count", "1"], capture_output=True, text=True, timeout=60)
            assert done.returncode == 1 and f"not the pinned {old_fp}" in done.stderr, done.stderr
    finally:
        restarted.orchestrator.stop()


def test_serve_refuses_an_orchestrator_key_others_can_read(tmp_path):
    config = write_config(tmp_path)
    key = OrchestratorKey.for_state(tmp_path / "state.db")
    key.path.chmod(0o644)
    done = subprocess.run([sys.executable, "-m", "wyneos_core.cli", "serve", "-c", str(config), "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "readable or writable by others" in done.stderr and "chmod 600" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_damaged_agent_state_file_is_refused_not_reset(tmp_path):
    okey = OrchestratorKey.for_state(tmp_path / "s.db")
    Agent("http://127.0.0.1:9", NODE, tmp_path / "a", orchestrator_key=str(write_pem(tmp_path, okey)))
    state = tmp_path / "a" / "agent-state.json"
    assert json.loads(state.read_text())["orchestrator_keys"]  # the pin is kept there
    for damage in ("", "{not json", "[1, 2]"):
        state.write_text(damage)
        with pytest.raises(AgentError, match="agent-state.json: damaged"):
            Agent("http://127.0.0.1:9", NODE, tmp_path / "a")
        assert state.read_text() == damage  # left as it was for the operator to look at


def test_one_issuance_is_signed_once_for_every_node_it_waits_for(tmp_path):
    from wyneos_core.service.outbox import AgentOutbox

    okey = OrchestratorKey.for_state(tmp_path / "s.db")
    signatures = []

    def sign(action, issued, expires):
        signatures.append(action["id"])
        return sa.seal_action(okey.private, action, issued, expires)

    outbox = AgentOutbox(lambda node: True, sign=sign)
    revoke = {"id": "rv", "type": "revoke", "target": "*", "reason": "r", "origin": "licence", "severity": "warning",
              "params": {"licence_ids": ["l1"]}, "issued_at": 1_767_000_000_000}
    for i in range(50):
        outbox.put(f"n{i}", dict(revoke))
    envelopes = [outbox.signed(f"n{i}")[0] for i in range(50)]
    assert signatures == ["rv"] and all(e == envelopes[0] for e in envelopes)
    for i in range(50):
        outbox.ack(f"n{i}", "rv")
    for i in range(300):  # other issuances come and go: the cache forgets the ones nobody waits for
        outbox.put("m", {**revoke, "id": f"x{i}", "target": "m"})
        outbox.signed("m")
        outbox.ack("m", f"x{i}")
    assert len(outbox._signed) <= 101


def test_many_acknowledgements_go_in_requests_the_real_server_takes(tmp_path):
    """200 actions waiting (with long details): their acknowledgements are split into
    requests under the server's body limit, and every one is taken."""
    # one tick only (at start): a tick forgets the stored acknowledgements of actions the
    # state file does not hold, as these put straight into the outbox
    service = make_service(write_config(tmp_path, interval=3600, stale=60, offline=120))
    node = Node("b-1")
    try:
        body, headers = node.enrol_request(add_token(service))
        assert service.enrol(SignedItem.from_headers(headers, body))[0] == 201
        now = int(time.time() * 1000)
        for i in range(200):
            service.outbox.put("b-1", {"id": f"act-{i}", "type": "wipe_disk", "target": "b-1", "reason": "r" * 900,
                                       "origin": "test", "severity": "warning", "params": {}, "issued_at": now})
        with ServerThread(service) as url:
            wait_for(lambda: service.committed_ticks(1))
            agent = Agent(url, "b-1", tmp_path / "a", interval=0.05)
            agent.key = node.key  # the enrolled key
            agent.enrolled = True
            agent._pin(service.okey.public_raw)
            agent.run(count=2)
            assert not [a for a in service.outbox.pending("b-1") if a["id"].startswith("act-")]
            acked = [a for a in service.committed_actions()["acks"] if a["action_id"].startswith("act-")]
        assert len(acked) == 200 and {a["status"] for a in acked} == {"ignored"}  # unknown type: never applied
    finally:
        service.orchestrator.stop()
