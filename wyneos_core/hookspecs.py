"""Every extension point of WyneOS core, in tick order.

This module is the single source of truth for hooks. A plugin implements a hook by
defining a function (or method) with the hook's name, marked with
``wyneos_core.hookimpl``; it may accept any subset of the arguments listed here, by
name. Implementations are registered and checked when the plugin loads: a marked
function whose name matches no hook below, or that asks for an argument the hook does
not pass, is refused with a message naming the plugin, the hook and the argument.

During a tick each implementation is called on its own: one that raises is recorded in
the tick report (plugin, hook, error) and the others still run. Unless a hook says
"first result", the results of all implementations are combined in call order
(``tryfirst`` implementations first, then later-registered before earlier-registered,
as in pluggy).

All hooks were added in 0.1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

from wyneos_core import PROJECT_NAME

if TYPE_CHECKING:
    from wyneos_core.builtin.carry import HopBatch
    from wyneos_core.config import Config
    from wyneos_core.mesh import Mesh
    from wyneos_core.model import Action, Delivery, Heartbeat, LicenceResult, Node, RuleResult, TickReport
    from wyneos_core.plugins import PluginManager
    from wyneos_core.predict.interface import Predictions
    from wyneos_core.tick import Orchestrator, TickContext

hookspec = pluggy.HookspecMarker(PROJECT_NAME)

# ---------------------------------------------------------------------------
# Lifecycle: called once per process, outside the tick.
# ---------------------------------------------------------------------------


@hookspec
def wyneos_configure(config: Config, pluginmanager: PluginManager) -> None:
    """Called once after every plugin is registered and the config is loaded.

    :param config: the validated configuration (``wyneos_core.config.Config``).
    :param pluginmanager: the plugin manager, for plugins that register others.
    """


@hookspec
def wyneos_check_config(config: Config, pluginmanager: PluginManager) -> Any:
    """Check the settings this plugin reads, before anything runs; return the mistakes.

    Called by ``wyneos run``, ``tick``, ``serve`` and ``simulate`` before the state file
    is opened, and by ``wyneos validate`` (which runs nothing). Return None or a list of
    ``(field, message)`` pairs, ``field`` a dotted name or a tuple such as
    ``("plugins", "settings", "my-plugin", "timeout")``; each becomes an error naming
    the config file, line and column of that field, and the command exits with status
    2 before the first tick. Check only what the config says (files it names exist, values
    make sense); never contact a service or write anything here.

    A plugin can also declare ``WYNEOS_SETTINGS_SCHEMA``, a JSON Schema of its
    ``plugins.settings.<name>`` section: the core checks it the same way, with "did you
    mean" suggestions for unknown fields.
    """


@hookspec
def wyneos_startup(orchestrator: Orchestrator) -> None:
    """Called once before the first tick, with registry, mesh and state store ready.

    A plugin that keeps state across ticks sets it up here.

    :param orchestrator: the running ``wyneos_core.tick.Orchestrator``.
    """


@hookspec
def wyneos_shutdown(orchestrator: Orchestrator) -> None:
    """Called once when the orchestrator stops (end of ``--ticks``, SIGINT, SIGTERM).

    :param orchestrator: the running ``wyneos_core.tick.Orchestrator``.
    """


@hookspec
def wyneos_licence_sources(config: Config) -> Any:
    """Contribute licence sources (objects with ``name`` and ``lookup``).

    Called once at startup. Return one source, a list of sources, or None. The
    builtin licence plugin asks the sources named in ``licence.sources`` of the config,
    in that order; see ``docs/licences.md`` for the source interface.

    :param config: the validated configuration.
    """


# ---------------------------------------------------------------------------
# Step 1: heartbeat.
# ---------------------------------------------------------------------------


@hookspec
def wyneos_heartbeat(ctx: TickContext) -> Sequence[Heartbeat] | None:
    """Return the heartbeats received since the last tick.

    The core checks each heartbeat (unknown node, load range, clock skew, metadata
    size) before it touches the registry; rejected heartbeats are listed in the tick
    report with the field at fault. After intake the core derives every node's status
    (online / stale / offline) from heartbeat age and the configured grace periods.

    :param ctx: the tick context (tick number, ``now``, config, registry, mesh, store).
    :return: heartbeats, in the order they arrived, or None.
    """


# ---------------------------------------------------------------------------
# Step 2: licence.
# ---------------------------------------------------------------------------


@hookspec
def wyneos_licence_validate(
    ctx: TickContext, nodes: Sequence[Node]
) -> Sequence[LicenceResult] | None:
    """Validate the licence of each node.

    Results of all implementations are merged per node; when two disagree, the
    invalid one wins (a plugin can refuse a licence, never rescue one).

    :param ctx: the tick context.
    :param nodes: every registered node, after heartbeat intake.
    :return: one ``LicenceResult`` per node the plugin has an opinion on, or None.
    """


# ---------------------------------------------------------------------------
# Step 2b: predict (after licence, before governance). Added in 0.2.
# ---------------------------------------------------------------------------


@hookspec
def wyneos_predict(ctx: TickContext, nodes: Sequence[Node]) -> Predictions | None:
    """Feed this tick's telemetry to the detectors and answer for every node and metric.

    The builtin ``predict`` plugin takes the metrics the accepted heartbeats carried
    (``ctx.registry.take_metrics()``: names and bounds of ``telemetry.metrics`` were
    checked on intake), steps its online detectors over the whole fleet at once (the
    state of each node and metric in 128 bytes of columns, kept in the state store) and
    returns an object implementing ``wyneos_core.predict.interface.Predictions``:
    ``latest``, ``forecast``, ``time_to``, ``anomaly``, ``trend`` and ``evidence`` (the
    metric, what was observed, the expected band, the horizon). See docs/prediction.md.

    The core leaves the first result (in call order) in ``ctx.scratch["predict"]``,
    where the rule helpers ``forecast()``, ``time_to()``, ``anomaly()``, ``trend()``
    and ``node.metrics.NAME`` read it. To replace the builtin detectors, disable it
    (``plugins.disable: [predict]``) and return your own ``Predictions``.

    :param ctx: the tick context (``ctx.now`` is the time of the answers).
    :param nodes: every registered node.
    :return: a ``Predictions`` object, or None.
    """


# ---------------------------------------------------------------------------
# Step 3: governance.
# ---------------------------------------------------------------------------


@hookspec
def wyneos_governance(
    ctx: TickContext, nodes: Sequence[Node], licences: Mapping[str, LicenceResult]
) -> Sequence[RuleResult] | None:
    """Evaluate governance rules against nodes: one result per (rule, node).

    Over a large fleet, return a ``model.RuleResults`` instead: it lists the results
    that failed (or whose rule state changed) and counts the passed ones per rule
    (``passed_counts``); the builtin governance plugin does. The ``results`` later steps
    receive is one such ``RuleResults`` for the whole tick.

    :param ctx: the tick context.
    :param nodes: every registered node.
    :param licences: the licence result of each node, by node id.
    :return: rule results (passed or failed with the rule's message), or None.
    """


# ---------------------------------------------------------------------------
# Step 3b: trust (after governance, before healing).
# ---------------------------------------------------------------------------


@hookspec
def wyneos_trust(
    ctx: TickContext,
    nodes: Sequence[Node],
    licences: Mapping[str, LicenceResult],
    results: Sequence[RuleResult],
) -> Mapping[str, tuple[float, str]] | None:
    """Score each node's trust and place it in a tier.

    The builtin ``trust`` plugin computes a behaviour score (beta reputation with
    forgetting), a peer score (EigenTrust over the witness observations in
    ``ctx.scratch["observations"]``) and a combined score gated by the licence, and
    moves nodes between the tiers ``untrusted`` < ``probation`` < ``trusted`` <
    ``attested`` with hysteresis; see ``docs/trust.md``.

    Results of all implementations are merged per node: the lowest score and the lowest
    tier win (a plugin can lower a node's trust, never raise it). To replace the
    builtin, disable it (``plugins.disable: [trust]``) and return scores for every node.
    The core writes the merged values to ``node.trust`` and ``node.trust_tier``, where
    healing, enforcement, the rules of later steps, admission and feature gating read
    them (governance rules see last tick's values); the report's ``trust`` section
    counts nodes per tier.

    :param ctx: the tick context; ``ctx.report.trust`` takes the plugin's summary.
    :param nodes: every registered node.
    :param licences: licence results by node id.
    :param results: every governance result of this tick.
    :return: node id -> ``(score in 0..1, tier name)`` for the nodes the plugin scores,
        or None.
    """


# ---------------------------------------------------------------------------
# Step 4: healing.
# ---------------------------------------------------------------------------


@hookspec
def wyneos_healing(
    ctx: TickContext,
    nodes: Sequence[Node],
    licences: Mapping[str, LicenceResult],
    results: Sequence[RuleResult],
) -> Sequence[Action] | None:
    """Propose remediation actions for offline, overloaded or degraded nodes.

    :param ctx: the tick context.
    :param nodes: every registered node.
    :param licences: licence results by node id.
    :param results: every governance result of this tick.
    :return: proposed actions (isolate, reduce_load, redistribute, recover...), or None.
    """


# ---------------------------------------------------------------------------
# Step 5: enforcement.
# ---------------------------------------------------------------------------


@hookspec
def wyneos_enforcement(
    ctx: TickContext,
    nodes: Sequence[Node],
    licences: Mapping[str, LicenceResult],
    results: Sequence[RuleResult],
) -> Sequence[Action] | None:
    """Turn licence failures and governance violations into enforcement actions.

    :param ctx: the tick context.
    :param nodes: every registered node.
    :param licences: licence results by node id.
    :param results: every governance result of this tick.
    :return: proposed actions (isolate, quarantine, gate_feature, revoke...), or None.
    """


# ---------------------------------------------------------------------------
# Step 6: decide.
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def wyneos_decide(ctx: TickContext, proposed: Sequence[Action]) -> Sequence[Action] | None:
    """Merge, de-duplicate and limit the proposed actions into the tick's decisions.

    First result: the first implementation returning a list wins; the builtin
    ``decide`` plugin runs last (``trylast``) so a plugin can replace it.

    :param ctx: the tick context.
    :param proposed: every action proposed by healing and enforcement, in order.
    :return: the decided actions, or None to leave the decision to the next plugin.
    """


@hookspec
def wyneos_decision_log(records: list[dict[str, Any]]) -> None:
    """Receive the decision records of one tick (a sink: a log shipper, an audit store).

    Called once per tick by the builtin ``decide`` plugin, after its decisions, with the
    same records it appends to ``enforcement.decision_log.path``: one ``inputs`` record
    (the nodes and licence results seen, and their digest) and one ``decision`` record per
    lifecycle event (see docs/enforcement.md). Every implementation is called; one that
    raises is recorded in the tick report and the tick goes on.

    :param records: JSON-ready dicts with ``schema: wyneos.decision/1``.
    """


# ---------------------------------------------------------------------------
# Step 7: propagate.
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def wyneos_propagate(
    ctx: TickContext, actions: Sequence[Action], mesh: Mesh
) -> Sequence[Delivery] | None:
    """Route each decided action over the mesh to the nodes that must know it.

    First result: the builtin ``propagate`` plugin (``trylast``) computes one routing
    tree per tick and walks it level by level, calling ``wyneos_deliver_batch`` once per
    level (and retry) with the hops of every action.

    :param ctx: the tick context.
    :param actions: the decided actions.
    :param mesh: the mesh graph.
    :return: one ``Delivery`` per (action, target node), or None.
    """


@hookspec(firstresult=True)
def wyneos_deliver(ctx: TickContext, action: Action, sender: str, receiver: str) -> bool | None:
    """Carry one action over one hop of the mesh, from ``sender`` to ``receiver``.

    First result: a transport plugin (HTTP to node agents, a message bus) returns True
    when the receiver acknowledged, False when it refused; None passes the hop to the
    next implementation. The builtin logging transport (``trylast``) acknowledges
    every hop.

    :param ctx: the tick context.
    :param action: the action being carried.
    :param sender: mesh node (or ``orchestrator``) sending.
    :param receiver: mesh node receiving.
    """


@hookspec(firstresult=True)
def wyneos_deliver_batch(ctx: TickContext, hops: HopBatch) -> Sequence[bool] | bool | None:
    """Carry the hops of one level of the routing tree, for every action at once.

    Added in 0.2. First result: a transport that sends in bulk returns one bool per hop
    (a list or a numpy bool array; True: the receiver acknowledged), or True / False for
    the whole batch; None passes the batch to the next implementation. A transport that
    raises has delivered none of the batch. Unacknowledged hops are tried again in a
    batch of their own (``hops.attempt`` counts); a hop that never is acknowledged fails
    the action's hops below it. The builtin implementation (``trylast``) acknowledges
    every hop, unless another plugin implements ``wyneos_deliver``: then each hop goes
    through that per-hop hook, as it did before batches.

    :param ctx: the tick context.
    :param hops: a ``wyneos_core.builtin.carry.HopBatch``: ``actions``, and per hop the
        action's index (``action``), ``senders`` and ``receivers`` (node ids); iterating
        it yields ``(action, sender, receiver)``.
    """


# ---------------------------------------------------------------------------
# Step 8: report.
# ---------------------------------------------------------------------------


@hookspec
def wyneos_tick_report(ctx: TickContext, report: TickReport) -> None:
    """Receive the finished tick's report (to logs, files, the state store, metrics).

    Every implementation is called; ``report.to_dict()`` is its JSON form.

    :param ctx: the tick context.
    :param report: the ``TickReport`` of this tick.
    """
