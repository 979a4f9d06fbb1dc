"""The report file and the state writes list what changed, found over the columns: the
report file is the same document as ``TickReport.to_dict`` (whole list or not), and the
state file's node rows written in a tick are exactly the nodes that changed."""

from __future__ import annotations

import dataclasses
import itertools
import json
import sqlite3

import pytest

from conftest import beat, cluster_yaml, config_from
from wyneos_core.builtin.listing import node_dicts, pick, report_dict
from wyneos_core.tick import Orchestrator

N = 40


def start(tmp_path, max_nodes: int):
    """A cluster's config with a state file and a report file listing at most ``max_nodes``."""
    config = config_from(cluster_yaml(N), state={"path": str(tmp_path / "state.db")})
    config["report"]["json_path"] = str(tmp_path / "report.json")
    config["report"]["max_nodes_in_file"] = max_nodes
    return config


def ticks(orch: Orchestrator, clock, count: int, silent: set[str], hot: set[str] = frozenset()):
    for _ in range(count):
        for i in range(1, N + 1):
            node_id = f"n{i:02d}"
            if node_id not in silent:
                beat(orch, clock, node_id, load=0.99 if node_id in hot else 0.3)
        yield orch.tick()
        clock.advance(10)


@pytest.mark.parametrize("max_nodes", [5, 1000])
def test_the_report_file_is_the_reports_own_document(tmp_path, clock, max_nodes):
    config = start(tmp_path, max_nodes)
    orch = Orchestrator(config, clock=clock, load_entrypoints=False)
    try:
        seen_listed = set()
        for report in ticks(orch, clock, 8, silent={"n07", "n21"}, hot={"n30"}):
            written = json.loads((tmp_path / "report.json").read_text())
            want = json.loads(json.dumps(report.to_dict(max_nodes)))
            for doc in (written, want):  # the report step's own time is added once it returned
                doc.pop("timings_ms")
            assert written == want
            seen_listed.add(len(written["nodes"]))
            assert report_dict(report, orch.registry, max_nodes) == report.to_dict(max_nodes)
            plain = dataclasses.replace(report, nodes=list(report.nodes), licences=dict(report.licences))
            assert report_dict(plain, orch.registry, max_nodes) == report.to_dict(max_nodes)  # a plugin's lists
        if max_nodes == 5:
            assert written["nodes_omitted"] == N - len(written["nodes"]) > 0
            assert {n["id"] for n in written["nodes"]} >= {"n07", "n21"}   # offline and isolated
        else:
            assert seen_listed == {N}
    finally:
        orch.stop()


def test_node_rows_are_made_from_the_columns_as_node_to_dict(tmp_path, clock):
    orch = Orchestrator(start(tmp_path, 1000), clock=clock, load_entrypoints=False)
    try:
        report = list(ticks(orch, clock, 5, silent={"n03"}))[-1]
        assert node_dicts(report.nodes) == [n.to_dict() for n in report.nodes]
        wanted = {"n03", "n40", "n01", "gone"}
        assert [n.id for n in pick(report.nodes, orch.registry, wanted)] == ["n01", "n03", "n40"]
        assert pick(list(report.nodes), orch.registry, wanted) == pick(report.nodes, orch.registry, wanted)
    finally:
        orch.stop()


def stored_fields(node) -> dict:
    """A node's fields the state file keeps that are not soft state (heartbeat time, load)."""
    row = node.to_dict()
    return {k: row[k] for k in ("id", "status", "metadata", "licence_ref", "fingerprint", "isolated")}


def test_the_state_file_gets_a_row_for_each_changed_node_only(tmp_path, clock):
    orch = Orchestrator(start(tmp_path, 1000), clock=clock, load_entrypoints=False)
    path = tmp_path / "state.db"
    try:
        changed_per_tick = []
        before: dict[str, dict] = {}
        targets_unchanged = 0
        for report in itertools.chain(ticks(orch, clock, 3, silent={"n05", "n06"}),
                                      ticks(orch, clock, 4, silent={"n05", "n06"}, hot={"n30"})):
            status = {t["node_id"] for t in report.transitions if t.get("kind") == "status"}
            now = {n.id: stored_fields(n) for n in report.nodes}
            targets = {a.target for a in report.actions if a.target in now}
            moved = {t for t in targets if before.get(t) != now[t]}  # an isolation, not a load reduction
            targets_unchanged += len(targets - moved - status)
            changed_per_tick.append((report.tick, status | moved))
            before = now
    finally:
        orch.stop()
    conn = sqlite3.connect(path)
    try:
        rows = dict(conn.execute("SELECT updated_tick, COUNT(*) FROM nodes GROUP BY updated_tick"))
        latest = {tick: {r[0] for r in conn.execute("SELECT id FROM nodes WHERE updated_tick = ?", (tick,))}
                  for tick in rows}
    finally:
        conn.close()
    assert sum(rows.values()) == N
    last_written = {}
    for tick, changed in changed_per_tick[1:]:
        for node_id in changed:
            last_written[node_id] = tick
    assert any(changed for _, changed in changed_per_tick[1:])   # n05 and n06 went stale, offline, isolated
    assert targets_unchanged  # n30's load reductions changed nothing stored: no row written for them
    for tick, ids in latest.items():
        if tick == 1:
            assert ids == {f"n{i:02d}" for i in range(1, N + 1)} - set(last_written)
        else:
            assert ids == {n for n, t in last_written.items() if t == tick}


def test_licence_columns_and_the_walk_give_the_same_trust_evidence_and_actions(tmp_path):
    """The trust step's licence codes and the enforcement step's licence actions read the
    licence step's columns; a plain dict of the same results gives the same."""
    from tests.conftest import FakeClock
    from tests.test_licence_support import DAY, T0, Issuer, licence_config, orchestrator
    from wyneos_core.builtin.enforcement import wyneos_enforcement
    from wyneos_core.builtin.trust import _licence_codes

    issuer = Issuer(tmp_path)
    d = tmp_path / "licences"
    issuer.write(d, "ok")
    issuer.write(d, "grace", expires=T0 - DAY, issued=T0 - 30 * DAY, grace_days=7)
    issuer.write(d, "old", expires=T0 - DAY, issued=T0 - 30 * DAY)
    nodes = [{"id": f"n{i}", "licence": ("ok", "grace", "old", None)[i % 4]} for i in range(12)]
    for spec in nodes:
        if spec["licence"] is None:
            del spec["licence"]
    clock = FakeClock(T0)
    orch = orchestrator(licence_config(tmp_path, nodes), clock)
    report = orch.tick()
    lic = report.licences
    assert hasattr(lic, "results")                              # the builtin's columns
    plain = dict(lic.items())
    node_list = orch.registry.nodes()
    columns = _licence_codes(node_list, node_list.ids(), lic)
    walked = _licence_codes(node_list, node_list.ids(), plain)
    assert columns.tolist() == walked.tolist() and set(columns.tolist()) == {0, 1, 2}
    from types import SimpleNamespace

    def actions(licences):
        return sorted((a.type, a.target, a.reason) for a in wyneos_enforcement(
            SimpleNamespace(), node_list, licences, []))

    assert actions(lic) == actions(plain) and len(actions(plain)) == 9


def test_disruption_budgets_count_groups_over_the_columns_as_node_by_node(clock):
    """Budget groups (selector, per label) counted over the node table's columns equal
    the count node by node, with labels missing, null, nested, numeric and boolean."""
    from wyneos_core.enforcement.budgets import BudgetBook

    zones = ["eu", "us", None, {"nested": 1}, 7, True, "eu", "us"]
    lines = "\n".join(
        f"  - {{id: n{i:02d}, metadata: {{tier: {'gold' if i % 3 else 'silver'}"
        + ("" if i % 8 == 2 else f", zone: {json.dumps(zones[i % 8])}")
        + "}}" for i in range(40))
    text = f"""
heartbeat: {{interval: 5, stale_after: 15, offline_after: 40, max_clock_skew: 30}}
mesh: {{topology: ring, origin_links: 2, seed: 1}}
plugins: {{disable: [licence]}}
nodes:
{lines}
"""
    orch = Orchestrator(config_from(text), clock=clock, load_entrypoints=False, store=False)
    try:
        for _ in range(6):
            beat(orch, clock, *(f"n{i:02d}" for i in range(40) if i % 5))  # every fifth falls silent
            orch.tick()
            clock.advance(10)
        orch.registry.get("n01").isolated = True
        book = BudgetBook.from_config({"budgets": [
            {"name": "fleet", "max_disrupted": "10%"},
            {"name": "zones", "per": "zone", "max_disrupted": 1},
            {"name": "gold", "selector": {"tier": "gold"}, "per": "zone", "unhealthy_threshold": 0.5},
        ], "severe_actions": ["isolate"]})
        disrupted = {"n03", "n04", "gone"}
        columns = book.counts(orch.registry, disrupted)
        walked = book._counts_walk(list(orch.registry), disrupted)
        assert columns == walked
        size, unhealthy, used = columns
        out = sum(1 for n in orch.registry if n.isolated or n.id in disrupted)
        assert size[("fleet", "*")] == 40 and unhealthy[("fleet", "*")] == 8 and used[("fleet", "*")] == out > 3
        assert ("zones", "7") in size and ("zones", "True") in size and not any("nested" in g for _, g in size)
    finally:
        orch.stop()


@pytest.mark.parametrize("script, args, wanted", [
    ("bench_tick_steps.py", ["--ticks", "3"], {"trust", "decide", "report", "total"}),
    ("bench_tick_cpu.py", ["--rounds", "2"], {"tick_report", "decide", "healing", "total"}),
])
def test_the_step_benchmarks_run_at_a_small_size(script, args, wanted):
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "bench" / script
    out = subprocess.run([sys.executable, str(bench), "--nodes", "300", *args], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    steps = json.loads(out.stdout)
    assert wanted <= set(steps) and steps["total"] > 0
    assert all(steps[k] > 0 for k in wanted if k != "report")


@pytest.mark.parametrize("max_nodes", [5, 1000])
def test_the_report_file_is_written_in_chunks_as_the_same_bytes(tmp_path, clock, max_nodes, monkeypatch):
    """The report file's node list is encoded a chunk of rows at a time (the first tick of a
    large fleet lists every node): the same bytes as the whole document encoded at once."""
    from wyneos_core.builtin import listing
    from wyneos_core.builtin.report import encode_json, report_json
    monkeypatch.setattr(listing, "CHUNK", 3)
    monkeypatch.setattr(listing.node_chunks, "__defaults__", (None, 3))
    config = start(tmp_path, max_nodes)
    orch = Orchestrator(config, clock=clock, load_entrypoints=False)
    try:
        for report in ticks(orch, clock, 4, silent={"n07"}, hot={"n30"}):
            pieces = list(report_json(report, orch.registry, max_nodes))
            whole = encode_json(report_dict(report, orch.registry, max_nodes))
            assert b"".join(pieces) == whole
            listed = len(json.loads(whole)["nodes"])
            assert len(pieces) >= 2 * len(report.to_dict()) + listed // 3  # a piece per chunk of 3 rows
            plain = dataclasses.replace(report, nodes=list(report.nodes), licences=dict(report.licences))
            assert b"".join(report_json(plain, orch.registry, max_nodes)) == encode_json(
                report_dict(plain, orch.registry, max_nodes))
    finally:
        orch.stop()
