"""Builtin trust: every node's trust score and tier, admission control and feature gating.

The ``wyneos_trust`` step (after governance, before healing) gathers the tick's evidence
per node (heartbeat status, failing governance results, licence result, outcomes of
actions sent to it, refused messages, its witness reports checked against the
orchestrator's own view), updates each signal's beta reputation, runs EigenTrust over
the witness observations, combines both under the licence gate and moves nodes between
tiers with hysteresis (``wyneos_core.trust``). New nodes start in probation and go
through the admission rules. In ``wyneos_enforcement`` it proposes ``gate_feature`` for
every node below the tier a feature needs (``trust.features``). In
``wyneos_tick_report`` it writes changed trust rows to the state store, from which they
are restored at the next start.

Replace it by disabling it (``plugins.disable: [trust]``) and implementing
``wyneos_trust``; add to it by implementing ``wyneos_trust`` beside it (a plugin can
lower a node's trust, never raise it). See ``docs/trust.md``.
"""

from __future__ import annotations

import operator
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any

import numpy as np

from wyneos_core import hookimpl
from wyneos_core.config import Config
from wyneos_core.model import Action, ActionType, LicenceResult, Node, NodeStatus, RuleResult, Severity
from wyneos_core.nodetable import LICENCE_IN_GRACE, LICENCE_INVALID, LICENCE_VALID, STATUSES
from wyneos_core.rules.interp import EvalEnv, cluster_summary
from wyneos_core.rules.vector import Columns
from wyneos_core.trust import persist
from wyneos_core.trust.admission import AdmissionRules, load_admission
from wyneos_core.trust.engine import LICENCE_CODES, STATUS_CODES, Evidence, TrustEngine
from wyneos_core.trust.observations import observations_of
from wyneos_core.trust.scores import TrustScores
from wyneos_core.trust.settings import TrustSettings, TrustSettingsError
from wyneos_core.trust.tiers import TIER_NAMES, tier_rank
from wyneos_core.yamlio import LocatedError

if TYPE_CHECKING:
    from wyneos_core.tick import Orchestrator, TickContext

__all__ = ["TrustState", "state_of", "record_refusals", "record_acks"]

#: status member's id() -> code (an int-keyed lookup: Enum's own __hash__ is Python code)
#: tier changes and admission decisions listed one by one in a tick report at most (all are counted)
REPORT_LIMIT = 1000
#: moved trust scores written per tick, about: a fleet of more nodes writes a moved score for
#: one node in ``ceil(nodes / PERSIST_ROWS)`` each tick (tier and admission changes always at
#: once), so while a whole fleet's trust moves a tick writes a share of it, and a restart
#: finds every row at most that many ticks old (``TrustEngine.rows_to_persist``)
PERSIST_ROWS = 12_500
_STATUS_BY_IDENTITY = {id(s): STATUS_CODES[s.value] for s in NodeStatus}
#: the node table's status codes (``nodetable.STATUSES``) to the trust engine's
_TABLE_TO_TRUST = np.array([STATUS_CODES[s.value] for s in STATUSES], dtype=np.int8)
_ID = operator.attrgetter("id")
_STATUS_OF = operator.attrgetter("status")
_FINGERPRINT = operator.attrgetter("fingerprint")
_VALID = operator.attrgetter("valid")
_GRACE = operator.attrgetter("in_grace")
#: the licence results' state codes (``nodetable.LICENCE_*``) to the trust engine's ``LICENCE_CODES``
_LICENCE_TO_TRUST = np.zeros(3, dtype=np.int8)
_LICENCE_TO_TRUST[[LICENCE_INVALID, LICENCE_VALID, LICENCE_IN_GRACE]] = [
    LICENCE_CODES["invalid"], LICENCE_CODES["valid"], LICENCE_CODES["grace"]]
#: stands in for "no licence result" (the licence step is off, or has no opinion)
_NO_RESULT = LicenceResult("", True, "none")


class TrustState:
    """The trust plugin's state for one orchestrator: engine, admission rules, inbox."""

    def __init__(self, settings: TrustSettings, admission: AdmissionRules) -> None:
        self.settings = settings
        self.admission = admission
        self.engine = TrustEngine(settings)
        self.last_now: float | None = None
        self.first_scored = True
        self._lock = threading.Lock()
        self._refusals: Counter[str] = Counter()
        self._acks: list[tuple[str, bool]] = []
        self.slots = np.zeros(0, dtype=np.int64)
        self.declared: frozenset[str] | None = None

    def add_refusals(self, node_ids: Iterable[str]) -> None:
        with self._lock:
            self._refusals.update(node_ids)

    def add_acks(self, acks: Iterable[tuple[str, bool]]) -> None:
        with self._lock:
            self._acks.extend(acks)

    def drain(self) -> tuple[Counter[str], list[tuple[str, bool]]]:
        with self._lock:
            refusals, self._refusals = self._refusals, Counter()
            acks, self._acks = self._acks, []
        return refusals, acks


def _settings(config: Config) -> TrustSettings:
    try:
        return TrustSettings.from_config(config["trust"])
    except TrustSettingsError as exc:
        raise LocatedError(exc.reason, file=config.source, field=f"trust.{exc.field}") from None


def _admission(config: Config, settings: TrustSettings) -> AdmissionRules:
    path = settings.admission_file
    return load_admission(None if path is None else config.resolve(path), settings.probation_ticks)


def state_of(orchestrator: Orchestrator) -> TrustState:
    """The trust state of ``orchestrator``, restored from its store the first time."""
    state = getattr(orchestrator, "_trust_state", None)
    if state is None:
        settings = _settings(orchestrator.config)
        state = TrustState(settings, _admission(orchestrator.config, settings))
        if orchestrator.store is not None:
            restore(state.engine, orchestrator.store)
        orchestrator._trust_state = state  # type: ignore[attr-defined]
    return state


def record_refusals(orchestrator: Orchestrator, node_ids: Iterable[str]) -> None:
    """Count refused messages (replays, bad signatures, clock problems) against nodes;
    the next trust step reads them. Safe to call from request threads."""
    state_of(orchestrator).add_refusals(node_ids)


def record_acks(orchestrator: Orchestrator, acks: Iterable[tuple[str, bool]]) -> None:
    """Record action acknowledgements ``(node id, applied?)`` for the next trust step."""
    state_of(orchestrator).add_acks(acks)


@hookimpl
def wyneos_configure(config: Config) -> None:
    settings = _settings(config)  # a bad setting or admission file stops the start, named
    _admission(config, settings)


@hookimpl
def wyneos_startup(orchestrator: Orchestrator) -> None:
    state_of(orchestrator)


def gather(ctx: TickContext, state: TrustState, nodes: Sequence[Node], licences: Mapping[str, LicenceResult],
           results: Sequence[RuleResult]) -> Evidence:
    """This tick's evidence for the trust engine (one pass of C-level maps per field:
    at 100,000 nodes every Python-level step per node costs milliseconds)."""
    table = getattr(nodes, "table", None)
    if table is not None:  # the columns
        slots = nodes.slots  # type: ignore[attr-defined]
        ids = nodes.ids()  # type: ignore[attr-defined]
        status = _TABLE_TO_TRUST[table.status[slots]]
        every = np.empty(len(table.fingerprint), dtype=object)  # the column as an array, taken at the slots
        every[:] = table.fingerprint
        fingerprints = every[slots]
        del every
    else:
        ids = list(map(_ID, nodes))
        codes = _STATUS_BY_IDENTITY
        status = np.fromiter(map(codes.__getitem__, map(id, map(_STATUS_OF, nodes))), dtype=np.int8,
                             count=len(nodes))
        fingerprints = list(map(_FINGERPRINT, nodes))
    lic_codes = _licence_codes(nodes, ids, licences)
    refusals, acks = state.drain()
    for item in ctx.report.heartbeats_rejected:
        node_id = item.get("node_id")
        if isinstance(node_id, str):
            refusals[node_id] += 1
    since = state.last_now
    if since is not None and table is not None:
        with np.errstate(invalid="ignore"):
            rolled = np.flatnonzero(table.last_rollback[slots] > since)
        for position in rolled.tolist():
            refusals[ids[position]] += 1
    elif since is not None:
        for n in nodes:
            if n.last_rollback is not None and n.last_rollback > since:
                refusals[n.id] += 1
    state.last_now = ctx.now
    last = ctx.orchestrator.last_report
    if last is not None:
        acks.extend((d.target, True) for d in last.deliveries if d.delivered)
        acks.extend((d.target, False) for d in last.deliveries if not d.delivered and d.reason == "refused")
    failed = [(r.node_id, r.severity.rank) for r in results if not r.passed]
    declared = state.declared
    if declared is None:
        declared = state.declared = frozenset(spec["id"] for spec in ctx.config["nodes"])
    return Evidence(
        tick=ctx.tick, node_ids=ids, status=status,
        licence=lic_codes, fingerprints=fingerprints,
        failed=failed, governed=bool(results), refusals=refusals, acks=acks,
        observations=observations_of(ctx), declared=declared,
        table=table, table_slots=None if table is None else slots,
    )


def _licence_codes(nodes: Sequence[Node], ids: list[str], licences: Mapping[str, LicenceResult]) -> np.ndarray:
    """``LICENCE_CODES`` of each node: from the licence results' state column when they
    are the builtin's columns over these very nodes, else one C-level lookup per node."""
    columns = getattr(licences, "results", None)
    slots = getattr(nodes, "slots", None)
    if columns is not None and slots is not None and len(columns.slots) == len(slots) \
            and np.array_equal(columns.slots, slots):
        return _LICENCE_TO_TRUST[columns.state]
    found = list(map(licences.get, ids, repeat(_NO_RESULT)))
    count = len(found)
    valid = np.fromiter(map(_VALID, found), dtype=bool, count=count)
    grace = np.fromiter(map(_GRACE, found), dtype=bool, count=count)
    absent = np.fromiter(map(operator.is_, found, repeat(_NO_RESULT)), dtype=bool, count=count)
    return np.where(absent, 3, np.where(~valid, 2, np.where(grace, 1, 0))).astype(np.int8)


@hookimpl
def wyneos_trust(ctx: TickContext, nodes: Sequence[Node], licences: Mapping[str, LicenceResult],
                 results: Sequence[RuleResult]) -> TrustScores:
    state = state_of(ctx.orchestrator)
    engine = state.engine
    evidence = gather(ctx, state, nodes, licences, results)
    scores = engine.score(evidence)
    state.slots = scores.slots
    pending = engine.pending()
    decisions: Mapping[str, tuple[str, str, str]] = {}
    if pending.size:
        # the rules see this tick's score and the tier held now
        rules = state.admission
        env = EvalEnv(ctx.now, cluster_summary(nodes, ctx.now) if rules.reads_cluster else {})
        spent = ctx.tick - engine.joined[scores.slots[pending]].astype(np.int64)
        table = getattr(nodes, "table", None)
        held_tiers = engine.tier[scores.slots]

        def probe(positions: np.ndarray) -> list[Node]:
            return _probes(nodes, positions, scores.combined[positions].tolist(),
                           [TIER_NAMES[t] for t in held_tiers[positions].tolist()])

        if table is not None:
            columns = Columns(_Scored(table, nodes.slots, scores.combined, held_tiers),  # type: ignore[attr-defined]
                              nodes.slots[pending])  # type: ignore[attr-defined]
            decisions = rules.decide_columns(nodes, pending, probe, licences, columns, env, spent)
        else:
            probes = probe(pending)
            decisions = rules.decide(probes, licences, env, dict(zip([p.id for p in probes], spent.tolist())))
    changes = engine.assign(decisions, limit=REPORT_LIMIT)
    _witness_weights(ctx, state, evidence.node_ids, scores.slots)
    adm = engine.admission[scores.slots]
    ctx.report.trust.update({
        "changes": changes,
        "changes_total": sum(engine.moves.values()),
        # every move counted, listed or not (the report's trust line says how many moved)
        "moves": engine.moves,
        "admission": engine.admission_changes,
        "admission_total": engine.admission_changed,
        "in_admission": int(np.count_nonzero((adm == 0) | (adm == 3))),
        "refused": int(np.count_nonzero(adm == 2)),
        "new": scores.new[:REPORT_LIMIT],
        "peer": {"iterations": scores.eigen.iterations, "converged": scores.eigen.converged,
                 "residual": float(scores.eigen.residual), "observations": scores.observations_used,
                 "observations_dropped": scores.observations_dropped},
    })
    return TrustScores(nodes, scores.combined, tier_codes=engine.tier[scores.slots])


class _Scored:
    """The node table as the admission rules see it: this tick's trust score and the tier
    held now in place of the columns' (which the core writes after the step)."""

    def __init__(self, table: Any, slots: np.ndarray, trust: np.ndarray, tiers: np.ndarray) -> None:
        self._table = table
        self.trust = table.trust.copy()
        self.trust[slots] = trust
        self.tier = table.tier.copy()
        self.tier[slots] = np.array([table.tier_code(name) for name in TIER_NAMES], dtype=np.int8)[tiers]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


def _probes(nodes: Sequence[Node], positions: np.ndarray, trust: list[float], tiers: list[str]) -> list[Node]:
    """The nodes at ``positions`` as detached ``Node`` values with ``trust`` and ``tiers``
    in place of their own: made from the columns' lists in bulk when the nodes are the
    table's (a snapshot each otherwise)."""
    table = getattr(nodes, "table", None)
    if table is None:
        out = []
        for k, position in enumerate(positions.tolist()):
            probe = nodes[position].snapshot()
            probe.trust, probe.trust_tier = trust[k], tiers[k]
            out.append(probe)
        return out
    slots = nodes.slots[positions]  # type: ignore[attr-defined]
    at = slots.tolist()

    def floats(column: np.ndarray) -> list[float | None]:
        values = column[slots].astype(object)
        values[np.isnan(column[slots])] = None
        return values.tolist()

    return list(map(
        Node, [table.ids[s] for s in at], [STATUSES[c] for c in table.status[slots].tolist()],
        floats(table.last_seen), floats(table.load), [table.metadata[s] for s in at],
        [table.licence_ref[s] for s in at], [table.fingerprint[s] for s in at], table.registered_at[slots].tolist(),
        table.isolated[slots].tolist(), floats(table.last_rollback), trust, tiers))


def _witness_weights(ctx: TickContext, state: TrustState, node_ids: Sequence[str], slots: np.ndarray) -> None:
    """Consensus witnesses weighted by trust: ``ctx.scratch["witness_weights"]`` gets the
    weight (``trust.witness_weights`` by tier) of every node whose weight is not 1; the
    decide step's consensus multiplies its own weights by them."""
    weights = state.settings.witness_weights[state.engine.tier[slots]]
    lowered = np.flatnonzero(weights != 1.0)
    if not lowered.size:
        return
    found = dict(zip(map(node_ids.__getitem__, lowered.tolist()), weights[lowered].tolist()))
    out = ctx.scratch.get("witness_weights")
    if out is None:
        ctx.scratch["witness_weights"] = found
        return
    for node_id, weight in found.items():  # another plugin's weights first: they multiply
        out[node_id] = out.get(node_id, 1.0) * weight


@hookimpl
def wyneos_enforcement(ctx: TickContext, nodes: Sequence[Node]) -> list[Action]:
    """``gate_feature`` for each node below the tier a feature needs (one action per node;
    only the nodes below the highest tier a feature needs are looked at)."""
    features = state_of(ctx.orchestrator).settings.features
    if not features:
        return []
    table = getattr(nodes, "table", None)
    if table is not None:  # the tier column: a mask picks the nodes below what a feature needs
        ranks = np.array([-1 if (r := tier_rank(name)) is None else r for name in table.tier_names] + [-1],
                         dtype=np.int64)
        slots = nodes.slots  # type: ignore[attr-defined]
        rank_of = ranks[table.tier[slots]]  # code -1 (no tier yet) reads the last entry: -1
        low = np.flatnonzero((rank_of >= 0) & (rank_of < max(features.values())))
        ids = table.ids
        picked = [(ids[s], int(r)) for s, r in zip(slots[low].tolist(), rank_of[low].tolist())]
    else:
        picked = [(n.id, r) for n in nodes if (r := tier_rank(n.trust_tier)) is not None]
    out = []
    for node_id, rank in picked:
        gated = sorted(f for f, need in features.items() if rank < need)
        if gated:
            need = max(features[f] for f in gated)
            out.append(Action(
                ActionType.GATE_FEATURE, node_id,
                f"trust tier {TIER_NAMES[rank]} is below {TIER_NAMES[need]}, needed for {', '.join(gated)}",
                origin="trust", severity=Severity.WARNING, params={"features": gated},
            ))
    ctx.report.trust["gated"] = len(out)
    return out


@hookimpl
def wyneos_tick_report(ctx: TickContext) -> None:
    """Write what changed of trust: chunks of slots in one transaction (SQLite), or one
    row per changed node (stores without chunks). The markers of what the store holds
    move only once the write committed: a refused write is tried again next tick."""
    store = ctx.store
    if store is None:
        return
    state = state_of(ctx.orchestrator)
    engine = state.engine
    everything = state.first_scored
    spread = -(-len(state.slots) // PERSIST_ROWS)
    chunk_table = getattr(store, "trust_chunk_table", None)
    if chunk_table is None:
        state.first_scored = False
        rows = engine.rows_to_persist(state.slots, _Fingerprints(ctx.registry), everything=everything, spread=spread)
        if rows:
            store.write_trust(rows)
        return
    chunks = persist.chunks_changed(engine, everything=everything, spread=spread)
    if chunks.size:
        chunk_table.write(persist.encode_chunks(engine, chunks), replace=everything)
        persist.mark_written(engine, chunks)
    state.first_scored = False


def restore(engine: TrustEngine, store: Any) -> int:
    """Bring back trust from ``store``: its chunks first (each node in the slot it had),
    then per-node rows of nodes the chunks do not hold (an earlier version's table, or a
    store without chunks). Returns the nodes restored."""
    count = 0
    chunk_table = getattr(store, "trust_chunk_table", None)
    if chunk_table is not None:
        count += persist.restore_chunks(engine, chunk_table.read())
        rows = store.trust_rows(chunks=False)
    else:
        rows = store.trust_rows()
    return count + engine.restore(r for r in rows if r.get("node_id") not in engine.index)


class _Fingerprints:
    """Node id -> fingerprint read from the registry, only for the rows written."""

    __slots__ = ("registry",)

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def get(self, node_id: str, default: Any = None) -> Any:
        table = self.registry.table
        slot = table.index.get(node_id)
        return default if slot is None else table.fingerprint[slot]


def restore_read_only(orchestrator: Orchestrator, path: Any) -> int:
    """Restore trust from a state file without writing to it (``wyneos explain``).
    Returns the rows restored (0 when there is no file or no trust table)."""
    import sqlite3

    from wyneos_core.store import StateStore

    store = StateStore.open_read_only(path)
    if store is None:
        return 0
    try:
        store._trust_ready = True  # type: ignore[attr-defined]  # read only: never create the table
        return restore(state_of(orchestrator).engine, store)
    except sqlite3.Error:
        return 0
    finally:
        store.close()


def explain(orchestrator: Orchestrator, node_id: str) -> dict[str, Any] | None:
    """The trust breakdown of one node (``wyneos explain``)."""
    return state_of(orchestrator).engine.explain(node_id)
