"""Transports as installed plugins: the batch example of docs/writing-plugins.md and a
per-hop transport, pip-installed into a fresh environment, give the same deliveries on
the same cluster: those of the per-hop walk (a refused hop fails its subtree)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "writing-plugins.md"

FLEET = """\
from wyneos_core import Action, Heartbeat, hookimpl

@hookimpl
def wyneos_heartbeat(ctx):
    return [Heartbeat(node_id, ctx.now, 0.3) for node_id in ("a", "b", "c", "d", "e")]

@hookimpl
def wyneos_enforcement(ctx):
    return [Action("revoke", "*", "licence L-1 revoked", "fleet", params={"licence_id": "L-1"})]
"""

PER_HOP = """\
import json
from pathlib import Path

from wyneos_core import hookimpl

@hookimpl
def wyneos_deliver(ctx, action, sender, receiver):
    node = ctx.registry.get(receiver)
    answered = node is not None and not node.metadata.get("maintenance", False)
    with Path("hops.jsonl").open("a") as out:
        out.write(json.dumps([ctx.tick, sender, receiver, answered]) + "\\n")
    return answered
"""

CONFIG = """\
nodes: [{id: a}, {id: b, metadata: {maintenance: true}}, {id: c}, {id: d}, {id: e}]
mesh: {topology: explicit, edges: [[orchestrator, a], [a, b], [b, c], [a, d], [orchestrator, e]]}
plugins: {disable: [licence]}
state: {path: state.db}
report: {json_path: report.json, stdout: none}
"""

#: what the per-hop walk gives: b refuses, so b and c behind it are not reached
EXPECTED = {
    "a": (True, ["orchestrator", "a"], ""),
    "b": (False, ["orchestrator", "a", "b"], "relay_failed"),
    "c": (False, ["orchestrator", "a", "b", "c"], "relay_failed"),
    "d": (True, ["orchestrator", "a", "d"], ""),
    "e": (True, ["orchestrator", "e"], ""),
}


def _deliveries(work: Path) -> dict[str, tuple[bool, list[str], str]]:
    report = json.loads((work / "report.json").read_text())
    assert not report["errors"], report["errors"]
    return {d["target"]: (d["delivered"], d["path"], d["reason"]) for d in report["deliveries"]}


@pytest.mark.slow
def test_a_batch_and_a_per_hop_transport_installed_give_the_per_hop_deliveries(tmp_path):
    from venvtools import make_dist, make_venv, pip_install, run_in

    [batch_code] = re.findall(r"<!-- batch-example: wyneos_bulk_transport.py -->\n```python\n(.*?)```",
                              PAGE.read_text(), re.S)
    python = make_venv(tmp_path / "venv")
    pip_install(python, make_dist(tmp_path, "fleet", "wyneos_fleet", FLEET),
                make_dist(tmp_path, "bulk-transport", "wyneos_bulk_transport", batch_code),
                make_dist(tmp_path, "hop-refuser", "wyneos_hop_refuser", PER_HOP))
    listed = run_in(python, "plugins", "--json", cwd=tmp_path)
    hooks = {p["name"]: p["hooks"] for p in json.loads(listed.stdout)}
    assert hooks["bulk-transport"] == ["wyneos_deliver_batch"] and hooks["hop-refuser"] == ["wyneos_deliver"]

    # the per-hop transport alone: every hop through it, as before batches
    per_hop = tmp_path / "per-hop"
    per_hop.mkdir()
    (per_hop / "c.yaml").write_text(CONFIG)
    ran = run_in(python, "run", "--ticks", "1", "--interval", "0.01", "--config", "c.yaml",
                 "--disable", "bulk-transport", cwd=per_hop)
    assert ran.returncode == 0, ran.stderr
    assert _deliveries(per_hop) == EXPECTED
    hops = [tuple(json.loads(line)) for line in (per_hop / "hops.jsonl").read_text().splitlines()]
    assert hops == [  # level by level; a -> b tried three times (propagate.retries: 2); b -> c never
        (1, "orchestrator", "a", True), (1, "orchestrator", "e", True),
        (1, "a", "b", False), (1, "a", "d", True), (1, "a", "b", False), (1, "a", "b", False)]

    # the batch transport of the docs (the per-hop one disabled), twice in the same directory
    bulk = tmp_path / "bulk"
    bulk.mkdir()
    (bulk / "c.yaml").write_text(CONFIG)
    for run in (1, 2):
        ran = run_in(python, "run", "--ticks", "1", "--interval", "0.01", "--config", "c.yaml",
                     "--disable", "hop-refuser", cwd=bulk)
        assert ran.returncode == 0, ran.stderr
        got = _deliveries(bulk)
        if run == 1:
            assert got == EXPECTED
        else:  # the next tick, from the state file: the revocation in force, b and c tried again
            assert got == {t: EXPECTED[t] for t in ("b", "c")}
    messages = [json.loads(line) for line in (bulk / "bulk-outbox.jsonl").read_text().splitlines()]
    first = [(m["level"], m["attempt"], m["to"], m["answered"]) for m in messages if m["tick"] == 1]
    assert first == [(1, 0, "a", True), (1, 0, "e", True), (2, 0, "b", False), (2, 0, "d", True),
                     (2, 1, "b", False), (2, 2, "b", False)]
    assert {m["to"] for m in messages if m["tick"] == 2} == {"a", "b"}  # the way to b, again; not c
    assert not (bulk / "hops.jsonl").exists()

    # both installed: the batch transport answers first, the per-hop one is not called
    both = tmp_path / "both"
    both.mkdir()
    (both / "c.yaml").write_text(CONFIG)
    ran = run_in(python, "run", "--ticks", "1", "--interval", "0.01", "--config", "c.yaml", cwd=both)
    assert ran.returncode == 0, ran.stderr
    assert _deliveries(both) == EXPECTED
    assert (both / "bulk-outbox.jsonl").exists() and not (both / "hops.jsonl").exists()
