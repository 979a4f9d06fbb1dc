"""docs/trust.md: the orchestrator vouches for every node still online (heard within
``heartbeat.stale_after``), not only for the nodes heard from this tick."""

from __future__ import annotations

import pytest

from conftest import beat, cluster_yaml
from wyneos_core.builtin.trust import explain


def test_the_orchestrator_vouches_for_a_node_silent_for_ticks_while_it_is_still_online(make_orchestrator,
                                                                                         clock):
    # ticks 5 s apart, stale after 15 s: a node heard every third tick is online at every tick
    orch = make_orchestrator(cluster_yaml(5))
    every_tick, every_third, gone = ["n01", "n02"], ["n03", "n04"], "n05"
    silent_ticks = 0
    for tick in range(12):
        heard = every_tick + (every_third if tick % 3 == 0 else []) + ([gone] if tick < 2 else [])
        beat(orch, clock, *heard)
        orch.tick()
        clock.advance(5)
        assert all(orch.registry.get(n).status.value == "online" for n in every_tick + every_third)
        if tick % 3 == 0:
            continue
        silent_ticks += 1
        # n03 and n04 were not heard this tick: their peer score still equals that of the
        # nodes heard this tick, because the orchestrator's own edge goes to them too
        peer = {n: explain(orch, n)["peer"] for n in every_tick + every_third}
        assert peer["n03"] == pytest.approx(peer["n01"], abs=1e-6), peer
        assert peer["n04"] == pytest.approx(peer["n02"], abs=1e-6), peer
    assert silent_ticks == 8
    # the measure can tell: n05, silent past stale_after, gets no edge and its peer score sinks
    assert orch.registry.get(gone).status.value != "online"
    assert explain(orch, gone)["peer"] < explain(orch, "n03")["peer"] - 0.1
