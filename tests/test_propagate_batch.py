"""Batched delivery: one ``wyneos_deliver_batch`` call per tree level (and retry) for every
action, with the same outcome as the per-hop walk it replaced; per-hop transports keep
working through the builtin batch transport."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest
from conftest import beat, cluster_yaml

from wyneos_core import hookimpl
from wyneos_core.builtin.decide import DecideState
from wyneos_core.model import ORIGIN, Action

RETRIES = 2


def answers(action: Action, sender: str, receiver: str, attempt: int) -> bool:
    """A lossy network, the same for both kinds of transport: some hops never answer,
    some only once tried again."""
    h = zlib.crc32(f"{action.target}:{sender}>{receiver}".encode())
    if h % 13 == 0:
        return False
    return not (h % 5 == 0 and attempt == 0)


class PerHop:
    def __init__(self):
        self.calls: dict[tuple[int, str, str, str], int] = {}

    @hookimpl
    def wyneos_deliver(self, ctx, action, sender, receiver):
        key = (ctx.tick, action.id, sender, receiver)
        attempt = self.calls.get(key, 0)
        self.calls[key] = attempt + 1
        return answers(action, sender, receiver, attempt)


class Batch:
    def __init__(self):
        self.batches: list[tuple[int, int, int]] = []  # (tick, level, attempt)
        self.hops = 0

    @hookimpl
    def wyneos_deliver_batch(self, ctx, hops):
        self.batches.append((ctx.tick, hops.level, hops.attempt))
        self.hops += len(hops)
        return np.array([answers(a, s, r, hops.attempt) for a, s, r in hops])


class Recorder:
    """Takes the routing tree the builtin step will use, and proposes the test's actions."""

    def __init__(self, plan):
        self.plan = plan
        self.trees = {}
        self.actions = {}

    @hookimpl
    def wyneos_enforcement(self, ctx):
        return self.plan.get(ctx.tick, [])

    @hookimpl(tryfirst=True)
    def wyneos_propagate(self, ctx, actions):
        from wyneos_core.builtin.decide import state_of

        held = state_of(ctx.orchestrator).in_force.values()  # redelivered ones too
        self.actions[ctx.tick] = {**{h.action.id: h.action for h in held}, **{a.id: a for a in actions}}
        self.trees[ctx.tick] = ctx.routing_tree()
        return None


def reference(tree, mesh, routed: dict[str, list[str]], actions: dict[str, Action], retries: int):
    """The per-action, hop-by-hop walk of the builtin step before batches (what each
    target's delivery must be), and the hops it tried: (action id, sender, receiver) -> tries."""
    parent, avoided = tree.parent, tree.avoided
    out, tries = {}, {}
    for action_id, targets in routed.items():
        action = actions[action_id]
        reachable = []
        for t in targets:
            if t not in mesh:
                out[action_id, t] = (False, [], "unknown_node")
            elif t in parent:
                reachable.append(t)
            else:
                out[action_id, t] = (False, [], avoided.get(t, "partition"))
        hops, seen = [], {ORIGIN}
        for t in reachable:
            chain, v = [], t
            while v not in seen:
                chain.append((parent[v], v))
                seen.add(v)
                v = parent[v]
            hops.extend(reversed(chain))
        failed = set()
        for s, r in hops:
            if s in failed:
                failed.add(r)
                continue
            for attempt in range(retries + 1):
                tries[action_id, s, r] = attempt + 1
                if answers(action, s, r, attempt):
                    break
            else:
                failed.add(r)
        for t in reachable:
            out[action_id, t] = (t not in failed, tree.path(t), "relay_failed" if t in failed else "")
    return out, tries


def run_cluster(make_orchestrator, clock, transport, seed: int):
    rng = random.Random(seed)
    n = 120
    ids = [f"n{i:02d}" for i in range(1, n + 1)]
    silent = set(rng.sample(ids, 6))
    plan = {}
    for tick in (2, 3):
        picked = rng.sample(ids, 30)
        plan[tick] = [Action(("isolate", "quarantine", "reduce_load")[i % 3], t, "test", "test",
                             params={"target_load": 0.1} if i % 3 == 2 else {}) for i, t in enumerate(picked)]
    plan[3].append(Action("revoke", "*", "licence revoked", "test"))
    recorder = Recorder(plan)
    orch = make_orchestrator(
        cluster_yaml(n, topology="small_world"),
        plugins=[recorder, transport],
        sections={"plugins": {"disable": ["licence"], "settings": {"propagate": {"retries": RETRIES}}},
                  "decide": {"max_isolations_per_tick": 100, "max_partitioned_fraction": 0.9}})
    for extra in ("p1", "p2", "loner"):  # two cut off together, one in no mesh at all
        orch.registry.register(extra, now=clock())
    orch.mesh.add_edges([("p1", "p2")])
    ids += ["p1", "p2", "loner"]
    reports = []
    for tick in (1, 2, 3):
        beat(orch, clock, *(ids if tick == 1 else [i for i in ids if i not in silent]), load=0.3)
        if tick > 1:
            beat(orch, clock, *rng.sample(sorted(set(ids) - silent), 20), load=0.95)
        reports.append(orch.tick())
        clock.advance(45)
    return orch, recorder, reports


@pytest.mark.parametrize("kind", ["per-hop", "batch"])
def test_deliveries_match_the_per_hop_walk(make_orchestrator, clock, kind):
    transport = PerHop() if kind == "per-hop" else Batch()
    orch, recorder, reports = run_cluster(make_orchestrator, clock, transport, seed=7)
    tried = {}
    compared = 0
    reasons = set()
    for report in reports[1:]:
        actions = recorder.actions[report.tick]
        routed: dict[str, list[str]] = {}
        for d in report.deliveries:
            routed.setdefault(d.action_id, []).append(d.target)
        expected, tries = reference(recorder.trees[report.tick], orch.mesh, routed, actions, RETRIES)
        tried.update({(report.tick, *key): count for key, count in tries.items()})
        got = {(d.action_id, d.target): (d.delivered, d.path, d.reason) for d in report.deliveries}
        assert got == expected
        compared += len(got)
        reasons |= {d.reason for d in report.deliveries}
        assert report.to_dict()  # and the report still serialises
    # the walk met every kind of outcome, and the revoke reached the whole fleet
    assert {"", "relay_failed", "offline", "isolated", "partition", "unknown_node"} <= reasons, reasons
    assert compared > 250
    if kind == "per-hop":
        assert transport.calls == tried  # every hop through the per-hop hook, tried as often as before
    else:
        assert transport.hops == sum(tried.values())
        for tick in (2, 3):
            calls = [(lv, at) for t, lv, at in transport.batches if t == tick]
            assert calls == sorted(calls)  # level by level, its retries before the next level
            assert len(set(calls)) == len(calls)  # one call per level and attempt


def test_a_failed_hop_fails_its_subtree_and_is_retried_in_a_batch_of_its_own(make_orchestrator, clock):
    seen = []

    class Bulk:
        @hookimpl
        def wyneos_deliver_batch(self, hops):
            seen.append((hops.level, hops.attempt, list(zip(hops.senders, hops.receivers))))
            return [r != "n02" for r in hops.receivers]

    class Revoker:
        @hookimpl
        def wyneos_enforcement(self):
            return [Action("revoke", "*", "r", "test")]

    orch = make_orchestrator(
        "nodes: [{id: n01}, {id: n02}, {id: n03}, {id: n04}]\n"
        "mesh: {topology: explicit, edges: [[orchestrator, n01], [n01, n02], [n02, n03], [orchestrator, n04]]}\n"
        "plugins: {disable: [licence], settings: {propagate: {retries: 1}}}\n",
        plugins=[Bulk(), Revoker()])
    beat(orch, clock, "n01", "n02", "n03", "n04")
    report = orch.tick()
    assert {d.target: (d.delivered, d.reason) for d in report.deliveries} == {
        "n01": (True, ""), "n02": (False, "relay_failed"), "n03": (False, "relay_failed"), "n04": (True, "")}
    assert seen == [
        (1, 0, [(ORIGIN, "n01"), (ORIGIN, "n04")]),
        (2, 0, [("n01", "n02")]),
        (2, 1, [("n01", "n02")]),  # the retry: only the hop not acknowledged
    ]  # n03 is never tried: its sender never got the action
    assert report.to_dict()["deliveries"][2]["path"] == [ORIGIN, "n01", "n02", "n03"]


@pytest.mark.parametrize("answer", [[True], "yes", np.array([1, 1, 1]), None])
def test_a_bad_batch_answer_delivers_nothing_and_is_reported(make_orchestrator, clock, answer):
    class Odd:
        @hookimpl
        def wyneos_deliver_batch(self):
            return answer

    class Revoker:
        @hookimpl
        def wyneos_enforcement(self):
            return [Action("revoke", "*", "r", "test")]

    orch = make_orchestrator(cluster_yaml(3, topology="star"), plugins=[Odd(), Revoker()])
    beat(orch, clock, "n01", "n02", "n03")
    report = orch.tick()
    delivered = {d.target: d.delivered for d in report.deliveries}
    if answer is None:  # passed on: the builtin batch transport acknowledges
        assert delivered == dict.fromkeys(("n01", "n02", "n03"), True) and not report.errors
    else:
        assert delivered == dict.fromkeys(("n01", "n02", "n03"), False)
        errors = [e for e in report.errors if e.hook == "wyneos_deliver_batch"]
        assert errors and errors[0].kind == "invalid_result" and "one bool per hop (3)" in errors[0].error


def test_a_batch_transport_that_raises_has_not_delivered_and_the_tick_goes_on(make_orchestrator, clock):
    class Broken:
        calls = 0

        @hookimpl
        def wyneos_deliver_batch(self, hops):
            Broken.calls += 1
            raise ConnectionError("bus down")

        @hookimpl
        def wyneos_enforcement(self):
            return [Action("revoke", "*", "r", "test")]

    orch = make_orchestrator(cluster_yaml(3, topology="star"), plugins=[Broken()],
                             sections={"plugins": {"settings": {"propagate": {"retries": 1}}}})
    beat(orch, clock, "n01", "n02", "n03")
    report = orch.tick()
    assert {d.target: (d.delivered, d.reason) for d in report.deliveries} == {
        n: (False, "relay_failed") for n in ("n01", "n02", "n03")}
    assert Broken.calls == 2  # one level, tried twice; the builtin never answered in its place
    assert sum(e.hook == "wyneos_deliver_batch" and "bus down" in e.error for e in report.errors) == 2


def test_the_builtin_batch_transport_logs_hops_only_at_debug(make_orchestrator, clock, caplog):
    import logging

    class Revoker:
        @hookimpl
        def wyneos_enforcement(self):
            return [Action("revoke", "*", "r", "test")]

    for level in (logging.INFO, logging.DEBUG):
        orch = make_orchestrator(cluster_yaml(3, topology="star"), plugins=[Revoker()])
        beat(orch, clock, "n01", "n02", "n03")
        with caplog.at_level(level, logger="wyneos.propagate"):
            report = orch.tick()
        assert len(report.deliveries) == 3
        if level == logging.INFO:
            assert not [r for r in caplog.records if r.name == "wyneos.propagate"]
    lines = [r.getMessage() for r in caplog.records if r.name == "wyneos.propagate"]
    assert any("level 1, attempt 0: 3 hop(s) of 1 action(s) acknowledged" in line for line in lines), lines
    assert any(line.endswith("orchestrator -> n02") for line in lines), lines


def test_restrictions_are_kept_lifted_and_taken_from_nodes_that_join_with_some(make_orchestrator, clock):
    """Restrictions are synced for the restricted nodes only, but a node that joins makes
    the next sync look at every node (restrictions it came with are lifted)."""

    class Enforcer:
        active = True

        @hookimpl
        def wyneos_enforcement(self, ctx):
            return [Action("quarantine", "n02", "suspicious", "test")] if ctx.tick > 1 and Enforcer.active else []

    orch = make_orchestrator(cluster_yaml(4), plugins=[Enforcer()])
    ids = ["n01", "n02", "n03", "n04"]
    for _ in range(2):
        beat(orch, clock, *ids)
        orch.tick()
        clock.advance(5)
    assert orch.registry["n02"].metadata["restrictions"] == {"quarantined": "suspicious"}
    before = orch.registry["n02"].metadata
    orch.registry.register("n05", now=clock(), metadata={"restrictions": {"quarantined": "forged"}})
    orch.mesh.add_edges([("n04", "n05")])
    beat(orch, clock, *ids, "n05")
    orch.tick()
    assert "restrictions" not in orch.registry["n05"].metadata
    assert orch.registry["n02"].metadata is before  # unchanged: not replaced again
    Enforcer.active = False  # its cause is gone, and the decide state is a new one (as a benchmark does)
    orch._decide_state = DecideState()
    clock.advance(5)
    beat(orch, clock, *ids, "n05")
    orch.tick()
    assert "restrictions" not in orch.registry["n02"].metadata
    assert "restrictions" in before  # the old mapping, shared with earlier reports, untouched


def _plan_node_by_node(ctx, action, parent, planned):
    """The load plan as it was made before the columns: a node view per neighbour."""
    from wyneos_core.model import NodeStatus

    healing = ctx.config["healing"]
    node = ctx.registry.get(action.target)
    load = planned.get(action.target, node.load if node is not None else None)
    if node is None or load is None or action.target not in ctx.mesh:
        return {"moves": {}, "moved": 0.0, "unplaced": 0.0, "load": load, "why": "load unknown"}
    goal = float(action.params.get("target_load", healing["target_load"] if action.type == "reduce_load" else 0.0))
    excess = load - goal
    if excess <= 1e-9:
        return {"moves": {}, "moved": 0.0, "unplaced": 0.0, "load": load, "why": "at or below target"}
    ceiling = healing["neighbour_max_load"]
    spare = []
    for n in ctx.mesh.neighbours(action.target):
        other = ctx.registry.get(n)
        if other is None or other.isolated or other.status is not NodeStatus.ONLINE or n not in parent:
            continue
        other_load = planned.get(n, other.load)
        if other_load is not None and ceiling - other_load > 1e-9:
            spare.append((ceiling - other_load, n))
    spare.sort(key=lambda item: (-item[0], item[1]))
    moves, left = {}, excess
    for room, n in spare:
        if left <= 1e-9:
            break
        amount = min(room, left)
        moves[n] = round(amount, 6)
        planned[n] = planned.get(n, ctx.registry[n].load or 0.0) + amount
        left -= amount
    planned[action.target] = load - (excess - left)
    return {"moves": moves, "moved": round(excess - left, 6), "unplaced": round(max(left, 0.0), 6), "load": load,
            "why": "" if left <= 1e-9 else "no healthy neighbour with spare capacity for the rest"}


def test_load_plans_from_the_columns_equal_the_node_by_node_plans(make_orchestrator, clock):
    from wyneos_core.builtin.propagate import load_receivers, plan_load_moves
    from wyneos_core.model import TickReport
    from wyneos_core.tick import TickContext

    rng = random.Random(3)
    ids = [f"n{i:02d}" for i in range(1, 81)]
    orch = make_orchestrator(cluster_yaml(80, topology="small_world"))
    for node_id in ids:
        beat(orch, clock, node_id, load=rng.choice([0.1, 0.5, 0.7, 0.79, 0.95, 1.0]))
    orch.tick()
    for node_id in rng.sample(ids, 8):
        orch.mesh.isolate(node_id)
        orch.registry[node_id].isolated = True
    for node_id in rng.sample(ids, 8):
        orch.registry[node_id].load = None  # never reported a load
    clock.advance(60)
    alive = rng.sample(ids, 60)
    beat(orch, clock, *alive)  # the others go offline: neither receivers nor reached
    clock.advance(20)
    beat(orch, clock, *alive[10:])  # ten go stale: reached, but no receivers
    orch.tick()
    assert {orch.registry[n].status.value for n in ids} == {"online", "stale", "offline"}
    ctx = TickContext(tick=9, now=clock(), config=orch.config, registry=orch.registry, mesh=orch.mesh,
                      store=None, orchestrator=orch, report=TickReport(tick=9, started_at=clock()))
    tree = ctx.routing_tree()
    actions = [Action(rng.choice(["reduce_load", "redistribute"]), t, "test", "test",
                      params=rng.choice([{}, {"target_load": 0.2}])) for t in rng.choices(ids + ["ghost"], k=60)]
    receivers = load_receivers(ctx, [a.target for a in actions], tree.parent)
    ours, theirs = {}, {}
    plans = [(plan_load_moves(ctx, a, tree.parent, ours, receivers), _plan_node_by_node(ctx, a, tree.parent, theirs))
             for a in actions]
    assert [p for p, _ in plans] == [p for _, p in plans]
    assert ours == theirs
    assert sum(bool(p["moves"]) for p, _ in plans) > 10 and any(p["unplaced"] for p, _ in plans)
