"""Consensus before severe actions: witnesses confirm the orchestrator's evidence.

The orchestrator alone is one observer. When its link to a node breaks, the node falls
silent *to the orchestrator* while it and its peers are fine; acting on that silence
alone is how false isolations happen. So, as memberlist (Serf, Consul) asks other
members to confirm a suspicion before it declares a member dead, a **severe** action
(``consensus.severe_actions``, by default ``isolate`` and ``revoke``) against a node the
orchestrator no longer hears takes effect only once at least ``k``
(``consensus.witnesses``) independent witnesses - the node's mesh neighbours, which
probe it and report what they see with their heartbeats (``model.Observation``) -
confirm it unreachable within ``consensus.window_ticks``:

* one small ``Suspicion`` per silent node (memberlist ``suspicion.go``): it starts at the
  node's first silent tick, keeps the latest report of each witness, and counts
  confirmations (unreachable) and refutations (reachable) by weight;
* a severe action on it is **confirmed** when the confirmations reach ``k``, outweigh the
  refutations, and the suspicion timeout has passed. The timeout shrinks as
  confirmations arrive (Lifeguard): ``max_timeout_ticks`` with none, down to
  ``min_timeout_ticks`` with ``k``, logarithmically in between;
* a node with fewer than ``k`` mesh neighbours can never have ``k`` witnesses: all of its
  neighbours must confirm (basis ``few_neighbours``), and the Lifeguard timeout for that
  many confirmations applies; a node with none is judged on the orchestrator's evidence
  (``no_neighbours``);
* a node whose neighbours are themselves silent or discounted stays held (``waiting``)
  until enough of them can speak: consensus prefers a late isolation to a false one;
* in a cluster where no node reports observations at all (agents that do not probe their
  peers, the embedded demo) there is nobody to ask: basis ``no_witnesses``, the
  orchestrator's evidence alone, as before consensus - except in the first
  ``window_ticks`` ticks after a restart, when the witnesses' reports are still on their
  way (a node cut off from the orchestrator is not isolated on the restart's silence);
* in a **small cluster** (at most ``consensus.small_cluster_nodes`` nodes, or fewer than
  ``k`` other nodes to ask) no confirmation is asked for, as memberlist does at three
  members: the orchestrator's evidence is all there is;
* the suspect's own reports never count, nor those of isolated nodes, nor (with
  ``consensus.require_signed``) unsigned ones;
* **weights**: each witness counts with a weight (1 by default). A witness whose recent
  "unreachable" reports name nodes the orchestrator hears directly (a fresh heartbeat)
  more than ``consensus.max_contradicted_fraction`` of the time is weighed 0 (a liar, or
  a broken prober). A trust plugin may put ``{node_id: weight}`` into
  ``ctx.scratch["witness_weights"]``; the weights multiply.

A severe action against a node the orchestrator *does* hear (a forged licence, a
critical rule on what the node reports) rests on what the node itself sent, which no
broken link can fake: it needs no witnesses (basis ``direct``). Light actions
(``reduce_load``...) never wait. The decide step's safety stop stays above all this.

Every timing constant is a named setting of the ``consensus`` config section.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from wyneos_core.model import Action, Node, NodeStatus, Observation
from wyneos_core.trust.observations import HeartbeatObservations

__all__ = [
    "ConsensusSettings",
    "ConsensusState",
    "Suspicion",
    "Verdict",
    "state_of",
    "suspicion_timeout",
]

#: decay per tick of a witness's contradiction record (half-life about 7 ticks)
CONTRADICTION_DECAY: Final = 0.9
#: severe actions listed one by one in a tick report at most (the rest are counted)
REPORT_LIMIT: Final = 100
_SILENT = (NodeStatus.STALE, NodeStatus.OFFLINE)


@dataclass(slots=True, frozen=True)
class ConsensusSettings:
    """The ``consensus`` section of the config (see ``schemas/config.schema.json``)."""

    enabled: bool = True
    witnesses: int = 2
    severe_actions: frozenset[str] = frozenset({"isolate", "revoke"})
    window_ticks: int = 3
    small_cluster_nodes: int = 3
    min_timeout_ticks: int = 0
    max_timeout_ticks: int = 16
    require_signed: bool = False
    max_contradicted_fraction: float = 0.25
    min_contradictions: int = 3

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> ConsensusSettings:
        return cls(bool(section.get("enabled", True)), int(section.get("witnesses", 2)),
                   frozenset(section.get("severe_actions", ("isolate", "revoke"))),
                   int(section.get("window_ticks", 3)), int(section.get("small_cluster_nodes", 3)),
                   int(section.get("min_timeout_ticks", 0)), int(section.get("max_timeout_ticks", 16)),
                   bool(section.get("require_signed", False)),
                   float(section.get("max_contradicted_fraction", 0.25)), int(section.get("min_contradictions", 3)))


def suspicion_timeout(confirmations: float, k: int, min_ticks: int, max_ticks: int) -> float:
    """Lifeguard's shrinking suspicion timeout, in ticks.

    ``max_ticks`` with no confirmation, ``min_ticks`` with ``k`` or more, and in between
    ``max - (max - min) * log(c + 1) / log(k + 1)`` (memberlist ``remainingSuspicionTime``):
    the first confirmations shorten it most.
    """
    if max_ticks <= min_ticks:
        return float(min_ticks)
    c = min(max(confirmations, 0.0), float(k))
    frac = math.log(c + 1.0) / math.log(k + 1.0)
    return max(float(min_ticks), max_ticks - frac * (max_ticks - min_ticks))


@dataclass(slots=True)
class Suspicion:
    """One silent node and what its witnesses said about it (latest report per witness).

    :param since: the node's first silent tick (the orchestrator's own evidence).
    """

    subject: str
    since: int
    #: witness -> (tick of its latest report, reachable)
    reports: dict[str, tuple[int, bool]] = field(default_factory=dict)
    #: witness -> tick it turned: it reached the node during this suspicion, then said it could not
    turned: dict[str, int] = field(default_factory=dict)

    def report(self, observer: str, tick: int, reachable: bool) -> None:
        reports = self.reports
        if reachable:
            self.turned.pop(observer, None)
        else:
            before = reports.get(observer)
            if before is not None and before[1] and observer not in self.turned:
                self.turned[observer] = tick
        reports[observer] = (tick, reachable)

    def tally(self, tick: int, window: int, weight_of: Any,
              hold: int = 0) -> tuple[float, float, list[str], list[str]]:
        """Confirmation weight, refutation weight, confirming and refuting witnesses
        (reports inside the window, weight above 0), dropping expired reports. A witness
        that turned (it reached the node during this suspicion, then did not) confirms
        only once it has said so for ``hold`` ticks."""
        confirm = refute = 0.0
        yes: list[str] = []
        no: list[str] = []
        expired = []
        turned = self.turned
        for observer, (at, reachable) in self.reports.items():
            if tick - at >= window:
                expired.append(observer)
                continue
            w = weight_of(observer)
            if w <= 0.0:
                continue
            if not reachable and observer in turned and tick - turned[observer] < hold:
                continue  # a late liar's first ticks: by the end of the hold its lies have been counted
            if reachable:
                refute += w
                no.append(observer)
            else:
                confirm += w
                yes.append(observer)
        for observer in expired:
            del self.reports[observer]
            turned.pop(observer, None)
        yes.sort()
        no.sort()
        return confirm, refute, yes, no


@dataclass(slots=True)
class Verdict:
    """Whether a severe action may take effect this tick, and why."""

    approved: bool
    #: confirmed | few_neighbours | no_neighbours | direct | small_cluster | no_witnesses | disabled | waiting | refuted
    basis: str
    detail: str
    witnesses: list[str] = field(default_factory=list)
    refuted_by: list[str] = field(default_factory=list)
    confirmations: float = 0.0
    needed: int = 0
    since: int | None = None
    timeout_ticks: float | None = None

    def to_dict(self, action: Action) -> dict[str, Any]:
        out: dict[str, Any] = {
            "action_id": action.id, "type": action.type, "target": action.target,
            "approved": self.approved, "basis": self.basis, "detail": self.detail,
            "witnesses": self.witnesses[:20], "refuted_by": self.refuted_by[:20],
            "confirmations": round(self.confirmations, 3), "needed": self.needed,
        }
        if self.since is not None:
            out["silent_since_tick"] = self.since
        if self.timeout_ticks is not None:
            out["timeout_ticks"] = round(self.timeout_ticks, 3)
        return out


class ConsensusState:
    """What consensus remembers across ticks: one ``Suspicion`` per silent node, the
    unreachable reports about nodes not yet silent, and each witness's contradictions."""

    __slots__ = ("settings", "suspicions", "early", "contradictions", "tick", "discounted", "_weights",
                 "_registry", "_stats", "last_observed", "refused", "first_tick")

    def __init__(self, settings: ConsensusSettings) -> None:
        self.settings = settings
        self.suspicions: dict[str, Suspicion] = {}
        #: subject -> {witness: tick}: unreachable reports about nodes the orchestrator still hears
        self.early: dict[str, dict[str, int]] = {}
        #: witness -> [contradicted reports, unreachable reports, tick of last update] (decayed)
        self.contradictions: dict[str, list[float]] = {}
        self.tick = 0
        self.discounted: set[str] = set()
        self._weights: Mapping[str, float] | None = None
        self._registry: Any = None
        self._stats = {"observations": 0, "ignored": 0}
        #: last tick any witness observation arrived (None: never)
        self.last_observed: int | None = None
        #: node -> last tick one of its heartbeats arrived and was refused (heard, but wrong)
        self.refused: dict[str, int] = {}
        #: the first tick this state saw (after a restart: the first tick of this process)
        self.first_tick: int | None = None

    # -- bookkeeping, once per tick ---------------------------------------------------------

    def update(self, tick: int, now: float, observations: Iterable[Observation], registry: Any,
               silent_since: Mapping[str, int], fresh_seconds: float,
               weights: Mapping[str, float] | None = None, refused: Iterable[str] = ()) -> None:
        """Take this tick's observations in and follow which nodes are silent.

        :param silent_since: node id -> first tick of its current run of silence (stale or
            offline to the orchestrator); these are the suspects.
        :param fresh_seconds: a node heard this recently is heard *directly*: a report that
            it is unreachable contradicts the orchestrator's own evidence.
        :param weights: optional witness weights (trust), multiplied in.
        :param refused: nodes whose heartbeats arrived this tick but were refused (a clock
            off, bad metadata): heard directly, so judged on what they sent.
        """
        s = self.settings
        self.tick = tick
        if self.first_tick is None:
            self.first_tick = tick
        self._registry = registry
        for node_id in refused:
            self.refused[node_id] = tick
        self._weights = weights
        suspicions = self.suspicions
        # suspects: new silent nodes get a suspicion (with the unreachable reports seen early),
        # nodes heard again lose theirs
        for subject in [n for n in suspicions if n not in silent_since]:
            del suspicions[subject]
        if len(suspicions) != len(silent_since):
            early = self.early
            for subject, since in silent_since.items():
                if subject not in suspicions:
                    sus = suspicions[subject] = Suspicion(subject, since)
                    seen = early.pop(subject, None)
                    if seen:
                        for observer, at in seen.items():
                            sus.reports[observer] = (at, False)
        early = self.early
        contra = self.contradictions
        require_signed = s.require_signed
        get = registry.get
        cutoff = now - fresh_seconds
        ignored = 0
        if not isinstance(observations, list):
            observations = list(observations)
        count = len(observations)
        if isinstance(observations, HeartbeatObservations):  # skip, vectorised, what the loop would skip
            observations = observations.relevant(suspicions)
        for obs in observations:
            # the common case first: a node reachable that nobody suspects tells nothing new
            if obs.reachable:
                sus = suspicions.get(obs.subject)
                if sus is None:
                    continue
                observer = obs.observer
                if observer == sus.subject or (require_signed and not obs.signed):
                    ignored += 1
                    continue
                sus.report(observer, tick, True)
                continue
            observer = obs.observer
            subject = obs.subject
            if subject == observer or (require_signed and not obs.signed):
                ignored += 1
                continue
            sus = suspicions.get(subject)
            if sus is not None:
                sus.report(observer, tick, False)
                contradicted = False
            else:
                node = get(subject)
                if node is None:
                    ignored += 1
                    continue
                seen = node.last_seen
                contradicted = seen is not None and seen > cutoff
                if not contradicted:
                    early.setdefault(subject, {})[observer] = tick
            rec = contra.get(observer)
            if rec is None:
                contra[observer] = [1.0 if contradicted else 0.0, 1.0, float(tick)]
            else:
                if rec[2] != tick:
                    decay = CONTRADICTION_DECAY ** (tick - rec[2])
                    rec[0] *= decay
                    rec[1] *= decay
                    rec[2] = float(tick)
                rec[1] += 1.0
                if contradicted:
                    rec[0] += 1.0
        self._stats = {"observations": count, "ignored": ignored}
        if count:
            self.last_observed = tick
        if tick % 10 == 0:
            self._trim(tick)
        self.discounted = self._discounted(tick)

    def _discounted(self, tick: int) -> set[str]:
        s = self.settings
        out = set()
        for observer, (bad, total, at) in self.contradictions.items():
            decay = CONTRADICTION_DECAY ** (tick - at)
            bad *= decay
            if bad >= s.min_contradictions and bad / (total * decay) > s.max_contradicted_fraction:
                out.add(observer)
        return out

    def _trim(self, tick: int) -> None:
        window = self.settings.window_ticks
        for subject in [n for n, seen in self.early.items() if all(tick - t >= window for t in seen.values())]:
            del self.early[subject]
        for node_id in [n for n, t in self.refused.items() if tick - t >= window]:
            del self.refused[node_id]
        floor = 0.05
        for observer in [o for o, rec in self.contradictions.items()
                         if rec[1] * CONTRADICTION_DECAY ** (tick - rec[2]) < floor]:
            del self.contradictions[observer]

    @property
    def turn_hold(self) -> int:
        """Ticks a witness that turned (see ``Suspicion.turned``) must keep saying the node
        is unreachable before it confirms: as many as a liar naming a single node the
        orchestrator hears needs to reach ``min_contradictions`` (decayed), so a late liar
        is discounted before its first lie can count."""
        need, total, n = self.settings.min_contradictions, 0.0, 0
        while total < need and n < 100:
            total += CONTRADICTION_DECAY ** n
            n += 1
        return n

    # -- verdicts --------------------------------------------------------------------------

    def weight_of(self, observer: str) -> float:
        """The weight a witness's report carries now (0: not counted)."""
        if observer in self.discounted:
            return 0.0
        registry = self._registry
        node = registry.get(observer) if registry is not None else None
        if node is None or node.isolated:
            return 0.0
        weights = self._weights
        if weights is not None:
            return float(weights.get(observer, 1.0))
        return 1.0

    def gates(self, action: Action) -> bool:
        """Whether ``action`` is of a type that needs consensus."""
        return action.type in self.settings.severe_actions

    def subject_of(self, action: Action) -> str | None:
        """The node a severe action is about (a revocation names it in ``params.node``)."""
        if action.target != "*":
            return action.target
        node = action.params.get("node") if isinstance(action.params, dict) else None
        return node if isinstance(node, str) else None

    def verdict(self, action: Action, node: Node | None, cluster_size: int, neighbours: int) -> Verdict:
        """Whether ``action`` (severe) may take effect this tick.

        :param node: the node the action is about (None: it names none).
        :param cluster_size: nodes in the cluster (small-cluster fallback).
        :param neighbours: the node's mesh neighbours, the orchestrator not counted: the
            witnesses it can have at most.
        """
        s = self.settings
        k = s.witnesses
        if not s.enabled:
            return Verdict(True, "disabled", "consensus.enabled is false: the orchestrator's evidence alone")
        subject = self.subject_of(action)
        sus = self.suspicions.get(subject) if subject is not None else None
        if sus is None or node is None or node.status not in _SILENT:
            return Verdict(True, "direct", "the orchestrator hears the node directly: the evidence is what it sent")
        refused_at = self.refused.get(subject)
        if refused_at is not None and self.tick - refused_at < s.window_ticks:
            return Verdict(True, "direct", "the node's heartbeats arrive and are refused: the evidence is what "
                           "it sent", since=sus.since)
        if cluster_size <= s.small_cluster_nodes or cluster_size - 1 < k:
            return Verdict(True, "small_cluster",
                           f"{cluster_size} node(s): too few for {k} witnesses (consensus.small_cluster_nodes="
                           f"{s.small_cluster_nodes}); the orchestrator's evidence alone", since=sus.since)
        needed = min(k, neighbours)
        if needed <= 0:
            return Verdict(True, "no_neighbours", "the node has no mesh neighbour to witness it: the orchestrator's "
                           "evidence alone", since=sus.since)
        last = self.last_observed
        first = self.first_tick or 1
        if last is None and first > 1 and self.tick - first < s.window_ticks:
            # restarted (tick numbers go on from the state file): the witnesses' reports are on their way
            return Verdict(False, "waiting", f"no witness report yet since this orchestrator started (tick "
                           f"{self.first_tick}); waiting {s.window_ticks} tick(s) for them", since=sus.since,
                           needed=needed)
        if last is None or self.tick - last >= max(s.window_ticks, s.max_timeout_ticks):
            return Verdict(True, "no_witnesses", "no node of the cluster reports witness observations (agents "
                           "without peer probing): the orchestrator's evidence alone", since=sus.since)
        confirm, refute, yes, no = sus.tally(self.tick, s.window_ticks, self.weight_of, self.turn_hold)
        elapsed = self.tick - sus.since
        timeout = suspicion_timeout(confirm, k, s.min_timeout_ticks, s.max_timeout_ticks)
        base = dict(witnesses=yes, refuted_by=no, confirmations=confirm, needed=needed, since=sus.since,
                    timeout_ticks=timeout)
        if confirm >= needed and confirm > refute:
            if elapsed >= timeout:
                basis = "confirmed" if needed == k else "few_neighbours"
                extra = "" if needed == k else f" (all it has: {neighbours} mesh neighbour(s), fewer than k={k})"
                return Verdict(True, basis, f"{_n(confirm)} witness(es) confirm it unreachable{extra}: "
                               + ", ".join(yes[:5]), **base)
            return Verdict(False, "waiting", f"confirmed by {_n(confirm)}; suspicion timeout {timeout:.1f} tick(s) "
                           f"not reached ({elapsed} since the node fell silent)", **base)
        if refute and refute >= confirm:
            return Verdict(False, "refuted", f"{_n(refute)} witness(es) still reach it ("
                           + ", ".join(no[:5]) + f"); {_n(confirm)} of {needed} confirmation(s)", **base)
        return Verdict(False, "waiting", f"waits for {needed} confirmation(s), has {_n(confirm)}"
                       + (f" (against {_n(refute)})" if refute else ""), **base)

    def summary(self) -> dict[str, Any]:
        return {"k": self.settings.witnesses, "enabled": self.settings.enabled,
                "suspects": len(self.suspicions), "observations": self._stats["observations"],
                "ignored": self._stats["ignored"], "discounted_witnesses": sorted(self.discounted)[:20],
                "discounted": len(self.discounted)}


def _n(x: float) -> str:
    return f"{x:g}" if x != int(x) else str(int(x))


def state_of(orchestrator: Any) -> ConsensusState:
    """The consensus state of ``orchestrator`` (created from its config the first time)."""
    state = getattr(orchestrator, "_consensus_state", None)
    if state is None:
        section = orchestrator.config.get("consensus", {}) if hasattr(orchestrator.config, "get") else {}
        state = ConsensusState(ConsensusSettings.from_config(section or {}))
        orchestrator._consensus_state = state
    return state
