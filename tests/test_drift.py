"""Drift: declared state (config, signed manifests) against what nodes report, each kind classified."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.conftest import beat, cluster_yaml
from wyneos_core.config import load_config
from wyneos_core.drift import DeclarationError, DriftEngine, declaration_from, seal_manifest
from wyneos_core.licensing.keys import generate_key, write_public_key
from wyneos_core.model import Node

WEB = {"labels": {"role": "web"}, "version": "1.0", "config_digest": "sha256:aa", "packages": ["nginx=1.24", "openssl=3"]}


def manifest(directory: Path, key, name: str, serial: int, **declared) -> None:
    payload = {"manifest_id": name, "serial": serial, "selector": {"labels": {"role": "web"}}, **declared}
    (directory / f"{name}.json").write_text(json.dumps(seal_manifest(payload, key)))


@pytest.fixture
def signed(tmp_path: Path):
    key = generate_key()
    write_public_key(tmp_path / "ops.pub", key)
    (tmp_path / "manifests").mkdir()
    return key, tmp_path


def drift_yaml(tmp_path: Path, n: int = 4) -> str:
    return cluster_yaml(n, extra=textwrap.dedent(f"""\
        drift:
          manifests: {tmp_path / 'manifests'}
          trusted_keys: [{tmp_path / 'ops.pub'}]
          rescan: 0
        """))


def tick(orch, clock, reports: dict[str, dict]) -> dict:
    for node_id, md in reports.items():
        beat(orch, clock, node_id, **md)
    report = orch.tick()
    clock.advance(5)
    return report


def states(report) -> dict[str, str]:
    return {t["node_id"]: t["to"] for t in report.transitions if t["kind"] == "drift"}


def test_each_kind_of_drift_is_classified(make_orchestrator, clock, signed) -> None:
    key, tmp = signed
    manifest(tmp / "manifests", key, "web-1", 1, version="1.0", config_digest="sha256:aa",
             packages=["openssl=3", "nginx=1.24"])
    orch = make_orchestrator(drift_yaml(tmp))
    fleet = {f"n0{i}": dict(WEB) for i in range(1, 5)}
    report = tick(orch, clock, fleet)
    assert report.drift["counts"]["in_sync"] == 4  # package order does not matter
    assert report.to_dict()["drift"]["counts"]["in_sync"] == 4

    # n01's configuration changed outside any manifest: unexplained, naming the field
    fleet["n01"] = {**WEB, "config_digest": "sha256:bb"}
    # n02 runs a new version before anyone declared it
    fleet["n02"] = {**WEB, "version": "1.1"}
    # n03 lost a package
    fleet["n03"] = {**WEB, "packages": ["nginx=1.24"]}
    started = clock()
    report = tick(orch, clock, fleet)
    assert states(report) == {"n01": "unexplained", "n02": "unexplained", "n03": "unexplained"}
    view = orch_scratch_drift(orch)
    assert view.get("n01")["fields"] == ["config_digest"]
    assert view.get("n03")["fields"] == ["packages"]
    assert view.get("n01")["since"] == started
    assert view.get("n04")["state"] == "in_sync"

    # n01 is put back by hand: repaired. A newer manifest declares 1.1: n02 intended,
    # n04 (still 1.0) pending until it rolls out, n03 still unexplained
    fleet["n01"] = dict(WEB)
    manifest(tmp / "manifests", key, "web-2", 2, version="1.1", config_digest="sha256:aa",
             packages=["openssl=3", "nginx=1.24"])
    fleet["n03"] = {**WEB, "version": "1.1", "packages": ["nginx=1.24"]}
    report = tick(orch, clock, fleet)
    assert states(report) == {"n01": "pending", "n02": "intended", "n04": "pending"}
    # n01 went back to 1.0 as the declaration moved to 1.1: it lags like n04
    view = orch_scratch_drift(orch)
    assert view.get("n03") == {**view.get("n03"), "state": "unexplained", "fields": ["packages"], "since": started}
    assert view.get("n04")["fields"] == ["version"]

    fleet["n04"] = {**WEB, "version": "1.1"}
    report = tick(orch, clock, fleet)
    assert states(report) == {"n04": "intended"}
    fleet["n03"] = {**WEB, "version": "1.1"}
    report = tick(orch, clock, fleet)
    assert states(report) == {"n03": "repaired"}  # back to the declared state, no manifest explains it
    assert report.drift["counts"] == {"in_sync": 0, "unexplained": 0, "pending": 1, "intended": 2, "repaired": 1,
                                      "undeclared": 0}


def orch_scratch_drift(orch):
    from wyneos_core.builtin.drift import engine_of

    return engine_of(orch.pm).view()


def test_a_manifest_that_does_not_verify_declares_nothing(make_orchestrator, clock, signed) -> None:
    key, tmp = signed
    manifest(tmp / "manifests", key, "web-1", 1, version="1.0")
    forged = json.loads((tmp / "manifests" / "web-1.json").read_text())
    forged["payload"]["version"] = "6.6.6"
    (tmp / "manifests" / "web-9.json").write_text(json.dumps(forged))
    stranger = generate_key()
    (tmp / "manifests" / "web-8.json").write_text(json.dumps(seal_manifest(
        {"manifest_id": "web-8", "serial": 8, "selector": {"labels": {"role": "web"}}, "version": "6.6.6"}, stranger)))
    orch = make_orchestrator(drift_yaml(tmp, 1))
    report = tick(orch, clock, {"n01": dict(WEB)})
    assert report.drift["counts"]["in_sync"] == 1
    refused = [n for n in report.notes if n.startswith("drift: manifest refused")]
    assert len(refused) == 2
    assert any("web-9.json" in n and "does not verify" in n for n in refused)
    assert any("web-8.json" in n and "not among the" in n for n in refused)


def test_config_declarations_and_rules_see_drift(make_orchestrator, clock, tmp_path) -> None:
    rules = tmp_path / "drift.yaml"
    rules.write_text(textwrap.dedent("""\
        ruleset: drift-watch
        stage: enforcement
        rules:
          - id: drifted-long
            description: unexplained drift for more than a minute
            when: 'node.drift.state == "unexplained" and drift_age() > "1m"'
            then:
              - degrade: {}
        """))
    text = cluster_yaml(2, extra=textwrap.dedent(f"""\
        drift:
          declared:
            - selector: {{node: n01}}
              version: "2.0"
        rulesets: {{paths: [{rules}]}}
        """))
    orch = make_orchestrator(text)
    fired = []
    for _ in range(20):
        report = tick(orch, clock, {"n01": {"version": "1.9"}, "n02": {"version": "1.9"}})
        fired.append(any(a.type == "degrade" for a in report.proposed))
    # n02 has no declaration: never drifted; n01 drifted from the first tick and acts after 1m
    first = fired.index(True)
    assert not any(fired[:first]) and all(fired[first:])
    assert 60 <= 5 * first <= 70
    assert {a.target for a in report.proposed if a.type == "degrade"} == {"n01"}


@pytest.mark.parametrize("entry, reason", [
    ({"version": "1"}, "selector"),
    ({"selector": {"node": "a", "labels": {}}, "version": "1"}, "selector"),
    ({"selector": {"node": "a"}}, "declares nothing"),
    ({"selector": {"node": "a"}, "packages": "nginx"}, "packages"),
    ({"selector": {"labels": {"role": 3}}, "version": "1"}, "selector.labels"),
    ({"selector": {"node": "a"}, "verison": "1"}, "unknown field 'verison'"),
])
def test_bad_declarations_are_refused_naming_the_field(entry, reason, tmp_path) -> None:
    with pytest.raises(DeclarationError, match=reason):
        declaration_from(entry, "drift.declared[0]")
    text = f"drift: {{declared: [{json.dumps(entry)}]}}\n"
    (tmp_path / "c.yaml").write_text(text)
    from wyneos_core.tick import Orchestrator

    config = load_config(tmp_path / "c.yaml")
    from wyneos_core.builtin import drift

    assert drift.wyneos_check_config(config)[0][0] == ("drift", "declared", 0)
    del Orchestrator


def test_only_changed_nodes_are_read_again() -> None:
    engine = DriftEngine([declaration_from({"selector": {"labels": {"role": "web"}}, "version": "1"}, "c")])
    nodes = [Node(f"n{i}", metadata={"labels": {"role": "web"}, "version": "1"}) for i in range(100)]
    engine.step(nodes, 0.0)
    calls = []
    real = engine._field_code
    engine._field_code = lambda *a: calls.append(a) or real(*a)  # type: ignore[method-assign]
    engine.step(nodes, 1.0)
    assert calls == []
    nodes[7].metadata = {"labels": {"role": "web"}, "version": "2"}
    step = engine.step(nodes, 2.0)
    assert calls == [("version", "2", "1")]  # one node, the one field declared
    assert step.transitions == [("n7", "in_sync", "unexplained", ["version"])]


def test_drift_is_kept_across_a_restart(tmp_path, clock) -> None:
    from tests.conftest import config_from
    from wyneos_core.builtin.drift import engine_of
    from wyneos_core.tick import Orchestrator

    text = cluster_yaml(3, extra=textwrap.dedent("""\
        drift:
          declared:
            - selector: {labels: {role: web}}
              version: "1.0"
        """))
    state = tmp_path / "state.db"
    fleet = {"n01": {"labels": {"role": "web"}, "version": "1.0"}, "n02": {"labels": {"role": "web"}, "version": "0.9"},
             "n03": {"labels": {"role": "web"}, "version": "1.0"}}

    def run(ticks: int, reports: dict) -> Orchestrator:
        config = config_from(text, state={"path": str(state)})
        orch = Orchestrator(config, clock=clock, load_entrypoints=False)
        with orch:
            for _ in range(ticks):
                tick(orch, clock, reports)
        return orch

    first = run(3, fleet)
    since = engine_of(first.pm).record("n02")["since"]
    assert engine_of(first.pm).record("n02")["state"] == "unexplained"
    clock.advance(600)  # down for ten minutes
    second = run(1, fleet)
    record = engine_of(second.pm).record("n02")
    assert record["state"] == "unexplained" and record["since"] == since  # not "since the restart"
    assert engine_of(second.pm).record("n01")["state"] == "in_sync"
    # the hand edit is undone after the restart: repaired, not intended
    third = run(1, {**fleet, "n02": {"labels": {"role": "web"}, "version": "1.0"}})
    assert engine_of(third.pm).record("n02")["state"] == "repaired"
    # a damaged saved state is refused, said, and drift found again
    import sqlite3

    with sqlite3.connect(state) as conn:
        conn.execute("UPDATE blobs SET data = ? WHERE name = 'drift'", (b"WYNDRIFT1\n" + b"\xff" * 20,))
    config = config_from(text, state={"path": str(state)})
    with Orchestrator(config, clock=clock, load_entrypoints=False) as orch:
        report = tick(orch, clock, fleet)
    assert any(n.startswith("drift: the saved drift state was not used") for n in report.notes)
    assert report.drift["counts"]["unexplained"] == 1


def test_the_cli_signs_and_checks_manifests(tmp_path) -> None:
    import subprocess
    import sys

    wyneos = [sys.executable, "-m", "wyneos_core.cli"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*wyneos, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)

    assert run("licence", "keygen", "--name", "release").returncode == 0
    (tmp_path / "web.yaml").write_text(textwrap.dedent("""\
        manifest_id: web-2.4.0
        serial: 3
        selector: {labels: {role: web}}
        version: "2.4.0"
        packages: [nginx=1.24.0, openssl=3.0.13]
        """))
    (tmp_path / "manifests").mkdir()
    signed = run("drift", "sign", "--key", "release.key", "web.yaml", "-o", "manifests/web.json")
    assert signed.returncode == 0, signed.stderr
    assert "signed manifest web-2.4.0 (serial 3)" in signed.stdout
    assert run("drift", "sign", "--key", "release.key", "web.yaml", "-o", "manifests/web.json").returncode == 2
    checked = run("drift", "check", "manifests", "--trusted-key", "release.pub")
    assert checked.returncode == 0 and "ok       web.json: web-2.4.0 serial 3, labels role=web" in checked.stdout
    doc = json.loads((tmp_path / "manifests" / "web.json").read_text())
    doc["payload"]["version"] = "6.6.6"
    (tmp_path / "manifests" / "edited.json").write_text(json.dumps(doc))
    checked = run("drift", "check", "manifests", "--trusted-key", "release.pub")
    assert checked.returncode == 1 and "REFUSED  edited.json: signature: does not verify" in checked.stdout
    (tmp_path / "bad.yaml").write_text("manifest_id: x\nserial: 1\nselector: {node: a}\nverison: '1'\n")
    bad = run("drift", "sign", "--key", "release.key", "bad.yaml")
    assert bad.returncode == 2 and "unknown field 'verison'" in bad.stderr and "did you mean 'version'" in bad.stderr
