"""The node agent against a real server: enrol, heartbeat with OS load, apply isolate
and reinstate with acknowledgements, back off while the server is away."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from service_helpers import Quarantine, add_token, make_service, signed, wait_for, write_config, write_pem

from wyneos_core.service.agent import Agent, AgentError, os_load
from wyneos_core.service.orchestrator_key import OrchestratorKey
from wyneos_core.service.server import ServerThread, bind


def test_agent_applies_isolate_and_reinstate_and_acknowledges(tmp_path):
    service = make_service(write_config(tmp_path), plugins=(Quarantine(),))
    with ServerThread(service) as url, httpx.Client(base_url=url) as client:
        agent = Agent(url, "worker-1", tmp_path / "agent", token=add_token(service), interval=0.1,
                      metadata={"role": "bad"})
        stop = threading.Event()
        thread = threading.Thread(target=agent.run, kwargs={"duration": 30, "stop": stop})
        thread.start()
        try:
            node = wait_for(lambda: (n := client.get("/v1/nodes/worker-1").json()).get("isolated") and n)
            assert node["metadata"]["hostname"] and node["metadata"]["cpus"] >= 1
            assert 0 <= node["load"] <= 64
            wait_for(lambda: agent.state["isolated"])
            acks = wait_for(lambda: [a for a in client.get("/v1/actions").json()["acks"]
                                     if a["node_id"] == "worker-1" and a["status"] == "applied"])
            isolate_id = acks[0]["action_id"]
            in_force = client.get("/v1/actions").json()["in_force"]
            assert any(a["id"] == isolate_id and a["type"] == "isolate" for a in in_force)
            # the node reports its isolation back in its metadata
            wait_for(lambda: client.get("/v1/nodes/worker-1").json()["metadata"]["isolated"] is True)
            # the cause clears: isolation is cleared, then the node is reinstated
            agent.extra_metadata["role"] = "good"
            wait_for(lambda: not agent.state["isolated"])
            wait_for(lambda: client.get("/v1/nodes/worker-1").json()["isolated"] is False)
        finally:
            stop.set()
            thread.join(10)
    log = [json.loads(line) for line in (tmp_path / "agent" / "actions.log").read_text().splitlines()]
    kinds = [(e["action"]["type"], e["status"]) for e in log if e["action"]["target"] == "worker-1"]
    assert ("isolate", "applied") in kinds and ("reinstate", "applied") in kinds
    assert kinds.index(("isolate", "applied")) < kinds.index(("reinstate", "applied"))
    assert agent.stats.accepted >= 3 and agent.stats.refused == 0
    assert (tmp_path / "agent" / "node.key").stat().st_mode & 0o077 == 0


def test_agent_backs_off_while_the_server_is_away_then_enrols(tmp_path):
    sock = bind("127.0.0.1", 0)  # reserve a port, then free it: nobody listens there yet
    port = sock.getsockname()[1]
    sock.close()
    service = make_service(write_config(tmp_path), port=port)
    token = add_token(service)
    agent = Agent(f"http://127.0.0.1:{port}", "late-1", tmp_path / "a", token=token, interval=0.05, max_backoff=0.4)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, kwargs={"duration": 20, "stop": stop})
    thread.start()
    try:
        wait_for(lambda: agent.stats.failures >= 5)
        assert agent.stats.accepted == 0
        # exponential: each wait lies in [base/2, base], base doubling from 2 x interval up to max_backoff
        waits = agent.stats.backoffs[:5]
        for wait, base in zip(waits, (0.1, 0.2, 0.4, 0.4, 0.4)):
            assert base / 2 <= wait <= base, (waits, base)
        assert waits[2] > waits[0] and waits[1] > waits[0] / 2
        with ServerThread(service, port=port) as url:
            wait_for(lambda: agent.stats.accepted >= 2)
            assert httpx.get(f"{url}/v1/nodes/late-1").json()["enrolled"] is True
    finally:
        stop.set()
        thread.join(10)


def test_agent_stops_on_a_refused_enrolment(tmp_path):
    service = make_service(write_config(tmp_path))
    with ServerThread(service) as url:
        agent = Agent(url, "no-token", tmp_path / "a", interval=0.1)
        try:
            agent.run(count=1)
        except AgentError as exc:
            assert "token" in str(exc)
        else:
            raise AssertionError("enrolment without a token must fail")


def test_os_load_is_the_load_average_per_cpu():
    import os

    expected = os.getloadavg()[0] / os.cpu_count()
    assert abs(os_load() - expected) < 0.5


def test_agent_keeps_each_outcome_and_resends_it_on_redelivery(tmp_path):
    """A failed or ignored action is acknowledged as such, also when delivered again
    (its acknowledgement lost); an isolation whose hook fails leaves the node as it was."""
    hook = tmp_path / "hook.sh"
    hook.write_text("#!/bin/sh\necho firewall down >&2\nexit 3\n")
    hook.chmod(0o755)
    orch = OrchestratorKey.for_state(tmp_path / "s.db")
    pem = write_pem(tmp_path, orch)
    agent = Agent("http://127.0.0.1:9", "n-1", tmp_path / "a", hook=str(hook), orchestrator_key=str(pem))
    sent = []
    agent._request = lambda method, path, body=b"": (sent.append(json.loads(body)) or (200, {}, {}))  # no server
    isolate = signed(orch, {"id": "a-iso", "type": "isolate", "target": "n-1", "reason": "test"})
    notice = signed(orch, {"id": "a-other", "type": "isolate", "target": "n-2", "reason": "test"})
    agent.apply([isolate, notice])
    first = {a["payload"]["action_id"]: a["payload"] for a in sent[-1]["acks"]}
    assert first["a-iso"]["status"] == "failed" and "hook exited 3" in first["a-iso"]["detail"]
    assert first["a-other"]["status"] == "ignored" and "addressed to n-2" in first["a-other"]["detail"]
    assert agent.state["isolated"] is False
    assert agent.stats.applied == [] and len(agent.stats.not_applied) == 2
    # the same actions again (the acknowledgement was lost): not applied twice, same outcome
    again = Agent("http://127.0.0.1:9", "n-1", tmp_path / "a", hook=str(hook))  # state file read back, key pinned
    again._request = agent._request
    again.apply([isolate, notice])
    second = {a["payload"]["action_id"]: a["payload"] for a in sent[-1]["acks"]}
    assert second["a-iso"]["status"] == "failed" and second["a-other"]["status"] == "ignored"
    assert again.stats.replayed == 2
    log = (tmp_path / "a" / "actions.log").read_text().splitlines()
    assert len(log) == 2  # applied once each


def test_agent_sends_its_licence_and_checks_its_input(tmp_path):
    service = make_service(write_config(tmp_path))
    with ServerThread(service) as url, httpx.Client(base_url=url) as client:
        agent = Agent(url, "lic-1", tmp_path / "a", token=add_token(service), interval=0.1, licence="lic-node-1")
        agent.run(count=2)
        assert service.orchestrator.registry["lic-1"].licence_ref == "lic-node-1"  # from the enrolment on
        wait_for(lambda: client.get("/v1/nodes/lic-1").json()["licence_ref"] == "lic-node-1")
    for kwargs, message in (({"interval": 0}, "interval must be"), ({"max_backoff": -1}, "max_backoff must be"),
                            ({"interval": float("nan")}, "interval must be")):
        with pytest.raises(AgentError, match=message):
            Agent("http://127.0.0.1:9", "n", tmp_path / "b", **kwargs)
    with pytest.raises(AgentError, match="node id 'bad id' is not valid"):
        Agent("http://127.0.0.1:9", "bad id", tmp_path / "c")
    assert not (tmp_path / "c").exists()  # no key was created for it
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "node.key").write_text("junk")
    with pytest.raises(AgentError) as info:
        Agent("http://127.0.0.1:9", "n", tmp_path / "d")
    assert str(info.value).count("node.key") == 1, info.value
