"""The trust step's arithmetic: evidence in, scores and tiers out, for every node at once.

``TrustEngine`` keeps, per node (a *slot* in its arrays; slot 0 is the orchestrator):
the beta evidence of each behaviour signal, the smoothed peer score, last tick's global
trust vector (the warm start of the next power iteration), the combined score, the
tier and the admission state. A tick is two calls:

1. ``score(evidence)``: forget old evidence, add this tick's, compute behaviour scores,
   run EigenTrust over the witness observations, combine (licence as a gate);
2. ``assign(decisions)``: apply the admission decisions of nodes still in admission
   and move every node between tiers with hysteresis, under its cap.

Everything is numpy over the slots, so the cost per tick is a few passes over the
nodes and the observation edges (see ``bench/bench_trust.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from wyneos_core.model import ORIGIN
from wyneos_core.trust import persist
from wyneos_core.trust.beta import BetaEvidence
from wyneos_core.trust.edges import EdgeReader
from wyneos_core.trust.explain import explain_slot
from wyneos_core.trust.fingerprints import FingerprintLog
from wyneos_core.trust.eigentrust import EigenTrustResult, eigentrust, local_trust
from wyneos_core.trust.names import SlotNames
from wyneos_core.trust.reasons import SlotReasons
from wyneos_core.trust.settings import SIGNALS, TrustSettings
from wyneos_core.trust.tiers import TIER_NAMES, Tier, next_tiers

__all__ = ["Evidence", "TrustEngine", "STATUS_CODES", "LICENCE_CODES", "ADMITTED", "PENDING", "REFUSED", "HELD"]

#: node status -> code in ``Evidence.status``
STATUS_CODES: Final = {"online": 0, "stale": 1, "offline": 2, "unknown": 3}
#: licence state -> code in ``Evidence.licence``
LICENCE_CODES: Final = {"valid": 0, "grace": 1, "invalid": 2, "none": 3}
#: admission states (``TrustEngine.admission``)
PENDING: Final = 0
ADMITTED: Final = 1
REFUSED: Final = 2
HELD: Final = 3
ADMISSION_NAMES: Final = persist.ADMISSION_NAMES

_SIG = {name: i for i, name in enumerate(SIGNALS)}
#: negative evidence of one failing governance result, by severity rank (info, warning, critical)
SEVERITY_EVIDENCE: Final = (0.25, 0.5, 1.0)
#: at most this much negative refusal evidence per node and tick (a flood counts as a few)
MAX_REFUSALS_PER_TICK: Final = 3.0


@dataclass(slots=True)
class Evidence:
    """One tick's evidence, gathered by the builtin plugin from the tick (or by a bench).

    ``node_ids``, ``status``, ``licence`` and ``fingerprints`` are aligned: one entry
    per registered node.
    """

    tick: int
    node_ids: Sequence[str]
    status: np.ndarray                       # STATUS_CODES per node
    licence: np.ndarray                      # LICENCE_CODES per node
    fingerprints: Sequence[str | None] = ()
    #: governance results that did not pass: (node id, severity rank 0..2)
    failed: Iterable[tuple[str, int]] = ()
    #: did governance evaluate any rule this tick (else compliance gets no evidence)
    governed: bool = False
    #: refused messages per node: rejected heartbeats, clock rollbacks, replays, bad signatures
    refusals: Mapping[str, float] = field(default_factory=dict)
    #: (node id, acknowledged?) per action outcome: True delivered/applied, False refused/failed
    acks: Iterable[tuple[str, bool]] = ()
    #: witness observation edges (observer, subject, reachable), or one ``ObservationBatch``
    observations: Any = ()
    #: nodes declared by the operator (config): admitted without admission rules
    declared: frozenset[str] = frozenset()
    #: the node table the nodes are registered in, and their slots there (aligned with
    #: ``node_ids``): the engine finds its slots through the table (no lookup by id)
    table: Any = None
    table_slots: np.ndarray | None = None


@dataclass(slots=True)
class Scores:
    """What ``score`` computed for this tick's nodes (arrays aligned with ``slots``)."""

    slots: np.ndarray
    behaviour: np.ndarray
    peer: np.ndarray
    combined: np.ndarray
    licence_capped: np.ndarray
    eigen: EigenTrustResult
    observations_used: int
    observations_dropped: int
    new: list[str]


class TrustEngine:
    """Trust of every node, across ticks. See the module docstring."""

    def __init__(self, settings: TrustSettings, capacity: int = 1024) -> None:
        self.settings = settings
        capacity = max(2, capacity)
        self.ids: list[str] = [ORIGIN]
        #: node id -> slot: the registered nodes through the node table the engine is bound
        #: to (``Evidence.table``), the others in a small dict (``wyneos_core.trust.names``)
        self.index = SlotNames(self.ids)
        self.evidence = BetaEvidence(len(SIGNALS), capacity)
        # compact columns: scores and trust in float32 (a tier threshold is 0.01 wide), the
        # power iteration's warm start in float64
        self.peer = np.zeros(capacity, dtype=np.float32)
        self.trust = np.zeros(capacity, dtype=np.float32)
        self.tier = np.full(capacity, int(Tier.PROBATION), dtype=np.int8)
        self.admission = np.zeros(capacity, dtype=np.int8)
        self.joined = np.zeros(capacity, dtype=np.int32)
        self.global_trust = np.zeros(capacity)
        #: slot -> (rule, reason) of the nodes not admitted (a code per slot: ``trust.reasons``)
        self.admission_reason = SlotReasons(capacity)
        #: key fingerprint -> the slot that last had it (``trust.fingerprints``)
        self.fingerprint_of = FingerprintLog()
        #: while ``_slots`` creates slots: where in ``fingerprint_of`` its new pairs start
        #: (their inheritance is looked up for all of them at once, ``_inherit_all``)
        self._batch: int | None = None
        #: slot -> the node's key fingerprint (last seen; None: none known)
        self.fingerprint = np.full(capacity, None, dtype=object)
        self.tick = 0
        self._scores: Scores | None = None
        #: per slot, what the store holds: trust (rounded to 0.01; NaN: never written), tier, admission
        self.persisted_trust = np.full(capacity, np.nan, dtype=np.float32)
        self.persisted_tier = np.full(capacity, -1, dtype=np.int8)
        self.persisted_admission = np.full(capacity, -1, dtype=np.int8)
        self._edge_reader = EdgeReader(self.index)
        #: this tick's (positive, negative) evidence per signal and slot, for ``explain``'s
        #: change since last tick: in quarters (uint8: evidence comes in quarters; exact up
        #: to 63.75 a tick, more acknowledgements than that in one tick read as 63.75)
        self._last_evidence: np.ndarray | None = None
        #: seconds spent in each part of the last ``score`` (evidence, beta, peer_matrix,
        #: peer_iteration, combine): what ``bench/bench_trust.py`` reports
        self.timings: dict[str, float] = {}
        #: admission decisions that changed in the last ``assign`` (listed up to its limit; all counted)
        self.admission_changes: list[dict[str, Any]] = []
        self.admission_changed = 0
        #: tier moves of the last ``assign``, counted per "from -> to"
        self.moves: dict[str, int] = {}

    # -- slots --------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.peer.shape[0]

    def _grow(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        capacity = max(needed, 2 * self.capacity)
        self.evidence.grow(capacity)
        self.admission_reason.grow(capacity)
        for name, fill in (("persisted_trust", np.nan), ("persisted_tier", -1), ("persisted_admission", -1),
                           ("peer", 0.0), ("trust", 0.0), ("tier", int(Tier.PROBATION)),
                           ("admission", PENDING), ("joined", 0), ("global_trust", 0.0), ("fingerprint", None)):
            old = getattr(self, name)
            shape = (old.shape[0], capacity) if old.ndim == 2 else (capacity,)
            new = np.full(shape, fill, dtype=old.dtype)
            new[..., : old.shape[-1]] = old
            setattr(self, name, new)

    def slot(self, node_id: str, fingerprint: str | None = None, declared: bool = False, tick: int = 0,
             inherit: bool = True) -> int:
        """The slot of ``node_id``, created at ``probation`` (admission pending) if new.

        A new id whose key ``fingerprint`` belonged to a node seen before inherits that
        node's evidence, tier and admission (no whitewashing by re-enrolling the same
        key under another id); not with ``inherit=False`` (a restore, which sets all of
        that itself).
        """
        slot = self.index.get(node_id)
        if slot is not None:
            return slot
        slot = len(self.ids)
        self._grow(slot + 1)
        self.ids.append(node_id)
        self.index[node_id] = slot
        self.fingerprint[slot] = fingerprint or None
        self.evidence.reset(slot)
        self.trust[slot] = 0.0
        self.tier[slot] = int(Tier.PROBATION)
        self.admission[slot] = ADMITTED if declared else PENDING
        self.joined[slot] = tick
        if declared:
            self.admission_reason.pop(slot, None)
        self.peer[slot] = 0.0
        self.global_trust[slot] = 0.0
        if fingerprint:
            at = self.fingerprint_of.add(fingerprint, slot)
            if inherit and self._batch is None:
                self._inherit_all(at, tick)
        return slot

    def _inherit_all(self, start: int, tick: int) -> None:
        """Each slot created with a key since position ``start`` of ``fingerprint_of``
        takes over the record of the slot that had its key before (in the order created:
        a node inherits what an earlier one of the same batch inherited)."""
        log = self.fingerprint_of
        positions = np.arange(start, len(log))
        if not positions.size:
            return
        new = log.slots[positions]
        earlier = log.earlier_many(positions)
        for k in np.flatnonzero((earlier >= 0) & (earlier != new)).tolist():
            slot, before = int(new[k]), int(earlier[k])
            self.evidence.r[:, slot] = self.evidence.r[:, before]
            self.evidence.s[:, slot] = self.evidence.s[:, before]
            self.trust[slot] = self.trust[before]
            self.tier[slot] = min(int(self.tier[before]), int(Tier.PROBATION))
            self.admission[slot] = self.admission[before] if self.admission[before] == REFUSED else PENDING
            self.joined[slot] = tick

    # -- step 1: scores -----------------------------------------------------------------------

    def score(self, ev: Evidence) -> Scores:
        """Forget, add this tick's evidence, and compute behaviour, peer and combined scores."""
        st = self.settings
        self.tick = ev.tick
        index = self.index
        timings = self.timings
        t0 = time.perf_counter()
        slots, new = self._slots(ev)
        attested = st.attested
        for node_id in attested:
            slot = index.get(node_id)
            if slot is not None and self.admission[slot] != ADMITTED and self.admission[slot] != REFUSED:
                self.admission[slot] = ADMITTED
                self.admission_reason.pop(slot, None)
        n_slots = len(self.ids)
        if len(ev.fingerprints) == len(slots):
            self._learn_fingerprints(slots, ev.fingerprints)
        cap = self.capacity
        status = ev.status
        online = slots[status == 0]
        lic = ev.licence
        # this tick's evidence, one signal at a time (two float32 columns, reused), and its
        # record in quarters for ``explain``'s change since last tick
        pos = np.zeros(cap, dtype=np.float32)
        neg = np.zeros(cap, dtype=np.float32)
        last = self._last_evidence
        if last is None or last.shape[2] != cap:
            last = self._last_evidence = np.zeros((2, len(SIGNALS), cap), dtype=np.uint8)
        lam = np.float32(st.forgetting)
        r_all, s_all = self.evidence.r, self.evidence.s

        def add(signal: str) -> None:
            """``r = λ r + pos``, ``s = λ s + neg`` for ``signal``; pos and neg zeroed again."""
            k = _SIG[signal]
            for got, kept, rec in ((pos, r_all[k], last[0, k]), (neg, s_all[k], last[1, k])):
                kept *= lam
                kept += got
                np.multiply(got, 4.0, out=got)
                np.minimum(got, 255.0, out=got)
                rec[...] = got  # quarters (exact: evidence comes in quarters), saturated at 63.75
                got.fill(0.0)

        # heartbeat regularity: heard within stale_after (+1), stale (-0.5), offline (-1)
        pos[online] = 1.0
        neg[slots[status == 1]] = 0.5
        neg[slots[status == 2]] = 1.0
        add("heartbeat")

        # governance compliance over time: failing results by severity, capped at 1 a tick
        if ev.governed:
            fail_list = list(ev.failed)
            if fail_list:
                f_slots = np.fromiter((index.get(n, 0) for n, _ in fail_list), dtype=np.int64, count=len(fail_list))
                f_weight = np.take(SEVERITY_EVIDENCE, np.fromiter((s for _, s in fail_list), dtype=np.int64,
                                                                  count=len(fail_list)))
                np.add.at(neg, f_slots, f_weight)
                neg[0] = 0.0
            np.minimum(neg, 1.0, out=neg)
            pos[slots[neg[slots] == 0]] = 1.0
        add("compliance")

        # licence history: valid (+1), in grace (-0.5), invalid (-1), no result (nothing)
        pos[slots[lic == 0]] = 1.0
        neg[slots[lic == 1]] = 0.5
        neg[slots[lic == 2]] = 1.0
        add("licence")

        # acknowledged actions
        for node_id, good in ev.acks:
            slot = index.get(node_id)
            if slot:
                if good:
                    pos[slot] += 1.0
                else:
                    neg[slot] += 1.0
        add("acknowledgements")

        # refused messages: each refusal is negative; an online node with none is positive
        for node_id, count in ev.refusals.items():
            slot = index.get(node_id)
            if slot:
                neg[slot] += count
        np.minimum(neg, MAX_REFUSALS_PER_TICK, out=neg)
        pos[online[neg[online] == 0]] = 1.0
        add("refusals")

        # witness observations: to slot indexes (unknown ids and self-observations dropped)
        src, dst, good, dropped = self._edges(ev.observations)
        active = np.zeros(n_slots, dtype=bool)
        active[0] = True
        active[slots] = True
        if src.size:  # edges of nodes no longer registered (their slots are kept) are dropped too
            live = active[src] & active[dst]
            if not live.all():
                dropped += int(src.size - np.count_nonzero(live))
                src, dst, good = src[live], dst[live], good[live]
        if src.size:
            truth = np.full(cap, -1, dtype=np.int8)           # -1 unknown, 1 up, 0 down (orchestrator's own view)
            truth[online] = 1
            truth[slots[status == 2]] = 0
            verdict = truth[dst]
            del truth
            known = verdict >= 0
            agree = known & (verdict == good)
            disagree = known & (verdict != good)
            # per tick and observer: one lie taints the tick (-1); else any checked truth +1
            lies = np.bincount(src[disagree], minlength=cap)[:cap] > 0
            truths = np.bincount(src[agree], minlength=cap)[:cap] > 0
            neg[lies] = 1.0
            pos[truths & ~lies] = 1.0
            pos[0] = neg[0] = 0.0
        add("witness")
        del pos, neg

        t1 = time.perf_counter()
        timings["evidence"] = t1 - t0
        # peer score: EigenTrust over the observations and the orchestrator's own evidence (its
        # row kept dense: it vouches for every online node, weighted by their witness scores)
        witness_score = self.evidence.score(_SIG["witness"], n_slots)
        e_w = np.where(good == 1, witness_score[dst], -witness_score[dst])
        row = np.zeros(n_slots)
        row[online] = witness_score[online]
        del online
        mine = src == 0
        if mine.any():  # the orchestrator's own observations join its row
            np.add.at(row, dst[mine], e_w[mine])
            src, dst, e_w = src[~mine], dst[~mine], e_w[~mine]
        np.maximum(row, 0.0, out=row)
        total = float(row.sum())
        if total > 0:
            row /= total
        witness_score[0] = 1.0  # the orchestrator's own credibility
        t2 = time.perf_counter()
        timings["beta"] = t2 - t1
        c, leak = local_trust(src, dst, e_w, n_slots, witness_score)
        del src, dst, e_w, witness_score
        leak[0] = 0.0 if total > 0 else 1.0
        # the pre-trusted: the orchestrator and the attested nodes registered now, in equal shares
        pre_slots = {0}
        for node_id in attested:
            slot = index.get(node_id)
            if slot is not None and active[slot]:
                pre_slots.add(slot)
        pre = np.array(sorted(pre_slots), dtype=np.int64)
        pre_weight = np.full(pre.size, 1.0 / pre.size)
        start = self.global_trust[:n_slots]
        start[~active] = 0.0
        t3 = time.perf_counter()
        timings["peer_matrix"] = t3 - t2
        eigen = eigentrust(c, leak, None, st.teleport, tolerance=st.tolerance, max_iterations=st.max_iterations,
                           start=start if start.sum() > 0 else None, row=(0, row) if total > 0 else None,
                           pre=(pre, pre_weight))
        del c, leak, row, start
        self.global_trust[:n_slots] = eigen.trust
        self.global_trust[n_slots:] = 0.0
        eigen.trust = self.global_trust[:n_slots]  # the result keeps a view, not a second vector
        # scaled by the median share of the nodes that are not pre-trusted (robust to a
        # few nodes holding much, and to a colluding minority holding little)
        peer = eigen.trust[slots]
        is_pre = np.zeros(n_slots, dtype=bool)
        is_pre[pre] = True
        plain = peer[~is_pre[slots]]
        reference = float(np.median(plain, overwrite_input=True)) if plain.size else 0.0
        del plain, is_pre
        if reference <= 0:
            reference = float(peer.mean()) if peer.size else 0.0
        if reference > 0:
            peer /= st.saturation * reference
            np.minimum(peer, 1.0, out=peer)
        else:
            peer.fill(0.0)
        peer *= 1.0 - st.smoothing
        peer += st.smoothing * self.peer[slots]
        self.peer[slots] = peer

        t4 = time.perf_counter()
        timings["peer_iteration"] = t4 - t3
        # behaviour: the weighted mean of the signals' scores, summed one signal at a time (the
        # witness score last), after the power iteration, so that its vectors are not held together
        weights = np.asarray(st.weights, dtype=np.float64)
        weights = weights / weights.sum()
        behaviour_all = np.zeros(n_slots)
        one = np.empty(n_slots)
        for k in range(len(SIGNALS)):
            if k != _SIG["witness"]:
                behaviour_all += np.multiply(self.evidence.score(k, n_slots, out=one), weights[k], out=one)
        behaviour_all += np.multiply(self.evidence.score(_SIG["witness"], n_slots, out=one), weights[_SIG["witness"]],
                                     out=one)
        del one
        behaviour = behaviour_all[slots]
        del behaviour_all
        t5 = time.perf_counter()
        timings["beta"] += t5 - t4
        combined = behaviour * st.behaviour_weight
        combined += st.peer_weight * peer
        combined /= st.behaviour_weight + st.peer_weight
        capped = lic == 2
        np.minimum(combined, st.licence_cap, out=combined, where=capped)
        self.trust[slots] = combined
        self._scores = Scores(slots, behaviour, peer, combined, capped, eigen, int(good.size), dropped, new)
        timings["combine"] = time.perf_counter() - t5
        return self._scores

    def _slots(self, ev: Evidence) -> tuple[np.ndarray, list[str]]:
        """The slots of ``ev``'s nodes (int64) and the ids given a new slot: through the node
        table when ``ev`` has one (``SlotNames.bind``), else by id."""
        st = self.settings
        fps = ev.fingerprints

        def create(node_id: str, position: int) -> int:
            return self.slot(node_id, fps[position] if len(fps) else None,
                             node_id in ev.declared or node_id in st.attested, ev.tick)

        start = self._batch = len(self.fingerprint_of)
        try:
            found, new = self._bind(ev, create)
        finally:
            self._batch = None
        self._inherit_all(start, ev.tick)
        return found, new

    def _bind(self, ev: Evidence, create: Callable[[str, int], int]) -> tuple[np.ndarray, list[str]]:
        if ev.table is not None and ev.table_slots is not None:
            return self.index.bind(ev.table, ev.table_slots, create,
                                   lambda count: self._grow(len(self.ids) + count))  # once, to the size needed
        found = self.index.slots_of(ev.node_ids)
        fresh = np.flatnonzero(found < 0)
        new: list[str] = []
        if fresh.size:
            self._grow(len(self.ids) + fresh.size)  # once, to the size needed
            ids = ev.node_ids
            for k in fresh.tolist():
                slot = self.index.get(ids[k])
                if slot is None:  # (an id twice in the list gets one slot)
                    new.append(ids[k])
                    slot = create(ids[k], k)
                found[k] = slot
        return found, new

    def _learn_fingerprints(self, slots: np.ndarray, fingerprints: Sequence[str | None]) -> None:
        """Keep each node's key fingerprint as the registry has it now (compared over the
        whole list in C; only those that changed are touched)."""
        if isinstance(fingerprints, np.ndarray) and fingerprints.dtype == object:
            now = fingerprints
        else:
            now = np.empty(len(fingerprints), dtype=object)
            now[:] = fingerprints
        changed = np.flatnonzero((now != self.fingerprint[slots]) & (now != None))  # noqa: E711
        if changed.size:
            self.fingerprint[slots[changed]] = now[changed]
            self.fingerprint_of.add_many(now[changed].tolist(), slots[changed])

    def _edges(self, observations: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Observation edges as slot arrays (``wyneos_core.trust.edges``)."""
        return self._edge_reader.read(observations)

    # -- step 2: tiers ------------------------------------------------------------------------

    def pending(self) -> np.ndarray:
        """Positions (in the last ``score``'s node order) of nodes still in admission."""
        assert self._scores is not None
        states = self.admission[self._scores.slots]
        return np.flatnonzero((states == PENDING) | (states == HELD))

    def assign(self, decisions: Mapping[str, tuple[str, str, str]] = {},  # noqa: B006
               limit: int | None = None) -> list[dict[str, Any]]:
        """Apply admission decisions (node id -> (``admit``/``hold``/``refuse``, rule, reason))
        and move every scored node between tiers. Returns the tier changes of this tick
        (the first ``limit`` of them: ``moves`` counts them all, per move).

        Decisions are applied per distinct decision (a whole fleet admitted at once is one
        group, its states and reasons set over the columns): ``decisions`` made by
        ``AdmissionRules.decide_columns`` come in groups of positions in the last
        ``score``'s node order (their ``groups``), a plain mapping is grouped here."""
        assert self._scores is not None
        sc = self._scores
        groups: list[tuple[tuple[str, str, str], np.ndarray, Callable[[int], str]]] = []
        by_position = getattr(decisions, "groups", None)
        if by_position is not None:
            named = decisions.ids  # type: ignore[attr-defined]
            for decided, positions in by_position:
                groups.append((decided, sc.slots[positions], lambda i, p=positions: named[p[i]]))
        else:
            by_decision: dict[tuple[str, str, str], list[str]] = {}
            for node_id, decided in decisions.items():
                by_decision.setdefault(decided, []).append(node_id)
            for decided, node_ids in by_decision.items():
                slots = self.index.slots_of(node_ids)
                if (slots < 0).any():
                    raise KeyError(node_ids[int(np.flatnonzero(slots < 0)[0])])
                groups.append((decided, slots, node_ids.__getitem__))
        changed_admission: list[dict[str, Any]] = []
        changed_total = 0
        reasons = self.admission_reason
        for (decision, rule, reason), slots, name in groups:
            state = {"admit": ADMITTED, "hold": HELD, "refuse": REFUSED}[decision]
            before = self.admission[slots]
            self.admission[slots] = state
            if state == ADMITTED:
                reasons.clear_many(slots)
            else:
                reasons.set_many(slots, (rule, reason))
            moved = np.flatnonzero(before != state)
            changed_total += moved.size
            room = moved.size if limit is None else max(0, limit - len(changed_admission))
            changed_admission += [{"node_id": name(i), "from": ADMISSION_NAMES[before[i]],
                                   "decision": ADMISSION_NAMES[state], "rule": rule, "reason": reason}
                                  for i in moved[:room].tolist()]
        self.admission_changes = changed_admission
        self.admission_changed = changed_total
        slots = sc.slots
        st = self.settings
        cap = np.full(slots.size, int(Tier.TRUSTED), dtype=np.int8)
        if st.attested:
            is_att = np.fromiter((self.ids[s] in st.attested for s in slots), dtype=bool, count=slots.size)
            cap[is_att] = int(Tier.ATTESTED)
        adm = self.admission[slots]
        cap[(adm == PENDING) | (adm == HELD)] = int(Tier.PROBATION)
        cap[adm == REFUSED] = int(Tier.UNTRUSTED)
        cap[sc.licence_capped] = int(Tier.UNTRUSTED)
        current = self.tier[slots]
        nxt = next_tiers(current, sc.combined, st.enter, st.leave, cap)  # int8 ranks
        del cap, adm
        moved = np.flatnonzero(nxt != current)
        pairs = current[moved].astype(np.int64) * len(TIER_NAMES) + nxt[moved]
        counted = np.bincount(pairs, minlength=len(TIER_NAMES) ** 2)
        self.moves = {f"{TIER_NAMES[k // len(TIER_NAMES)]} -> {TIER_NAMES[k % len(TIER_NAMES)]}": int(counted[k])
                      for k in np.flatnonzero(counted).tolist()}
        listed = moved if limit is None else moved[:limit]
        changes = [{"node_id": self.ids[slots[i]], "from": TIER_NAMES[current[i]], "to": TIER_NAMES[nxt[i]],
                    "trust": round(float(sc.combined[i]), 4)} for i in listed.tolist()]
        self.tier[slots] = nxt
        return changes

    # -- reading ------------------------------------------------------------------------------

    def tier_names(self, slots: np.ndarray) -> list[str]:
        names = TIER_NAMES
        return [names[t] for t in self.tier[slots].tolist()]

    def explain(self, node_id: str) -> dict[str, Any] | None:
        """Why ``node_id`` has its trust: each signal's evidence, score, weight and pull
        (``wyneos_core.trust.explain``)."""
        return explain_slot(self, node_id)

    # -- persistence (``wyneos_core.trust.persist``) -------------------------------------------

    def rows_to_persist(self, slots: np.ndarray, fingerprints: Mapping[str, str | None] | None = None,
                        everything: bool = False, spread: int = 1) -> list[tuple]:
        """Per-node rows of what changed, for stores without chunks (``persist.rows_to_persist``)."""
        return persist.rows_to_persist(self, slots, fingerprints, everything, spread)

    def restore(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Bring back nodes' trust from per-node rows (``persist.restore_rows``)."""
        return persist.restore_rows(self, rows)
