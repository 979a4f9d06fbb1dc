"""Operator overrides on a real server with a real agent: set with the write token (a
request without it is refused and changes nothing), signed and delivered like any other
action, acknowledged by the agent, and never undone by the rules until lifted."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest
from service_helpers import add_token, make_service, wait_for, write_config
from test_service_why import metric

from wyneos_core import hookimpl
from wyneos_core.enforcement.overrides import META_KEY
from wyneos_core.model import Action, ActionType, Heartbeat, Severity
from wyneos_core.service.agent import Agent
from wyneos_core.service.server import ServerThread

READ, WRITE = "r" * 24, "w" * 24


class Forgiving:
    """Test rules that would undo an operator: every isolated node is reinstated at once."""

    __wyneos_name__ = "test-forgiving"

    @hookimpl
    def wyneos_healing(self, ctx, nodes):
        return [Action(ActionType.REINSTATE, n.id, "forgiven", "test-forgiving", Severity.INFO)
                for n in nodes if n.isolated]


def bearer(token):
    return {"authorization": f"Bearer {token}"}


def acked(client, action_type, status="applied"):
    data = client.get("/v1/actions", headers=bearer(READ)).json()
    types = {a["id"]: a["type"] for a in data["in_force"]}
    return [a for a in data["acks"] if a["node_id"] == "worker-1" and a["status"] == status
            and types.get(a["action_id"]) == action_type]


def test_an_operator_isolation_is_delivered_acknowledged_and_kept_until_lifted(tmp_path):
    service = make_service(write_config(tmp_path), plugins=(Forgiving(),), read_token=READ, write_token=WRITE)
    with ServerThread(service) as url, httpx.Client(base_url=url) as client:
        agent = Agent(url, "worker-1", tmp_path / "agent", token=add_token(service), interval=0.1)
        stop = threading.Event()
        thread = threading.Thread(target=agent.run, kwargs={"duration": 60, "stop": stop})
        thread.start()
        try:
            wait_for(lambda: client.get("/v1/nodes/worker-1", headers=bearer(READ)).json().get("status") == "online")
            body = {"node": "worker-1", "kind": "isolate", "reason": "suspected compromise", "by": "alice"}
            # without the write token (or with the read token) nothing changes
            for headers in ({}, bearer(READ)):
                answer = client.post("/v1/overrides", json=body, headers=headers)
                assert answer.status_code == 401 and answer.json()["code"] == "write_token_required"
            with service.db_lock:
                assert service.db.meta(META_KEY, {}) == {}
            answer = client.post("/v1/overrides", json=body, headers=bearer(WRITE))
            assert answer.status_code == 201, answer.text
            # delivered, signed, applied and acknowledged by the agent
            wait_for(lambda: agent.state["isolated"])
            (ack,) = wait_for(lambda: acked(client, "isolate"))
            listed = client.get("/v1/overrides", headers=bearer(READ)).json()["overrides"]
            assert [(o["node"], o["kind"], o["by"], o["reason"]) for o in listed] == [
                ("worker-1", "isolate", "alice", "suspected compromise")]
            # the rules propose a reinstate every tick: held, the node stays isolated
            start = service.orchestrator.tick_number
            wait_for(lambda: service.orchestrator.tick_number >= start + 5)
            assert agent.state["isolated"] and service.orchestrator.registry.get("worker-1").isolated
            report = service.view.report
            assert report.enforcement["overrides"][0]["by"] == "alice"
            held = report.enforcement["held_by_override"]
            assert [(h["type"], h["origin"], h["by"]) for h in held] == [("reinstate", "test-forgiving", "alice")]
            metrics = client.get("/metrics", headers=bearer(READ)).text
            assert metric(metrics, "wyneos_enforcement_overrides") == 1
            assert metric(metrics, "wyneos_enforcement_held", kind="held_by_override") == 1
            in_force = client.get("/v1/actions", headers=bearer(READ)).json()["in_force"]
            (isolation,) = [a for a in in_force if a["type"] == "isolate"]
            assert isolation["origin"] == "operator" and "alice: suspected compromise" in isolation["reason"]
            # the operator reinstates: delivered and acknowledged too
            answer = client.post("/v1/overrides", headers=bearer(WRITE),
                                 json={"node": "worker-1", "kind": "reinstate", "reason": "cleared", "by": "bob"})
            assert answer.status_code == 201
            wait_for(lambda: not agent.state["isolated"])
            wait_for(lambda: acked(client, "reinstate"))
            answer = client.post("/v1/overrides", headers=bearer(WRITE),
                                 json={"node": "worker-1", "kind": "uncordon", "reason": "back to the rules"})
            assert answer.status_code == 200
            assert client.get("/v1/overrides", headers=bearer(READ)).json()["overrides"] == []
        finally:
            stop.set()
            thread.join(10)
    assert agent.stats.refused == 0


def test_without_a_write_token_the_write_api_is_off_and_bad_requests_name_the_field(tmp_path):
    service = make_service(write_config(tmp_path))
    with ServerThread(service) as url, httpx.Client(base_url=url) as client:
        answer = client.post("/v1/overrides", json={"node": "x", "kind": "isolate", "reason": "r"})
        assert answer.status_code == 403 and answer.json()["code"] == "write_disabled"
    service = make_service(write_config(tmp_path), write_token=WRITE)
    with ServerThread(service) as url, httpx.Client(base_url=url) as client:
        answer = client.post("/v1/overrides", headers=bearer(WRITE), json={"node": "x", "kind": "evict", "reason": "r"})
        assert answer.status_code == 422 and answer.json()["field"] == "kind"
        answer = client.post("/v1/overrides", headers=bearer(WRITE), json={"node": "x", "kind": "isolate"})
        assert answer.status_code == 422 and answer.json()["field"] == "reason"
        answer = client.post("/v1/exceptions", headers=bearer(WRITE), json={"owner": "o", "reason": "r", "node": "x"})
        assert answer.status_code == 422 and answer.json()["field"] == "expires"
        answer = client.post("/v1/exceptions", headers=bearer(WRITE), content=b"x" * 20000)
        assert answer.status_code == 413
        with service.db_lock:
            assert service.db.meta(META_KEY, {}) == {} and service.db.meta("enforcement.exceptions", []) == []


def test_the_write_token_must_differ_from_the_read_token(tmp_path):
    from wyneos_core.config import ConfigError

    with pytest.raises(ConfigError, match="must differ from the read token"):
        make_service(write_config(tmp_path), read_token=READ, write_token=READ)


def test_stock_agents_under_the_shipped_rulesets_without_keys_are_neither_isolated_nor_quarantined(tmp_path):
    # the quick start as a new user runs it: shipped rulesets, the licence step on with no key, stock agents
    config = write_config(tmp_path, extra='rulesets: {paths: ["builtin:"]}\n')
    config.write_text(config.read_text().replace("disable: [licence]", "disable: [governance, healing, enforcement]"))
    service = make_service(config, read_token=READ)
    with ServerThread(service) as url, httpx.Client(base_url=url, headers=bearer(READ)) as client:
        agents = [Agent(url, f"stock-{i}", tmp_path / f"agent-{i}", token=add_token(service), interval=0.1)
                  for i in range(3)]
        stop = threading.Event()
        threads = [threading.Thread(target=a.run, kwargs={"duration": 60, "stop": stop}) for a in agents]
        for t in threads:
            t.start()
        try:
            start = wait_for(lambda: len(client.get("/v1/nodes").json().get("nodes", [])) == 3
                             and service.orchestrator.tick_number)
            wait_for(lambda: service.orchestrator.tick_number >= start + 5)
            nodes = {n["id"]: n for n in client.get("/v1/nodes").json()["nodes"]}
            assert all(n["metadata"]["version"] for n in nodes.values())  # the agent reports its version
            in_force = client.get("/v1/actions").json()["in_force"]
            assert not [a for a in in_force if a["type"] in ("isolate", "quarantine")]  # (load may be shed)
            assert not any(n["isolated"] for n in nodes.values())
            report = service.view.report
            assert report.enforcement["licence_enforced"] is False
            assert {f["mode"] for f in report.enforcement["findings"]} <= {"audit", "warn"}
            assert not any(a.state["isolated"] for a in agents)
        finally:
            stop.set()
            for t in threads:
                t.join(10)


@pytest.mark.slow
def test_the_dashboard_shows_modes_overrides_and_what_held(tmp_path):
    from test_service_dashboard import browse

    config = write_config(tmp_path, extra="nodes: [{id: web-1}, {id: web-2}]\n"
                                          "enforcement: {actions: {quarantine: warn}}\n")
    service = make_service(config, plugins=(Forgiving(),), write_token=WRITE)
    with ServerThread(service) as url, httpx.Client(base_url=url) as client:
        answer = client.post("/v1/overrides", headers=bearer(WRITE),
                             json={"node": "web-1", "kind": "isolate", "reason": "audit", "by": "alice"})
        assert answer.status_code == 201
        wait_for(lambda: service.view.report is not None and service.view.report.enforcement.get("overrides"))
        dom = browse(url + "/", tmp_path, "--dump-dom")
    html = dom.stdout
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<h2>Enforcement</h2>" in html
    assert re.search(r"<td>isolate</td><td>web-1</td><td[^>]*>operator</td><td>alice</td>", html), html[-3000:]
    assert "<span>overrides: 1</span>" in html
    assert "licences not enforced (no trusted key)" in html


def test_the_dashboard_shows_the_candidates_difference_rule_by_rule(tmp_path):
    """Shadow rulesets on the dashboard: per rule, the nodes that would newly fail and the
    actions that would be added, not only totals."""
    from enforcement_helpers import hot
    from test_service_dashboard import browse

    (tmp_path / "hot.yaml").write_text(hot(0.9))
    (tmp_path / "cand").mkdir()
    (tmp_path / "cand" / "hot.yaml").write_text(hot(0.5))
    config = write_config(tmp_path, interval=0.3, stale=30, offline=60,
                          extra="nodes: [{id: web-1}, {id: web-2}]\n"
                                f"rulesets: {{paths: ['{tmp_path / 'hot.yaml'}'], "
                                f"candidates: ['{tmp_path / 'cand' / 'hot.yaml'}']}}\n")
    service = make_service(config)
    with ServerThread(service) as url:
        def shadowed():
            now = time.time()
            service.orchestrator.intake.put_many([Heartbeat("web-1", now, 0.7), Heartbeat("web-2", now, 0.2)])
            report = service.view.report
            shadow = report is not None and report.enforcement.get("shadow")
            return bool(shadow and shadow["totals"]["actions_added"])

        wait_for(shadowed)
        dom = browse(url + "/", tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r'<tbody id="shadow">(.*?)</tbody>', dom.stdout, re.S).group(1)
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", body, re.S)]
    # web-1 (load 0.7) is over the candidate's 0.5 ceiling: it would be isolated; web-2 would not
    assert cells == ["hot/isolate-hot", "-", "-", "1: isolate web-1", "-"], cells
