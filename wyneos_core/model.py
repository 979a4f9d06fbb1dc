"""The data that flows through a tick.

Every object here is a small slotted dataclass with a ``to_dict`` that returns plain
JSON types. The shapes are documented in ``docs/architecture.md`` and held stable by
``tests/test_core_tick.py`` against ``schemas/tick-report.schema.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from json.encoder import encode_basestring_ascii as _json_text  # json.dumps of a str
from typing import Any, Final

from wyneos_core.licence_result import LICENCE_REASON_TEXT, LicenceResult, licence_problems, licence_summary
from wyneos_core.transitions import status_ids

__all__ = [
    "ORIGIN",
    "Action",
    "ActionType",
    "action_ids",
    "Delivery",
    "Heartbeat",
    "LICENCE_REASON_TEXT",
    "LicenceResult",
    "licence_problems",
    "licence_summary",
    "Node",
    "NodeStatus",
    "Observation",
    "PluginError",
    "RuleResult",
    "RuleResults",
    "Severity",
    "TickReport",
]

#: Name of the orchestrator's own vertex in the mesh: every route starts here.
ORIGIN: Final = "orchestrator"

_ACTION_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class NodeStatus(str, Enum):
    """Heartbeat-derived status of a node, ordered from healthy to gone."""

    ONLINE = "online"
    STALE = "stale"
    OFFLINE = "offline"
    UNKNOWN = "unknown"  # registered, never heard from, still inside its grace period

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return self.value


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


class ActionType(str, Enum):
    """The actions the builtin plugins know how to carry out.

    Plugins may propose other types (any ``[a-z_]+`` string); the core routes them like
    any other action but only the types below have builtin effects.
    """

    ISOLATE = "isolate"
    REINSTATE = "reinstate"
    REDUCE_LOAD = "reduce_load"
    REDISTRIBUTE = "redistribute"
    RECOVER = "recover"
    QUARANTINE = "quarantine"
    DEGRADE = "degrade"
    GATE_FEATURE = "gate_feature"
    REVOKE = "revoke"


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, 6)


@dataclass(slots=True)
class Node:
    """One participant of the cluster, as the registry knows it."""

    id: str
    status: NodeStatus = NodeStatus.UNKNOWN
    last_seen: float | None = None
    load: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    licence_ref: str | None = None
    fingerprint: str | None = None
    registered_at: float = 0.0
    isolated: bool = False
    #: When the node last reported a timestamp well before one it had reported already.
    last_rollback: float | None = None
    #: Combined trust score 0..1 and tier, set by the trust step (docs/trust.md); None before it ran.
    trust: float | None = None
    trust_tier: str | None = None

    def snapshot(self) -> Node:
        """A copy frozen at this moment (metadata is replaced, never mutated, by the registry)."""
        return Node(self.id, self.status, self.last_seen, self.load, self.metadata, self.licence_ref,
                    self.fingerprint, self.registered_at, self.isolated, self.last_rollback,
                    self.trust, self.trust_tier)

    def heartbeat_age(self, now: float) -> float | None:
        return None if self.last_seen is None else now - self.last_seen

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status.value,
            "last_seen": self.last_seen,
            "load": _finite(self.load),
            "metadata": self.metadata,
            "licence_ref": self.licence_ref,
            "fingerprint": self.fingerprint,
            "isolated": self.isolated,
            "trust": None if self.trust is None else round(self.trust, 4),
            "trust_tier": self.trust_tier,
        }




_VERSION = re.compile(r"^\s*[vV]?(\d{1,9}(?:\.\d{1,9}){0,7})")


def parse_version(value: Any) -> tuple[int, ...] | None:
    """``"v2.4.1-rc1"`` -> ``(2, 4, 1)``: the leading dot-separated numbers; None if none."""
    if type(value) is not str:
        return None
    m = _VERSION.match(value)
    if m is None:
        return None
    parts = [int(p) for p in m.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


@dataclass(slots=True)
class Observation:
    """What one node (a witness) saw of a mesh neighbour when it last probed it.

    Observations travel with the observer's heartbeat (``Heartbeat.observations``) and
    feed the consensus that severe actions wait for (``wyneos_core.consensus``).

    :param observer: the node that probed (must be the heartbeat's sender).
    :param subject: the neighbour it probed.
    :param reachable: whether the neighbour answered.
    :param rtt_ms: round-trip time of the probe in milliseconds (None when unanswered).
    :param last_seq: the subject's last heartbeat sequence number the observer saw.
    :param signed: whether the observer's node-key signature over it was verified on intake.
    """

    observer: str
    subject: str
    reachable: bool
    rtt_ms: float | None = None
    last_seq: int | None = None
    signed: bool = False

    def problem(self) -> str | None:
        """What makes this observation unusable, or None."""
        if type(self.observer) is not str or type(self.subject) is not str:
            return "observer and subject must be strings"
        if not 0 < len(self.subject) <= 256:
            return "subject must be 1 to 256 characters"
        if type(self.reachable) is not bool or type(self.signed) is not bool:
            return "reachable and signed must be True or False"
        rtt = self.rtt_ms
        if rtt is not None and (isinstance(rtt, bool) or not isinstance(rtt, (int, float))
                                or not 0 <= rtt <= 600_000):  # also catches nan
            return f"rtt_ms must be a number of milliseconds in [0, 600000] or None, got {rtt!r:.40}"
        seq = self.last_seq
        if seq is not None and (type(seq) is not int or not 0 <= seq < 2**63):
            return f"last_seq must be a whole number >= 0 or None, got {seq!r:.40}"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"observer": self.observer, "subject": self.subject, "reachable": self.reachable,
                "rtt_ms": _finite(self.rtt_ms), "last_seq": self.last_seq, "signed": self.signed}


@dataclass(slots=True, frozen=True)
class Heartbeat:
    """A node reporting in. ``timestamp`` is the node's own clock, epoch seconds."""

    node_id: str
    timestamp: float
    load: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None
    licence_ref: str | None = None
    #: what the node saw of its mesh neighbours since its last heartbeat (witness reports)
    observations: tuple[Observation, ...] = ()
    #: numeric telemetry, name -> value (the names and bounds of ``telemetry.metrics``)
    metrics: Mapping[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "node_id": self.node_id,
            "timestamp": self.timestamp,
            "load": self.load,
            "metadata": self.metadata,
            "fingerprint": self.fingerprint,
            "licence_ref": self.licence_ref,
        }
        if self.observations:
            out["observations"] = [o.to_dict() for o in self.observations]
        if self.metrics:
            out["metrics"] = dict(self.metrics)
        return out


@dataclass(slots=True)
class Action:
    """Something the orchestrator decided should happen to a node (or to all: ``"*"``).

    ``id`` is stable: the same type, target, origin and params give the same id in every
    tick, which is how an action stays "in force" across ticks instead of being issued
    anew.
    """

    type: str
    target: str
    reason: str
    origin: str
    severity: Severity = Severity.WARNING
    params: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.type, ActionType):
            self.type = self.type.value
        if not isinstance(self.severity, Severity):
            self.severity = Severity(self.severity)
        if not self.id:
            self.id = action_id(self.type, self.target, self.origin, self.params)

    def problem(self) -> str | None:
        """What makes this action unusable (a plugin built it wrong), or None."""
        if type(self.type) is not str or not _ACTION_TYPE.match(self.type):
            return f"type must be a lower-case word, got {self.type!r:.40}"
        for name in ("target", "reason", "origin", "id"):
            if type(getattr(self, name)) is not str:
                return f"{name} must be a string, got {getattr(self, name)!r:.40}"
        if not isinstance(self.params, dict):
            return f"params must be a mapping, got {type(self.params).__name__}"
        try:
            json.dumps(self.params, allow_nan=False)
        except (TypeError, ValueError) as exc:
            return f"params must be JSON data ({exc})"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "target": self.target,
            "reason": self.reason,
            "origin": self.origin,
            "severity": self.severity.value,
            "params": self.params,
        }


def action_id(type_: str, target: str, origin: str, params: dict[str, Any]) -> str:
    raw = json.dumps([type_, target, origin, params], sort_keys=True, default=str)
    return hashlib.blake2b(raw.encode(), digest_size=8).hexdigest()


def action_ids(type_: str, targets: Iterable[str], origin: str, params: dict[str, Any]) -> list[str]:
    """``action_id(type_, target, origin, params)`` for each of ``targets``: the parts they
    share encoded once, each target as ``json.dumps`` encodes a string (the same text, so
    the same ids), for a step that proposes one kind of action to many nodes."""
    if isinstance(type_, Enum):
        type_ = type_.value
    head = "[" + json.dumps(type_) + ", "
    tail = ", " + json.dumps(origin) + ", " + json.dumps(params, sort_keys=True, default=str) + "]"
    blake2b = hashlib.blake2b
    return [blake2b((head + _json_text(t) + tail).encode(), digest_size=8).hexdigest() for t in targets]


@dataclass(slots=True)
class RuleResult:
    """One rule evaluated against one node."""

    rule_id: str
    node_id: str
    passed: bool
    message: str = ""
    severity: Severity = Severity.WARNING
    source: str = ""  # ruleset name or plugin name
    state: str | None = None  # inactive | pending | firing | resolved, for rules with state
    error: str | None = None  # set when the rule could not be evaluated (counts as failed)

    def problem(self) -> str | None:
        """What makes this result unusable (a plugin built it wrong), or None."""
        if type(self.rule_id) is not str or type(self.node_id) is not str:
            return f"rule_id and node_id must be strings, got {self.rule_id!r:.40}, {self.node_id!r:.40}"
        if type(self.passed) is not bool:
            return f"passed must be True or False, got {self.passed!r:.40}"
        if not isinstance(self.severity, Severity):
            return f"severity must be a Severity, got {self.severity!r:.40}"
        if type(self.message) is not str or not isinstance(self.source, str):
            return "message and source must be strings"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "node_id": self.node_id,
            "passed": self.passed,
            "message": self.message,
            "severity": self.severity.value,
            "source": self.source,
            "state": self.state,
            "error": self.error,
        }


class RuleResults(list):  # type: ignore[type-arg]
    """Rule results that list only those worth a look and count the rest.

    A list of the ``RuleResult`` that failed (or whose rule state changed), with
    ``passed_counts``: per rule id, how many results passed and are not listed. A
    governance step over a large fleet returns this instead of one object per passing
    (rule, node) pair; the tick's rule summary adds the counts. Truthy when it lists or
    counts anything.
    """

    __slots__ = ("passed_counts",)

    def __init__(self, items: Any = (), passed_counts: dict[str, int] | None = None) -> None:
        super().__init__(items)
        self.passed_counts: dict[str, int] = dict(passed_counts or {})

    def count_passed(self, counts: dict[str, int]) -> None:
        for rule_id, count in counts.items():
            self.passed_counts[rule_id] = self.passed_counts.get(rule_id, 0) + count

    def __bool__(self) -> bool:
        return len(self) > 0 or any(self.passed_counts.values())


@dataclass(slots=True)
class Delivery:
    """What became of one action for one target node."""

    action_id: str
    target: str
    delivered: bool
    path: list[str] = field(default_factory=list)
    reason: str = ""  # why undelivered: partition | isolated | offline | refused | unknown_node

    def problem(self) -> str | None:
        """What makes this delivery record unusable (a plugin built it wrong), or None."""
        if type(self.action_id) is not str or type(self.target) is not str or type(self.reason) is not str:
            return "action_id, target and reason must be strings"
        if type(self.delivered) is not bool:
            return f"delivered must be True or False, got {self.delivered!r:.40}"
        if not isinstance(self.path, list) or not all(type(v) is str for v in self.path):
            return "path must be a list of node ids"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "action_id": self.action_id,
            "target": self.target,
            "delivered": self.delivered,
            "path": self.path,
            "reason": self.reason,
        }


@dataclass(slots=True)
class PluginError:
    """A plugin that raised (or overran its budget) during a tick."""

    plugin: str
    hook: str
    error: str
    #: exception | budget | invalid_result | invalid_ruleset | engine | revocation_list
    #: (each explained in schemas/tick-report.schema.json)
    kind: str = "exception"

    def to_dict(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "hook": self.hook, "error": self.error, "kind": self.kind}


@dataclass(slots=True)
class TickReport:
    """The snapshot of one tick; ``to_dict`` is its JSON form.

    ``results`` holds the rule results that did not pass (and those whose rule state
    changed); ``rule_summary`` counts passed and failed results per rule, so a report of
    a 100k-node cluster stays readable.
    """

    tick: int
    started_at: float
    duration_ms: float = 0.0
    timings_ms: dict[str, float] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    heartbeats_accepted: int = 0
    heartbeats_rejected: list[dict[str, Any]] = field(default_factory=list)
    licences: dict[str, LicenceResult] = field(default_factory=dict)
    results: list[RuleResult] = field(default_factory=list)
    rule_summary: dict[str, dict[str, int]] = field(default_factory=dict)
    #: a list, or a ``transitions.Transitions`` (the tick's: status changes held as columns)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    proposed: list[Action] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    lifecycle: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    partitions: list[list[str]] = field(default_factory=list)
    errors: list[PluginError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missed_ticks: int = 0
    #: witness consensus before severe actions (filled by the decide step; see wyneos_core.consensus)
    consensus: dict[str, Any] = field(default_factory=dict)
    #: the trust step's summary (tiers, changes, admission, peer iteration); see docs/trust.md
    trust: dict[str, Any] = field(default_factory=dict)
    #: the drift step's counts per state (docs/drift.md); empty when nothing is declared
    drift: dict[str, Any] = field(default_factory=dict)
    #: graduated enforcement: modes, holds, overrides, exceptions, shadow (see docs/enforcement.md)
    enforcement: dict[str, Any] = field(default_factory=dict)
    #: counts computed once per list of nodes and of licences (several outputs ask for them)
    counted: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def status_counts(self) -> dict[str, int]:
        """Nodes per status, plus ``isolated`` (counted once for a list of nodes)."""
        key = (id(self.nodes), len(self.nodes))
        cached = self.counted.get("status")
        counter = getattr(self.nodes, "status_counts", None)  # nodes copied from the columns count there
        if counter is not None:
            return counter()
        if cached is None or cached[0] != key:
            by_status = Counter(map(_STATUS, self.nodes))
            counts = {s.value: by_status.get(s, 0) for s in NodeStatus}
            counts["isolated"] = sum(map(_ISOLATED, self.nodes))
            cached = self.counted["status"] = (key, counts)
        return dict(cached[1])

    def licence_counts(self) -> dict[str, int]:
        """``licence_summary`` of this tick's licence results (counted once)."""
        key = (id(self.licences), len(self.licences))
        cached = self.counted.get("licences")
        if cached is None or cached[0] != key:
            summary = getattr(self.licences, "summary", None)  # licence columns count without objects
            cached = self.counted["licences"] = (key, summary() if summary is not None else
                                                 licence_summary(self.licences.values()))
        return dict(cached[1])

    def licence_problems(self) -> list[LicenceResult]:
        """The licence results that are invalid or in grace (from the columns when they are)."""
        return licence_problems(self.licences)

    def to_dict(self, max_nodes: int | None = None) -> dict[str, Any]:
        """The JSON form. With ``max_nodes``, a cluster larger than that lists only the
        nodes worth a look (not online, isolated, or changed status this tick) and counts
        the others in ``nodes_omitted``."""
        nodes = self.nodes
        omitted = 0
        if max_nodes is not None and len(nodes) > max_nodes:
            changed = set(status_ids(self.transitions))
            online = NodeStatus.ONLINE
            pick = getattr(nodes, "worth_a_look", None)  # nodes copied from the columns pick there
            nodes = pick(changed) if pick is not None else \
                [n for n in nodes if n.status is not online or n.isolated or n.id in changed]
            omitted = len(self.nodes) - len(nodes)
        return {
            "schema": "wyneos.tick-report/1",
            "tick": self.tick,
            "started_at": self.started_at,
            "duration_ms": round(self.duration_ms, 3),
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "status_counts": self.status_counts(),
            "nodes": [n.to_dict() for n in nodes],
            "nodes_omitted": omitted,
            "heartbeats": {
                "accepted": self.heartbeats_accepted,
                "rejected": self.heartbeats_rejected,
            },
            "licences": [r.to_dict() for r in self.licence_problems()],
            "licence_summary": self.licence_counts(),
            "results": [r.to_dict() for r in self.results],
            "rule_summary": self.rule_summary,
            "transitions": list(self.transitions),
            "proposed": [a.to_dict() for a in self.proposed],
            "actions": [a.to_dict() for a in self.actions],
            "lifecycle": self.lifecycle,
            "deliveries": [d.to_dict() for d in self.deliveries],
            "partitions": self.partitions,
            "errors": [e.to_dict() for e in self.errors],
            "notes": self.notes,
            "missed_ticks": self.missed_ticks,
            "consensus": self.consensus,
            "trust": self.trust,
            "drift": self.drift,
            "enforcement": self.enforcement,
        }


_STATUS = operator.attrgetter("status")
_ISOLATED = operator.attrgetter("isolated")
