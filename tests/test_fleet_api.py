"""The fleet read routes on a real server: selectors, problems, search, sort and paging;
aggregates; history; the mesh around a node; explain for an agent-enrolled node; tokens."""

from __future__ import annotations

import httpx
import pytest

from service_helpers import Node, Quarantine, add_token, make_service, wait_for, write_config
from wyneos_core.selectors import SelectorError, parse
from wyneos_core.service.server import ServerThread

NODES = """nodes:
  - {id: q1, metadata: {role: bad, zone: eu}}
  - {id: c2, metadata: {zone: eu}}
  - {id: c3, metadata: {zone: us}}
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    service = make_service(write_config(tmp, interval=0.2, stale=30, offline=60, extra=NODES),
                           plugins=(Quarantine(),))
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        agents = [Node(f"agent-{i}") for i in range(3)]
        for agent in agents:
            body, headers = agent.enrol_request(add_token(service))
            assert client.post("/v1/enrol", content=body, headers=headers).status_code == 201
        for i, agent in enumerate(agents):
            body, headers = agent.heartbeat(load=0.1 * (i + 1), metadata={"zone": "eu" if i else "ap", "rack": f"r{i}"})
            assert client.post("/v1/heartbeats", content=body, headers=headers).status_code == 202
        wait_for(lambda: client.get("/v1/nodes/agent-2").json().get("status") == "online")
        wait_for(lambda: client.get("/v1/nodes/q1").json().get("isolated"))
        add_token(service, "future-node", uses=2)
        yield service, client


def _ids(answer) -> list[str]:
    return [n["id"] for n in answer["nodes"]]


def test_selectors_problems_search_sort_and_pages(fleet) -> None:
    _, client = fleet
    get = lambda **p: client.get("/v1/fleet/nodes", params=p).json()  # noqa: E731
    everything = get(limit=100)
    assert everything["total"] == everything["count"] == 6
    assert set(_ids(get(selector="zone=eu", limit=100))) == {"q1", "c2", "agent-1", "agent-2"}
    assert set(_ids(get(selector="zone=eu,status!=online", limit=100))) == {"q1", "c2"}
    assert set(_ids(get(selector="zone in (ap,us)", limit=100))) == {"agent-0", "c3"}
    assert set(_ids(get(selector="rack", limit=100))) == {"agent-0", "agent-1", "agent-2"}
    assert set(_ids(get(selector="!rack", limit=100))) == {"q1", "c2", "c3"}
    assert _ids(get(problem="isolated")) == ["q1"]
    assert set(_ids(get(problem="rule:heartbeat-fresh", limit=100))) == {"q1", "c2", "c3"}  # never heard from
    assert set(_ids(get(problem="unknown", selector="zone=eu", limit=100))) == {"q1", "c2"}
    newcomers = get(problem="tier:probation", limit=100)["count"]  # new nodes start on probation
    assert newcomers == 6 and get(problem="none")["count"] == 0
    assert _ids(get(q="AGENT-1")) == ["agent-1"]
    assert _ids(get(sort="-load", limit=3)) == ["agent-2", "agent-1", "agent-0"]
    worst = get(limit=1)["nodes"][0]
    assert worst["id"] == "q1" and "isolated" in worst["problems"]  # most problems first
    page = get(sort="id", limit=2, offset=2)
    assert page["count"] == 6 and _ids(page) == ["agent-2", "c2"]
    bad = client.get("/v1/fleet/nodes", params={"selector": "zone=eu,,tier=x"})
    assert bad.status_code == 422 and "empty requirement" in bad.json()["error"]
    bad = client.get("/v1/fleet/nodes", params={"sort": "colour"})
    assert bad.status_code == 422 and "sort must be one of" in bad.json()["error"]


def test_summary_history_and_mesh_around(fleet) -> None:
    _, client = fleet
    summary = client.get("/v1/fleet/summary").json()
    zones = {z["name"]: z for z in summary["by_zone"]}
    assert zones["eu"]["nodes"] == 4 and zones["eu"]["isolated"] == 1 and zones["us"]["nodes"] == 1
    assert sum(z["nodes"] for z in summary["by_zone"]) == summary["nodes"] == 6
    assert {"problem": "isolated", "nodes": 1} in summary["problems"]
    ticks = client.get("/v1/fleet/history", params={"limit": 5}).json()["ticks"]
    assert 1 <= len(ticks) <= 5 and [t["tick"] for t in ticks] == sorted(t["tick"] for t in ticks)
    assert sum(ticks[-1]["statuses"].get(s, 0) for s in ("online", "stale", "offline", "unknown")) == 6
    around = client.get("/v1/mesh/around/agent-1").json()
    assert around["center"] == "agent-1" and around["hops"]["agent-1"] == 0
    assert all(h <= 1 for h in around["hops"].values()) and len(around["hops"]) >= 2
    assert around["states"]["agent-1"]["status"] == "online"
    assert client.get("/v1/mesh/around/nope").status_code == 404


def test_explain_sees_an_agent_enrolled_node(fleet) -> None:
    _, client = fleet
    out = client.get("/v1/nodes/agent-1/explain").json()
    assert out["node"]["id"] == "agent-1" and out["node"]["metadata"]["rack"] == "r1"
    assert out["tick"] >= 1 and "actions" in out and "rulesets" in out
    isolated = client.get("/v1/nodes/q1/explain").json()
    [action] = [a for a in isolated["actions"] if a["type"] == "isolate"]
    assert action["status"] == "in_force" and action["origin"] == "test-quarantine"
    missing = client.get("/v1/nodes/nope/explain")
    assert missing.status_code == 404 and "no node 'nope'" in missing.json()["error"]


def test_tokens_are_listed_without_the_secret(fleet) -> None:
    service, client = fleet
    tokens = client.get("/v1/enrol/tokens").json()["tokens"]
    [mine] = [t for t in tokens if t["node_id"] == "future-node"]
    assert mine["uses_left"] == 2 and len(mine["id"]) == 12
    with service.db_lock:
        hashes = [r["token_hash"] for r in service.db.enrol_tokens()]
    assert any(h.startswith(mine["id"]) for h in hashes) and mine["id"] not in hashes


def test_selector_parsing_names_what_is_wrong() -> None:
    assert parse("zone=eu,tier!=trusted").matches({"zone": "eu", "tier": "probation"})
    assert not parse("zone=eu,tier!=trusted").matches({"zone": "eu", "tier": "trusted"})
    assert parse("tier!=trusted").matches({})  # absent differs
    assert str(parse("a==b, c in (d,e) ,!f")) == "a=b,c in (d,e),!f"
    for text, words in (("load>0.9", "no <, > or quotes"), ("zone=eu,", "empty requirement"),
                        ("zone in (a,b", "unbalanced"), ("x" * 1001, "at most 1000")):
        with pytest.raises(SelectorError, match=words):
            parse(text)


def test_the_last_tick_in_brief(fleet) -> None:
    _, client = fleet
    brief = client.get("/v1/fleet/tick").json()
    full = client.get("/v1/ticks/latest").json()
    assert brief["tick"] >= 1 and sum(brief["status_counts"][s] for s in ("online", "stale", "offline", "unknown")) == 6
    assert brief["actions_total"] == len(brief["actions"]) and "nodes" not in brief
    assert brief["tick"] <= full["tick"]
