"""The orchestrator and its tick: every step a hook, each step's output the next's input."""

from __future__ import annotations

import gc
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wyneos_core.checks import check_plugins
from wyneos_core.config import Config, ConfigError
from wyneos_core.intake import HeartbeatQueue
from wyneos_core.licensing.results import LicenceResults
from wyneos_core.mesh import Mesh, RoutingTree, build_topology
from wyneos_core.model import (ORIGIN, Action, Delivery, Heartbeat, LicenceResult, Node, NodeStatus, Observation,
                               PluginError, RuleResult, RuleResults, TickReport)
from wyneos_core.plugins import PluginLoadError, PluginManager
from wyneos_core.registry import Registry
from wyneos_core.store import ClusterStateStore, open_state_store
from wyneos_core.transitions import Transitions
from wyneos_core.trust.scores import TrustScores
from wyneos_core.yamlio import LocatedError

#: the name the demo cluster's plugin registers under (``wyneos_core.demo``, registered by the CLI)
DEMO_PLUGIN = "demo-cluster"

__all__ = ["Orchestrator", "TickContext"]

Clock = Callable[[], float]


@dataclass(slots=True)
class TickContext:
    """What every tick hook can see. ``now`` is fixed for the whole tick."""

    tick: int
    now: float
    config: Config
    registry: Registry
    mesh: Mesh
    store: ClusterStateStore | None
    orchestrator: Orchestrator
    report: TickReport
    #: scratch space shared by plugins for this tick only, by plugin name
    scratch: dict[str, Any] = field(default_factory=dict)
    #: witness observations carried by this tick's accepted heartbeats (see ``wyneos_core.consensus``)
    observations: list[Observation] = field(default_factory=list)

    def note(self, text: str) -> None:
        """Add a human-readable line to the tick report."""
        self.report.notes.append(text)

    def routing_tree(self, refresh: bool = False) -> RoutingTree:
        """The tick's routing tree from the orchestrator, avoiding offline nodes.

        Computed once per tick and shared by every step that needs reachability
        (decide, propagate, reports); ``refresh=True`` recomputes it after the mesh
        changed (an isolation cut edges).
        """
        tree = self.scratch.get("routing_tree")
        if tree is None or refresh:
            offline = NodeStatus.OFFLINE
            avoid = dict.fromkeys(self.registry.ids_with_status(offline), "offline")
            tree = self.scratch["routing_tree"] = self.mesh.routing_tree(avoid)
        return tree

    def mesh_tree(self, refresh: bool = False) -> RoutingTree:
        """The structural tree: every vertex with any mesh path to the orchestrator,
        offline or not (what partitions are made of). Cached like ``routing_tree``."""
        tree = self.scratch.get("mesh_tree")
        if tree is None or refresh:
            tree = self.scratch["mesh_tree"] = self.mesh.routing_tree()
        return tree


class Orchestrator:
    """Owns the registry, mesh, plugins and state store, and runs ticks.

    :param config: a validated ``Config``.
    :param clock: returns "now" in epoch seconds; inject a fake one for deterministic
        tests and simulations.
    :param plugins: extra plugin objects to register (after builtins and entry points).
    :param load_entrypoints: load third-party plugins from the ``wyneos`` group.
    :param store: ``True`` (default) opens the SQLite state file at ``state.path``
        (``":memory:"`` keeps state in memory only), or etcd when ``state.backend`` is
        ``etcd``; ``False`` or ``None`` runs without a state store; or pass an open store.
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock = time.time,
        plugins: Iterable[Any] = (),
        load_entrypoints: bool = True,
        store: ClusterStateStore | None | bool = True,
        tolerate_broken_plugins: bool = False,
    ) -> None:
        self.config = config
        self.clock = clock
        #: errors of wyneos_configure / wyneos_startup, reported in the first tick's report
        self.startup_errors: list[PluginError] = []
        self.pm = PluginManager()
        self.pm.budget = float(config["tick"]["plugin_budget"])
        settings = config["plugins"]
        self.pm.load_builtins(disable=settings["disable"])
        #: installed plugins that could not be loaded (name -> why), with ``tolerate_broken_plugins``
        self.broken_plugins: dict[str, str] = {}
        if load_entrypoints:
            self.pm.load_entrypoints(disable=settings["disable"], only=settings["only"],
                                     broken=self.broken_plugins if tolerate_broken_plugins else None)
        for plugin in plugins:
            name = getattr(plugin, "__wyneos_name__", None) or getattr(plugin, "__name__", None)
            name = name if isinstance(name, str) else None
            if name is not None and name in settings["disable"]:
                self.pm.set_blocked(name)
                continue
            self.pm.register(plugin, name)
        name_warnings = self.pm.check_names(settings["disable"], settings["only"] if load_entrypoints else None)
        if config["demo"].get("enabled") and self.pm.get_plugin(DEMO_PLUGIN) is None \
                and not self.pm.is_blocked(DEMO_PLUGIN):
            name_warnings.append(f"demo.enabled is true but no {DEMO_PLUGIN!r} plugin is registered: the demo nodes "
                                 "send no heartbeats (pass plugins=wyneos_core.demo.demo_plugins(config), "
                                 "as `wyneos run` does)")
        if settings["trace"]:
            self.pm.trace_file = sys.stderr
        #: notes for the first tick's report (nodes dropped from the config, ...)
        self.startup_notes: list[str] = []
        # a plugin that cannot configure itself is refused: the orchestrator does not start
        # (a user file it names, such as a ruleset, is reported as that file's error)
        failed: list[PluginError] = []
        self.pm.call_each("wyneos_configure", failed, reraise=(LocatedError,), config=config, pluginmanager=self.pm)
        # the per-call budget is the tick's: a configuration that was merely slow (a large
        # ruleset compiled on a loaded machine) is said, never a reason not to start
        slow = [e for e in failed if e.kind == "budget"]
        failed = [e for e in failed if e.kind != "budget"]
        if failed:
            raise PluginLoadError("; ".join(f"plugin {e.plugin!r} failed in {e.hook}: {e.error}" for e in failed))
        # settings the plugins read are checked before the state file is opened or a tick runs
        problems, warnings = check_plugins(config, self.pm)
        if problems:
            raise ConfigError.of(problems)
        self.startup_notes.extend([*name_warnings, *warnings, *(f"plugin {e.plugin} was slow in {e.hook}: {e.error}"
                                                              for e in slow)])
        for warning in [*name_warnings, *warnings]:  # said before anything runs, not only in tick 1
            print(f"wyneos: warning: {warning}", file=sys.stderr)
        if store is True:
            store = open_state_store(config)
        self.store: ClusterStateStore | None = store or None
        if self.store is not None and getattr(self.store, "created_dir", None):
            self.startup_notes.append(f"created the directory {self.store.created_dir} for the state file "
                                      "(state.path)")
        self.registry = Registry(config["heartbeat"])
        self.registry.declare_metrics(config["telemetry"]["metrics"])
        self.intake = HeartbeatQueue(maxlen=config["heartbeat"]["max_queue"])
        now = clock()
        for spec in config["nodes"]:
            self.registry.register(
                spec["id"], now=now, metadata=spec["metadata"],
                licence_ref=spec["licence"], fingerprint=spec["fingerprint"],
            )
        self.tick_number = 0
        configured = [spec["id"] for spec in config["nodes"]]
        if self.store is not None:
            self.tick_number = self.store.last_tick()
            self.store.restore_nodes(self.registry)
            for node_id in sorted(set(self.store.meta("config_nodes", [])) - set(configured)):
                if node_id in self.registry:
                    self.registry.deregister(node_id)
                    self.store.forget_node(node_id)
                    self.startup_notes.append(f"node {node_id} is no longer in the config: deregistered")
            self.store.set_meta("config_nodes", sorted(configured))
        self.mesh = build_topology(configured, config["mesh"])
        for node in self.registry:  # known from the state file only (enrolled or self-registered)
            if node.id not in self.mesh:
                self.mesh.add_node(node.id)
                self.mesh.add_edges([(ORIGIN, node.id)])
        self.missed_ticks = 0
        self.last_report: TickReport | None = None
        self._started = False

    # -- membership ----------------------------------------------------------------------

    def add_node(
        self,
        node_id: str,
        *,
        metadata: dict[str, Any] | None = None,
        licence_ref: str | None = None,
        fingerprint: str | None = None,
        links: Iterable[str] = (ORIGIN,),
    ) -> Node:
        """Register a node and give it a place in the mesh (linked to ``links``,
        by default straight to the orchestrator)."""
        node = self.registry.register(node_id, now=self.clock(), metadata=metadata,
                                      licence_ref=licence_ref, fingerprint=fingerprint)
        self.mesh.add_node(node_id)
        self.mesh.add_edges((node_id, other) for other in links if other in self.mesh)
        return node

    def remove_node(self, node_id: str) -> Node:
        """Deregister a node: out of the registry, the mesh and the state file.

        :raises RegistryError: if it is not registered.
        """
        node = self.registry.deregister(node_id)
        if node_id in self.mesh:
            self.mesh.remove_node(node_id)
        if self.store is not None:
            self.store.forget_node(node_id)
        return node

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.pm.call_each("wyneos_startup", self.startup_errors, orchestrator=self)

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        errors: list[PluginError] = []
        self.pm.call_each("wyneos_shutdown", errors, orchestrator=self)
        for e in errors:  # no report follows a shutdown: say it here
            print(f"wyneos: plugin {e.plugin} failed in {e.hook}: {e.error}", file=sys.stderr)
        if self.store is not None:
            self.store.close()

    def __enter__(self) -> Orchestrator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the tick ------------------------------------------------------------------------

    def tick(self) -> TickReport:
        """Run one tick: heartbeat, licence, governance, trust, healing, enforcement,
        decide, propagate, report. Never raises because of a plugin.

        Python's cyclic garbage collector is paused for the tick (reference counting
        still frees everything at once): a tick of a large cluster allocates hundreds of
        thousands of short-lived results, and the collections they would trigger scan
        every long-lived object of the cluster each time (measured: governance at 100k
        nodes 440 ms with it, 110 ms without). It runs again between ticks.
        """
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._tick()
        finally:
            if collecting:
                gc.enable()

    def _tick(self) -> TickReport:
        self.start()
        now = self.clock()
        self.tick_number += 1
        report = TickReport(tick=self.tick_number, started_at=now, missed_ticks=self.missed_ticks,
                            transitions=Transitions())
        if self.startup_errors:
            report.errors.extend(self.startup_errors)
            self.startup_errors = []
        if self.startup_notes:
            report.notes.extend(self.startup_notes)
            self.startup_notes = []
        ctx = TickContext(
            tick=self.tick_number, now=now, config=self.config, registry=self.registry,
            mesh=self.mesh, store=self.store, orchestrator=self, report=report,
        )
        call = self.pm.call_each
        errors = report.errors
        origins = self.pm.origins

        def take(batch: Any, plugin: str, hook: str, kind: type) -> Sequence[Any]:
            return _items(batch, plugin, hook, errors, kind, trusted=origins.get(plugin) == "builtin")

        timings = report.timings_ms
        started = time.perf_counter()

        # 1 heartbeat
        t0 = time.perf_counter()
        for plugin, batch in call("wyneos_heartbeat", errors, ctx=ctx):
            accepted, rejected = self.registry.accept_all(take(batch, plugin, "wyneos_heartbeat", Heartbeat), now,
                                                          trusted=origins.get(plugin) == "builtin")
            report.heartbeats_accepted += accepted
            report.heartbeats_rejected.extend(e.to_dict() for e in rejected)
        for node_id in self.registry.joined:  # registered by their own heartbeat: into the mesh
            if node_id in self.registry and node_id not in self.mesh:
                self.mesh.add_node(node_id)
                self.mesh.add_edges([(ORIGIN, node_id)])
                report.notes.append(f"node {node_id} registered itself by heartbeat; linked to the orchestrator")
        self.registry.joined.clear()
        ctx.observations = self.registry.take_observations()
        report.transitions.add_status(self.registry.refresh_changes(now))  # dicts made when read
        nodes = self.registry.nodes()
        report.nodes = nodes
        timings["heartbeat"] = _ms(t0)

        # 2 licence
        t0 = time.perf_counter()
        licences: Mapping[str, LicenceResult] = {}
        validated = call("wyneos_licence_validate", errors, ctx=ctx, nodes=nodes)
        if len(validated) == 1 and isinstance(validated[0][1], LicenceResults) \
                and origins.get(validated[0][0]) == "builtin":
            licences = validated[0][1].mapping()  # columns; result objects only when read
        else:
            merged: dict[str, LicenceResult] = {}
            for plugin, batch in validated:
                if isinstance(batch, LicenceResults):
                    batch = batch.list()
                for result in take(batch, plugin, "wyneos_licence_validate", LicenceResult):
                    prior = merged.get(result.node_id)
                    if prior is None or (prior.valid and not result.valid):
                        merged[result.node_id] = result
            licences = merged
        report.licences = licences  # type: ignore[assignment]
        timings["licence"] = _ms(t0)

        # 2b predict: telemetry into the detectors; rules read ctx.scratch["predict"]
        t0 = time.perf_counter()
        for plugin, found in call("wyneos_predict", errors, ctx=ctx, nodes=nodes):
            if found is not None and "predict" not in ctx.scratch:
                ctx.scratch["predict"] = found
        timings["predict"] = _ms(t0)

        # 3 governance
        t0 = time.perf_counter()
        results = RuleResults()
        for plugin, batch in call("wyneos_governance", errors, ctx=ctx, nodes=nodes, licences=licences):
            results.extend(take(batch, plugin, "wyneos_governance", RuleResult))
            if isinstance(batch, RuleResults):
                results.count_passed(_checked_counts(batch.passed_counts, plugin, errors))
        _summarise(report, results)
        timings["governance"] = _ms(t0)

        # 3b trust
        t0 = time.perf_counter()
        scored = call("wyneos_trust", errors, ctx=ctx, nodes=nodes, licences=licences, results=results)
        if scored:
            _apply_trust(scored, nodes, report, errors, origins)
        timings["trust"] = _ms(t0)

        # 4 healing, 5 enforcement
        proposed: list[Action] = []
        for step, hook in (("healing", "wyneos_healing"), ("enforcement", "wyneos_enforcement")):
            t0 = time.perf_counter()
            for plugin, batch in call(hook, errors, ctx=ctx, nodes=nodes, licences=licences, results=results):
                proposed.extend(take(batch, plugin, hook, Action))
            timings[step] = _ms(t0)
        report.proposed = proposed

        # 6 decide
        t0 = time.perf_counter()
        decided = call("wyneos_decide", errors, firstresult=True, ctx=ctx, proposed=proposed)
        actions = list(take(decided[0][1], decided[0][0], "wyneos_decide", Action)) if decided else []
        report.actions = actions
        timings["decide"] = _ms(t0)

        # 7 propagate
        t0 = time.perf_counter()
        delivered = call("wyneos_propagate", errors, firstresult=True, ctx=ctx, actions=actions, mesh=self.mesh)
        report.deliveries = (
            list(take(delivered[0][1], delivered[0][0], "wyneos_propagate", Delivery)) if delivered else []
        )
        timings["propagate"] = _ms(t0)

        report.nodes = self.registry.table.freeze()  # type: ignore[assignment]  # the columns copied
        report.duration_ms = _ms(started)
        # 8 report
        t0 = time.perf_counter()
        call("wyneos_tick_report", errors, ctx=ctx, report=report)
        timings["report"] = _ms(t0)
        self.last_report = report
        return report


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _items(batch: Any, plugin: str, hook: str, errors: list[PluginError], kind: type,
           trusted: bool = False) -> Sequence[Any]:
    """Accept a plugin's list result, dropping (and recording) items that are not ``kind``
    or whose fields are unusable (``problem()``); builtin plugins' items are trusted."""
    if not isinstance(batch, (list, tuple)):
        errors.append(PluginError(plugin, hook, f"returned {type(batch).__name__}, expected a list", kind="invalid_result"))
        return ()
    if trusted:
        return batch
    check = getattr(kind, "problem", None)
    good = []
    bad: list[str] = []
    for item in batch:
        if not isinstance(item, kind):
            bad.append(f"not a {kind.__name__}: {item!r:.80}")
            continue
        problem = check(item) if check is not None else None
        if problem is not None:
            bad.append(f"{kind.__name__}: {problem}")
            continue
        good.append(item)
    if bad:
        errors.append(PluginError(plugin, hook, f"returned {len(bad)} unusable item(s), dropped; first: {bad[0]}",
                                  kind="invalid_result"))
    return good


_TIERS = ("untrusted", "probation", "trusted", "attested")
_TIER_RANK = {name: rank for rank, name in enumerate(_TIERS)}


def _apply_trust(scored: list[tuple[str, Any]], nodes: list[Node], report: TickReport,
                 errors: list[PluginError], origins: dict[str, str]) -> None:
    """Merge ``wyneos_trust`` results (lowest score and lowest tier win) onto the nodes."""
    batches = [(plugin, batch) for plugin, batch in scored if batch is not None]
    if len(batches) == 1 and isinstance(batches[0][1], TrustScores) and batches[0][1].apply(nodes):
        counts = dict.fromkeys(_TIERS, 0)
        counts.update(batches[0][1].tier_counts())
        report.trust["tiers"] = counts
        report.trust["source"] = batches[0][0]
        return
    merged: dict[str, tuple[float, str]] | None = None
    sources = []
    for plugin, batch in batches:
        if isinstance(batch, Mapping) and not isinstance(batch, dict):
            batch = dict(batch.items())
        if not isinstance(batch, dict):
            errors.append(PluginError(plugin, "wyneos_trust", f"returned {type(batch).__name__}, expected a mapping",
                                      kind="invalid_result"))
            continue
        if origins.get(plugin) != "builtin":
            batch, bad = _checked_scores(batch)
            if bad:
                errors.append(PluginError(plugin, "wyneos_trust", f"returned {bad[0]} unusable score(s), dropped; "
                                          f"first: {bad[1]}", kind="invalid_result"))
        sources.append(plugin)
        if merged is None:
            merged = dict(batch)
            continue
        rank = _TIER_RANK
        for node_id, (score, tier) in batch.items():
            prior = merged.get(node_id)
            if prior is None:
                merged[node_id] = (score, tier)
            else:
                merged[node_id] = (min(prior[0], score), tier if rank[tier] < rank[prior[1]] else prior[1])
    if merged is None:
        return
    counts = dict.fromkeys(_TIERS, 0)
    get = merged.get
    for node in nodes:
        found = get(node.id)
        if found is not None:
            node.trust, node.trust_tier = found
        if node.trust_tier is not None:
            counts[node.trust_tier] += 1
    report.trust["tiers"] = counts
    report.trust["source"] = ", ".join(sources)


def _checked_scores(batch: dict[Any, Any]) -> tuple[dict[str, tuple[float, str]], tuple[int, str]]:
    good: dict[str, tuple[float, str]] = {}
    bad: list[str] = []
    for node_id, value in batch.items():
        try:
            score, tier = value
        except (TypeError, ValueError):
            bad.append(f"{node_id!r:.40}: expected (score, tier), got {value!r:.40}")
            continue
        if type(node_id) is not str or isinstance(score, bool) or not isinstance(score, (int, float)) \
                or not 0.0 <= score <= 1.0 or tier not in _TIER_RANK:
            bad.append(f"{node_id!r:.40}: score must be 0..1 and tier one of {', '.join(_TIERS)}, got {value!r:.60}")
            continue
        good[node_id] = (float(score), tier)
    return good, (len(bad), bad[0] if bad else "")


def _checked_counts(counts: Any, plugin: str, errors: list[PluginError]) -> dict[str, int]:
    """A plugin's ``RuleResults.passed_counts``, if it is a mapping of rule ids to counts."""
    if isinstance(counts, dict) and all(type(k) is str and type(v) is int and v >= 0 for k, v in counts.items()):
        return counts
    errors.append(PluginError(plugin, "wyneos_governance", "passed_counts must map rule ids to counts; ignored",
                              kind="invalid_result"))
    return {}


def _summarise(report: TickReport, results: RuleResults) -> None:
    summary = report.rule_summary
    kept = report.results
    for rule_id, count in results.passed_counts.items():
        if count:
            summary[rule_id] = {"passed": count, "failed": 0}
    for r in results:
        counts = summary.get(r.rule_id)
        if counts is None:
            counts = summary[r.rule_id] = {"passed": 0, "failed": 0}
        if r.passed:
            counts["passed"] += 1
        else:
            counts["failed"] += 1
            kept.append(r)
