"""Admission control: a new node starts in ``probation``; rules decide what comes next.

A node that enrols, or registers itself by heartbeat, starts at tier ``probation`` with
its admission *pending*. Every tick, until it is admitted, the admission rules are
evaluated for it in order; the first rule whose ``when`` holds decides:

* ``refuse``: the node is refused (capped at ``untrusted``; feature gating and rules
  see it as such); it is evaluated again next tick, so a cause that clears lets it in;
* ``hold``: the node stays in probation (capped at ``probation``);

and when no rule matches, the node is admitted once it has spent
``trust.admission.probation_ticks`` ticks in probation (until then it is held, with that
reason). Once admitted, a node's tier follows its score (see ``docs/trust.md``).
Nodes declared in the config and nodes the operator attests are admitted at once.

The rules file (``trust.admission.rules``)::

    admission:
      - id: refuse-revoked
        description: a revoked licence never gets in
        when: licence.reason in ["revoked", "invalid_signature"]
        decision: refuse
      - id: hold-until-online
        when: node.status != "online"
        decision: hold

``when`` is a condition in the ruleset expression language (``docs/rulesets.md``),
``node.trust`` and ``trust_at_least`` included; a mistake is refused at load time with
the file, line and field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from wyneos_core.model import LicenceResult, Node
from wyneos_core.rules.expr import ExprError, parse
from wyneos_core.rules.interp import NO_LICENCE, EvalEnv
from wyneos_core.rules.ir import Call, Ref, walk
from wyneos_core.rules.native import compile_test
from wyneos_core.rules.vector import Columns, NoColumn, compile_mask
from wyneos_core.yamlio import LocatedError, load_yaml

__all__ = ["AdmissionRule", "AdmissionRules", "DEFAULT_RULES", "Decisions", "load_admission"]

DECISIONS: Final = ("refuse", "hold")
_ID_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")
MAX_RULES: Final = 200

#: the builtin rules, used when ``trust.admission.rules`` is not set
DEFAULT_RULES: Final = """\
admission:
  - id: refuse-bad-licence
    description: a licence that is revoked, forged or another customer's never gets in
    when: licence.reason in ["revoked", "invalid_signature", "customer_mismatch"]
    decision: refuse
  - id: hold-until-online
    description: a node is admitted only while it heartbeats
    when: node.status != "online"
    decision: hold
  - id: hold-low-trust
    description: a node whose score sits below the trusted threshold stays in probation
    when: node.trust < 0.6
    decision: hold
"""


@dataclass(frozen=True, slots=True)
class AdmissionRule:
    id: str
    description: str
    decision: str
    when: str
    test: Any  # compiled condition: (node, licence, env) -> bool
    #: the condition over the node table's columns (``rules.vector``), None when they cannot
    mask: Any = None
    #: the condition reads only the licence result's fields (not its node id): its truth is
    #: one per distinct licence result
    licence_only: bool = False


def _licence_only(expr: Any) -> bool:
    return all(type(e) is not Call and (type(e) is not Ref or (e.root == "licence" and e.field != "node_id"))
               for e in walk(expr))


class Decisions(Mapping[str, tuple[str, str, str]]):
    """What ``AdmissionRules.decide_columns`` decided, by group: each distinct decision
    with the positions (in the node list) of the nodes it was made for. The trust engine
    applies a group with one scatter (``TrustEngine.assign``); it reads as the mapping
    node id -> (decision, rule id, reason) that ``decide`` returns, made when read."""

    __slots__ = ("ids", "groups", "_dict")

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = ids
        #: ((decision, rule id, reason), positions in ``ids``), in the order decided
        self.groups: list[tuple[tuple[str, str, str], np.ndarray]] = []
        self._dict: dict[str, tuple[str, str, str]] | None = None

    def add(self, decided: tuple[str, str, str], positions: np.ndarray) -> None:
        if positions.size:
            self.groups.append((decided, positions))
            self._dict = None

    def _mapping(self) -> dict[str, tuple[str, str, str]]:
        if self._dict is None:
            ids = self.ids
            self._dict = {ids[p]: decided for decided, positions in self.groups for p in positions.tolist()}
        return self._dict

    def __getitem__(self, node_id: str) -> tuple[str, str, str]:
        return self._mapping()[node_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return sum(int(positions.size) for _, positions in self.groups)


class AdmissionRules:
    """Loaded admission rules; ``decide`` gives each pending node's decision."""

    def __init__(self, rules: Sequence[AdmissionRule], probation_ticks: int, source: str,
                 reads_cluster: bool = False) -> None:
        self.rules = list(rules)
        self.probation_ticks = probation_ticks
        self.source = source
        #: some rule reads ``cluster.*`` (the step then computes the cluster summary)
        self.reads_cluster = reads_cluster

    def decide(self, nodes: Sequence[Node], licences: Mapping[str, LicenceResult], env: EvalEnv,
               ticks_in: Mapping[str, int]) -> dict[str, tuple[str, str, str]]:
        """Node id -> (``admit``/``hold``/``refuse``, rule id, reason) for each node given."""
        out: dict[str, tuple[str, str, str]] = {}
        for node in nodes:
            lic = licences.get(node.id, NO_LICENCE)
            for rule in self.rules:
                try:
                    fired = rule.test(node, lic, env)
                except Exception:  # noqa: BLE001 - a rule never fails the tick; treated as not firing
                    fired = False
                if fired:
                    out[node.id] = (rule.decision, rule.id, rule.description or f"{rule.when} holds")
                    break
            else:
                spent = ticks_in.get(node.id, 0)
                if spent < self.probation_ticks:
                    left = self.probation_ticks - spent
                    out[node.id] = ("hold", "probation_ticks",
                                    f"in probation for {left} more tick{'s' if left != 1 else ''}")
                else:
                    out[node.id] = ("admit", "", "no admission rule held it back")
        return out


    def decide_columns(self, nodes: Any, positions: np.ndarray, probe: Callable[[np.ndarray], list[Node]],
                       licences: Any, columns: Columns, env: EvalEnv, ticks_in: np.ndarray
                       ) -> Decisions:
        """``decide`` for the nodes at ``positions`` of the table's node list ``nodes``: a
        rule the columns can answer is one mask over them (``columns``: the table's, with
        this tick's trust and tier), a rule that reads only the licence is evaluated once
        per distinct licence result (the licence step's columns), any other rule node by
        node on ``probe(positions)`` (detached nodes with this tick's trust and tier), each
        only over the nodes no earlier rule decided. Same decisions as ``decide``, by group
        (no entry per node)."""
        undecided = np.ones(len(positions), dtype=bool)
        out = Decisions(nodes.ids())
        results = getattr(licences, "results", None)
        by_licence = results is not None and len(results.slots) == len(nodes.slots) \
            and np.array_equal(results.slots, nodes.slots)
        for rule in self.rules:
            at = np.flatnonzero(undecided)
            if not at.size:
                break
            fired = None
            if rule.mask is not None:
                try:
                    fired = np.asarray(rule.mask(columns, env), dtype=bool)[at]
                except NoColumn:  # a column these columns lack (the licences): as below
                    fired = None
                except Exception:  # noqa: BLE001 - as a closure that raises: not firing
                    fired = np.zeros(at.size, dtype=bool)
            if fired is not None:
                pass
            elif rule.licence_only and by_licence:
                codes = results.codes[positions[at]]
                distinct, inverse = np.unique(codes, return_inverse=True)
                truth = np.zeros(distinct.size, dtype=bool)
                for k, code in enumerate(distinct.tolist()):
                    example = results[int(positions[at][np.argmax(codes == code)])]
                    try:
                        truth[k] = bool(rule.test(None, example, env))
                    except Exception:  # noqa: BLE001
                        truth[k] = False
                fired = truth[inverse.reshape(-1)]
            else:
                fired = np.zeros(at.size, dtype=bool)
                for k, node in enumerate(probe(positions[at])):
                    try:
                        fired[k] = bool(rule.test(node, licences.get(node.id, NO_LICENCE), env))
                    except Exception:  # noqa: BLE001
                        pass
            hit = at[fired]
            out.add((rule.decision, rule.id, rule.description or f"{rule.when} holds"), positions[hit])
            undecided[hit] = False
        rest = np.flatnonzero(undecided)
        spent = ticks_in[rest]
        out.add(("admit", "", "no admission rule held it back"), positions[rest[spent >= self.probation_ticks]])
        held = rest[spent < self.probation_ticks]
        left = self.probation_ticks - ticks_in[held]
        for value in np.unique(left).tolist():  # one decision per number of ticks left
            decided = ("hold", "probation_ticks", f"in probation for {value} more tick{'s' if value != 1 else ''}")
            out.add(decided, positions[held[left == value]])
        return out


def load_admission(path: str | Path | None, probation_ticks: int) -> AdmissionRules:
    """The rules of ``path`` (the builtin ``DEFAULT_RULES`` when None).

    :raises LocatedError: naming the file, line and field of a mistake.
    """
    if path is None:
        located = load_yaml("<builtin admission rules>", text=DEFAULT_RULES)
    else:
        located = load_yaml(path)
    data = located.data
    if not isinstance(data, dict) or set(data) != {"admission"}:
        raise located.error((), "an admission rules file is a mapping with one key, 'admission'")
    items = data["admission"]
    if not isinstance(items, list):
        raise located.error(("admission",), "expected a list of rules")
    if len(items) > MAX_RULES:
        raise located.error(("admission",), f"more than {MAX_RULES} rules")
    rules: list[AdmissionRule] = []
    seen: set[str] = set()
    reads_cluster = False
    for i, item in enumerate(items):
        at = ("admission", i)
        if not isinstance(item, dict):
            raise located.error(at, "expected a mapping with id, when and decision")
        unknown = set(item) - {"id", "description", "when", "decision"}
        if unknown:
            raise located.error(at + (sorted(unknown)[0],), f"unknown field (fields: id, description, when, decision)")
        for key in ("id", "when", "decision"):
            if key not in item:
                raise located.error(at, f"missing field {key!r}")
        rid = item["id"]
        if not isinstance(rid, str) or not rid or len(rid) > 64 or not set(rid) <= _ID_CHARS:
            raise located.error(at + ("id",), "expected an id of lower-case letters, digits, '-', '_' or '.'")
        if rid in seen:
            raise located.error(at + ("id",), f"duplicate rule id {rid!r}")
        seen.add(rid)
        decision = item["decision"]
        if decision not in DECISIONS:
            raise located.error(at + ("decision",), f"expected one of {', '.join(DECISIONS)}, got {decision!r}")
        description = item.get("description", "")
        if not isinstance(description, str) or len(description) > 500:
            raise located.error(at + ("description",), "expected a string of at most 500 characters")
        when = item["when"]
        try:
            expr = parse(when, "governance")
        except ExprError as exc:
            err = located.error(at + ("when",), exc.reason)
            if exc.line is not None and err.line is not None:
                err = LocatedError(exc.reason, file=err.file, line=err.line + exc.line - 1,
                                   column=err.column, field=err.field)
            raise err from None
        rules.append(AdmissionRule(rid, description, decision, when, compile_test(expr), compile_mask(expr),
                                   _licence_only(expr)))
        reads_cluster = reads_cluster or any(type(e) is Ref and e.root == "cluster" for e in walk(expr))
    return AdmissionRules(rules, probation_ticks, located.file, reads_cluster)
