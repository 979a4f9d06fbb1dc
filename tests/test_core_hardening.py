"""Hostile plugins, hostile heartbeats and membership changes: the tick holds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import beat, cluster_yaml
from wyneos_core import Action, Heartbeat, LicenceResult, RuleResult, hookimpl
from wyneos_core.config import load_config
from wyneos_core.model import ORIGIN
from wyneos_core.plugins import PluginLoadError, PluginManager
from wyneos_core.registry import HeartbeatError
from wyneos_core.tick import Orchestrator


class Hostile:
    """Returns one good and several broken items from every contributing hook."""

    @hookimpl
    def wyneos_heartbeat(self, ctx):
        return [{"node_id": "n01", "timestamp": ctx.now}, Heartbeat("n02", ctx.now, 0.2)]

    @hookimpl
    def wyneos_licence_validate(self, nodes):
        return [LicenceResult({"n": 1}, False), LicenceResult("n03", "yes"), LicenceResult("n01", False, "revoked")]

    @hookimpl
    def wyneos_governance(self, nodes):
        return [RuleResult(["x"], "n01", False), RuleResult("r", "n01", "no"), RuleResult("mine", "n02", False)]

    @hookimpl
    def wyneos_healing(self):
        return [Action("isolate", ["n01"], "x", "hostile"), Action("quarantine", "n02", "x", "hostile", params={"s": {1}}),
                Action("Drop Tables", "n02", "x", "hostile"), Action("recover", "n02", "fine", "hostile")]


def test_broken_items_are_dropped_one_by_one_and_the_tick_goes_on(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(3, disable="[]"), plugins=[Hostile()])
    report = orch.tick()
    dropped = {e.hook: e.error for e in report.errors if e.kind == "invalid_result"}
    assert set(dropped) == {"wyneos_heartbeat", "wyneos_licence_validate", "wyneos_governance", "wyneos_healing"}
    assert "not a Heartbeat" in dropped["wyneos_heartbeat"]
    assert "returned 2 unusable item(s)" in dropped["wyneos_licence_validate"]
    assert "returned 3 unusable item(s)" in dropped["wyneos_healing"]
    # the good items of the same plugins were used
    assert report.heartbeats_accepted == 1 and orch.registry["n02"].load == 0.2
    assert report.licences["n01"].reason == "revoked"
    assert report.rule_summary["mine"] == {"passed": 0, "failed": 1}
    assert ("recover", "n02") in {(a.type, a.target) for a in report.actions}
    json.dumps(report.to_dict())  # and the report still serialises


def test_a_transport_that_raises_has_not_delivered(make_orchestrator, clock):
    class Broken:
        calls = 0

        @hookimpl
        def wyneos_deliver(self, receiver):
            Broken.calls += 1
            raise ConnectionError(f"{receiver} unreachable")

        @hookimpl
        def wyneos_enforcement(self):
            return [Action("revoke", "*", "r", "test")]

    orch = make_orchestrator(cluster_yaml(3, topology="star"), plugins=[Broken()],
                             sections={"plugins": {"settings": {"propagate": {"retries": 1}}}})
    beat(orch, clock, "n01", "n02", "n03")
    report = orch.tick()
    assert {d.target: (d.delivered, d.reason) for d in report.deliveries} == {
        n: (False, "relay_failed") for n in ("n01", "n02", "n03")}
    assert Broken.calls == 6  # 3 hops, each tried twice; the builtin never answered in its place
    assert sum(e.hook == "wyneos_deliver" for e in report.errors) == 6


def test_wrappers_are_refused_at_load():
    class Wrapper:
        @hookimpl(wrapper=True)
        def wyneos_governance(self):
            return (yield)

    with pytest.raises(PluginLoadError, match="'wyneos_governance' is declared as a wrapper"):
        PluginManager().register(Wrapper(), "wrapper")


def test_a_plugin_that_cannot_configure_stops_the_start(clock):
    class Bad:
        @hookimpl
        def wyneos_configure(self, config):
            raise RuntimeError("no licence server configured")

    config = load_config(text=cluster_yaml(1))
    with pytest.raises(PluginLoadError, match="failed in wyneos_configure: RuntimeError: no licence server"):
        Orchestrator(config, clock=clock, plugins=[Bad()], load_entrypoints=False, store=False)


@pytest.mark.parametrize("metadata, field, reason", [
    ({"restrictions": {}}, "metadata.restrictions", "reserved"),
    ({"a": json.loads("[" * 20 + "]" * 20)}, "metadata", "nested deeper than 16"),
])
def test_hostile_metadata_is_refused(make_orchestrator, clock, metadata, field, reason):
    orch = make_orchestrator(cluster_yaml(1))
    orch.intake.put(Heartbeat("n01", clock(), 0.1, metadata))
    report = orch.tick()
    [rejected] = report.heartbeats_rejected
    assert rejected["field"] == field and reason in rejected["reason"]


def test_very_deep_metadata_does_not_crash_the_tick(make_orchestrator, clock):
    deep: dict = {}
    cursor = deep
    for _ in range(5000):
        cursor["a"] = {}
        cursor = cursor["a"]
    orch = make_orchestrator(cluster_yaml(1))
    orch.intake.put(Heartbeat("n01", clock(), 0.1, deep))
    report = orch.tick()
    assert report.heartbeats_rejected[0]["field"] == "metadata"


def test_self_registered_nodes_join_the_mesh_up_to_the_cap(make_orchestrator, clock):
    orch = make_orchestrator(cluster_yaml(2), sections={"heartbeat": {"unknown_nodes": "register"}})
    orch.registry.max_nodes = 3
    beat(orch, clock, "n01", "n02", "edge-7", "edge-8")
    report = orch.tick()
    assert "edge-7" in orch.registry and orch.mesh.neighbours("edge-7") == [ORIGIN]
    assert [(r["node_id"], r["field"]) for r in report.heartbeats_rejected] == [("edge-8", "node_id")]
    assert "registry full" in report.heartbeats_rejected[0]["reason"]


def test_remove_node_leaves_no_route_through_it(make_orchestrator, clock):
    orch = make_orchestrator(
        "nodes: [{id: a}, {id: b}, {id: c}]\n"
        "mesh: {topology: explicit, edges: [[orchestrator, a], [a, b], [b, c], [orchestrator, c]]}\n"
        "plugins: {disable: [licence]}\n")
    assert orch.mesh.routing_tree().path("c") == [ORIGIN, "c"]
    orch.remove_node("b")
    assert "b" not in orch.mesh and "b" not in orch.registry
    added = orch.add_node("d", links=["a"])
    assert orch.mesh.routing_tree().path("d") == [ORIGIN, "a", "d"] and added.id == "d"


def test_nodes_dropped_from_the_config_are_deregistered(tmp_path, clock):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("nodes: [{id: lab-1}, {id: lab-2}]\nmesh: {topology: ring}\nplugins: {disable: [licence]}\n"
                   "report: {stdout: none, json_path: null}\n")
    with Orchestrator(load_config(cfg), clock=clock, load_entrypoints=False) as orch:
        orch.tick()
    cfg.write_text(cfg.read_text().replace(", {id: lab-2}", ""))
    with Orchestrator(load_config(cfg), clock=clock, load_entrypoints=False) as orch:
        assert [n.id for n in orch.registry] == ["lab-1"]
        report = orch.tick()
    assert report.notes == ["node lab-2 is no longer in the config: deregistered"]
    assert report.tick == 2


def test_report_file_of_a_large_cluster_lists_what_matters(make_orchestrator, clock, tmp_path):
    out = tmp_path / "r.json"
    orch = make_orchestrator(cluster_yaml(30), sections={"report": {"json_path": str(out), "max_nodes_in_file": 10}})
    beat(orch, clock, *[f"n{i:02d}" for i in range(1, 29)])  # n29 and n30 stay unknown
    first = orch.tick()
    data = json.loads(out.read_text())
    assert data["nodes_omitted"] == 0  # every node changed status this tick
    clock.advance(1)
    beat(orch, clock, *[f"n{i:02d}" for i in range(1, 29)])
    orch.tick()
    data = json.loads(out.read_text())
    assert sorted(n["id"] for n in data["nodes"]) == ["n29", "n30"] and data["nodes_omitted"] == 28
    assert first.to_dict()["nodes_omitted"] == 0 and len(first.to_dict()["nodes"]) == 30


def wyneos(*args, cwd):
    return subprocess.run([sys.executable, "-m", "wyneos_core.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_bad_interval_is_a_usage_error(tmp_path, value):
    out = wyneos("run", "--ticks", "1", "--interval", value, cwd=tmp_path)
    assert out.returncode == 2 and "--interval" in out.stderr and "Traceback" not in out.stderr


def test_unusable_state_path_names_the_setting(tmp_path):
    (tmp_path / "file").write_text("")
    out = wyneos("tick", "--state", str(tmp_path / "file" / "sub" / "s.db"), cwd=tmp_path)
    assert out.returncode == 2 and "state.path" in out.stderr and "Traceback" not in out.stderr


def test_non_finite_config_values_are_refused():
    from wyneos_core.config import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(text="tick: {interval: .inf}\n")
    assert info.value.field == "tick.interval" and "finite" in info.value.reason


def test_late_heartbeat_error_keeps_field_and_value():
    e = HeartbeatError("n1", "load", "out of range [0, 64]", float("nan"))
    assert e.to_dict() == {"node_id": "n1", "field": "load", "reason": "out of range [0, 64]", "value": "nan"}
