"""Ruleset unit tests written in YAML, run by ``wyneos test`` (in the spirit of ``opa test``).

A test file names the ruleset under test and lists cases. Each case gives nodes and
licences, runs the ruleset for some ticks (rule states carry over, so ``for`` and
``keep_firing_for`` can be tested) and states what must come out::

    ruleset: ../healing.yaml          # a path relative to this file, builtin:NAME, or a mapping
    tests:
      - name: an overloaded node sheds load on its third tick
        nodes:
          - {id: n1, load: 0.97}
        ticks: 3
        expect:
          actions:
            - {type: reduce_load, target: n1, params: {target_load: 0.7}}

A case with ``steps`` runs several inputs one after the other (nodes and licences carry
over from the step before when a step does not give them). See docs/rulesets.md for
every field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wyneos_core.model import Action, LicenceResult, Node, NodeStatus, PluginError, RuleResult
from wyneos_core.rules.interp import EvalEnv, cluster_summary
from wyneos_core.rules.loader import Ruleset, RulesetError, load_ruleset
from wyneos_core.rules.runtime import BUILTIN_PREFIX, RulesetRunner, resolve_paths
from wyneos_core.yamlio import Located, LocatedError, load_yaml

__all__ = ["CaseResult", "TestFileError", "is_test_file", "run_test_file", "TEST_SCHEMA"]

_NODE = {
    "type": "object", "additionalProperties": False, "required": ["id"],
    "properties": {
        "id": {"type": "string"}, "status": {"enum": [s.value for s in NodeStatus]},
        "load": {"type": ["number", "null"]}, "metadata": {"type": "object"},
        "heartbeat_age": {"type": ["number", "null"]}, "last_seen": {"type": ["number", "null"]},
        "isolated": {"type": "boolean"}, "licence_ref": {"type": ["string", "null"]},
        "fingerprint": {"type": ["string", "null"]},
        "trust": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "trust_tier": {"enum": ["untrusted", "probation", "trusted", "attested", None]},
    },
}
_LICENCE = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "valid": {"type": "boolean"}, "reason": {"type": "string"}, "detail": {"type": "string"},
        "licence_id": {"type": ["string", "null"]}, "customer": {"type": ["string", "null"]},
        "product": {"type": ["string", "null"]}, "tier": {"type": ["string", "null"]},
        "features": {"type": "array", "items": {"type": "string"}}, "expires": {"type": ["number", "null"]},
        "in_grace": {"type": "boolean"}, "source": {"type": "string"},
    },
}
_EXPECT = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "results": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["rule", "node"],
            "properties": {"rule": {"type": "string"}, "node": {"type": "string"}, "passed": {"type": "boolean"},
                           "state": {"enum": ["inactive", "pending", "firing", "resolved"]},
                           "message": {"type": "string"}}}},
        "actions": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["type", "target"],
            "properties": {"type": {"type": "string"}, "target": {"type": "string"}, "params": {"type": "object"},
                           "reason": {"type": "string"}}}},
    },
}
_STEP_PROPS = {
    "nodes": {"type": "array", "items": _NODE},
    "licences": {"type": "object", "additionalProperties": _LICENCE},
    "violated": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
    "ticks": {"type": "integer", "minimum": 1, "maximum": 1000},
    "expect": _EXPECT,
}
TEST_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["ruleset", "tests"],
    "properties": {
        "ruleset": {"type": ["string", "object"]},
        "engine": {"enum": ["native", "durable"]},
        "interval": {"type": "number", "exclusiveMinimum": 0},
        "tests": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "interval": {"type": "number", "exclusiveMinimum": 0},
                "steps": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "properties": _STEP_PROPS}},
                **_STEP_PROPS,
            },
        }},
    },
}


class TestFileError(LocatedError):
    """A ruleset test file that cannot be run; names file, line and field."""

    __test__ = False  # not a pytest class


@dataclass(slots=True)
class CaseResult:
    """The outcome of one test case: each failure says what went wrong, and ``places`` the
    ``file:line:column`` of the expectation it broke (the case's own place when it is not
    one expectation's), in the same order."""

    __test__ = False

    name: str
    passed: bool
    failures: list[str] = field(default_factory=list)
    file: str = ""
    line: int | None = None
    places: list[str] = field(default_factory=list)


def is_test_file(located: Located) -> bool:
    return isinstance(located.data, dict) and "tests" in located.data


def _load_ruleset(spec: Any, test_file: Path, engine: str | None, errors: list | None = None) -> Ruleset:
    if isinstance(spec, dict):
        text = yaml.safe_dump(spec, sort_keys=False)
        return load_ruleset(f"{test_file}#ruleset", text=text, engine=engine, errors=errors)
    if spec.startswith(BUILTIN_PREFIX):
        return load_ruleset(resolve_paths([spec])[0], engine=engine, errors=errors)
    path = Path(spec)
    if not path.is_absolute():
        path = test_file.parent / path
    return load_ruleset(path, engine=engine, errors=errors)


def _node(spec: dict[str, Any], now: float) -> Node:
    last_seen = spec.get("last_seen")
    if "heartbeat_age" in spec:
        age = spec["heartbeat_age"]
        last_seen = None if age is None else now - age
    status = spec.get("status")
    if status is None:
        status = "online" if last_seen is not None or "heartbeat_age" not in spec else "unknown"
    return Node(spec["id"], NodeStatus(status), last_seen=last_seen, load=spec.get("load"),
                metadata=dict(spec.get("metadata", {})), licence_ref=spec.get("licence_ref"),
                fingerprint=spec.get("fingerprint"), isolated=bool(spec.get("isolated", False)),
                trust=spec.get("trust"), trust_tier=spec.get("trust_tier"))


def _licence(node_id: str, spec: dict[str, Any]) -> LicenceResult:
    valid = spec.get("valid", spec.get("reason", "ok") == "ok")
    return LicenceResult(node_id, valid, spec.get("reason", "ok" if valid else "invalid"), spec.get("detail", ""),
                         spec.get("licence_id"), spec.get("customer"), spec.get("product"), spec.get("tier"),
                         tuple(spec.get("features", ())), spec.get("expires"), bool(spec.get("in_grace", False)),
                         spec.get("source", "test"))


def _check(expect: dict[str, Any], results: list[RuleResult], actions: list[Action], step: str,
           at: tuple = (), where: Any = None) -> list[tuple[str, tuple]]:
    """The failures of one expectation block: (message, path of the expectation broken)."""
    failures: list[tuple[str, tuple]] = []
    by_key = {(r.rule_id, r.node_id): r for r in results}
    for index, want in enumerate(expect.get("results", [])):
        here = at + ("expect", "results", index)
        got = by_key.get((want["rule"], want["node"]))
        if got is None and getattr(results, "passed_counts", {}).get(want["rule"]):
            # a RuleResults lists what failed or has a state: an unlisted node passed, inactive
            got = RuleResult(want["rule"], want["node"], True, "", state="inactive")
        if got is None:
            failures.append((f"{step}no result for rule {want['rule']!r} on node {want['node']!r}", here))
            continue
        for key in ("passed", "state"):
            if key in want and getattr(got, key) != want[key]:
                failures.append((f"{step}rule {want['rule']} on {want['node']}: {key} is {getattr(got, key)!r}, "
                                 f"expected {want[key]!r}", here + (key,)))
        if "message" in want and want["message"] not in got.message:
            failures.append((f"{step}rule {want['rule']} on {want['node']}: message {got.message!r} does not "
                             f"contain {want['message']!r}", here + ("message",)))
    if "actions" in expect:
        remaining = list(actions)
        for index, want in enumerate(expect["actions"]):
            match = next((a for a in remaining if a.type == want["type"] and a.target == want["target"]
                          and all(a.params.get(k) == v for k, v in want.get("params", {}).items())
                          and want.get("reason", "") in a.reason), None)
            if match is None:
                failures.append((f"{step}expected action {want['type']} on {want['target']}"
                                 + (f" with params {want['params']}" if want.get("params") else "")
                                 + " was not proposed", at + ("expect", "actions", index)))
            else:
                remaining.remove(match)
        for extra in remaining:
            failures.append((f"{step}unexpected action {extra.type} on {extra.target} ({extra.reason})",
                             at + ("expect", "actions")))
    return failures


def _missing_ruleset(spec: Any, test_file: Path) -> str | None:
    """Why the ruleset file a test file names cannot be found, or None."""
    from wyneos_core.diagnostics import suggest

    if not isinstance(spec, str) or not spec or spec.startswith(BUILTIN_PREFIX):
        return None
    path = Path(spec)
    where = path if path.is_absolute() else test_file.parent / path
    if where.is_file():
        return None
    near = sorted(p.name for p in where.parent.glob("*.y*ml") if p.is_file()) if where.parent.is_dir() else []
    return (f"no ruleset file {spec!r} (looked for {where}; a path is relative to the test file){suggest(where.name, near)}"
            if near else f"no ruleset file {spec!r} (looked for {where}; a path is relative to the test file)")


def find_ruleset(spec: Any, test_file: Path) -> str:
    """Where a test file's ``ruleset:`` points (for messages)."""
    if isinstance(spec, dict):
        return f"{test_file}#ruleset"
    if spec.startswith(BUILTIN_PREFIX):
        return str(resolve_paths([spec])[0])
    path = Path(spec)
    return str(path if path.is_absolute() else test_file.parent / path)


def check_test_file(path: str | Path, *, engine: str | None = None) -> tuple[Located, Ruleset | None,
                                                                              list[LocatedError]]:
    """Load a test file and its ruleset and find every mistake in both, without running a case.

    Mistakes: the schema, an ``expect`` that checks nothing, the ruleset's own errors
    (located in the ruleset file), and names the ruleset does not have: rule ids in
    ``expect.results`` and ``violated`` ("did you mean"), action types in ``expect.actions``.
    """
    from wyneos_core.diagnostics import schema_errors, sort_errors, suggest, unicode_errors
    from wyneos_core.rules.loader import action_type_problem

    path = Path(path)
    located = load_yaml(path, surrogates=True)  # unicode_errors below reports each, located
    name = str(path)

    def err(e: LocatedError) -> TestFileError:
        return TestFileError(e.reason, file=e.file, line=e.line, column=e.column, field=e.field)

    if not isinstance(located.data, dict):
        return located, None, [TestFileError("a test file is a mapping with ruleset and tests", file=name, line=1)]
    errors: list[LocatedError] = [err(e) for e in schema_errors(located, TEST_SCHEMA) + unicode_errors(located)]
    data = located.data
    cases = data.get("tests") if isinstance(data.get("tests"), list) else []
    for index, case in enumerate(cases):
        if not isinstance(case, dict):
            continue
        steps = case.get("steps") if isinstance(case.get("steps"), list) else None
        where = [("tests", index, "steps", n) for n in range(len(steps))] if steps else [("tests", index)]
        checks = 0
        for at, step in zip(where, steps or [case]):
            expect = step.get("expect") if isinstance(step, dict) else None
            if expect is None:
                continue  # a set-up step
            if not expect or (isinstance(expect, dict) and expect.get("results") == []):
                errors.append(err(located.error(at + ("expect",), "'expect' checks nothing: give results to check, "
                                                "or actions (an empty actions list means 'no actions')")))
            checks += 1
        if not checks:
            errors.append(err(located.error(("tests", index), "the case has no 'expect' (results or actions): "
                                            "nothing is checked and it could never fail")))
    ruleset = None
    spec = data.get("ruleset")
    missing = _missing_ruleset(spec, path)
    if missing is not None:
        errors.append(err(located.error(("ruleset",), missing)))
    elif isinstance(spec, (str, dict)) and (not isinstance(spec, str) or spec):
        found: list[Any] = []
        try:
            ruleset = _load_ruleset(spec, path, engine or data.get("engine"), found)
        except LocatedError as exc:
            errors.extend(found or [exc])
    if ruleset is not None:
        ids = [r.id for r in ruleset.rules]
        for index, case in enumerate(cases):
            if not isinstance(case, dict):
                continue
            steps = case.get("steps") if isinstance(case.get("steps"), list) else None
            where = [("tests", index, "steps", n) for n in range(len(steps))] if steps else [("tests", index)]
            for at, step in zip(where, steps or [case]):
                if not isinstance(step, dict):
                    continue
                expect = step.get("expect") if isinstance(step.get("expect"), dict) else {}
                for r_index, want in enumerate(expect.get("results") or []):
                    rule = want.get("rule") if isinstance(want, dict) else None
                    if isinstance(rule, str) and rule not in ids:
                        errors.append(err(located.error(
                            at + ("expect", "results", r_index, "rule"),
                            f"no rule {rule!r} in ruleset {ruleset.name!r} ({ruleset.file})" + suggest(rule, ids))))
                for a_index, want in enumerate(expect.get("actions") or []):
                    kind = want.get("type") if isinstance(want, dict) else None
                    problem = action_type_problem(kind) if isinstance(kind, str) else None
                    if problem is not None:
                        errors.append(err(located.error(at + ("expect", "actions", a_index, "type"), problem)))
    return located, ruleset, sort_errors(errors)


def run_test_file(path: str | Path, *, engine: str | None = None) -> tuple[str, list[CaseResult]]:
    """Run every case of one test file; return the ruleset's name and each case's outcome.

    :param engine: run the ruleset on this engine instead of the one it names.
    :raises TestFileError: for a malformed test file (every mistake in ``errors``);
        ``RulesetError`` for a bad ruleset.
    """
    path = Path(path)
    located, ruleset, errors = check_test_file(path, engine=engine)
    if errors:
        first = errors[0]
        raise_as = first if isinstance(first, RulesetError) else TestFileError(
            first.reason, file=first.file, line=first.line, column=first.column, field=first.field)
        raise_as.errors = errors  # type: ignore[attr-defined]
        raise raise_as
    assert ruleset is not None
    data = located.data
    outcomes = []
    runner = RulesetRunner.from_rulesets([ruleset])  # one engine (one durable worker) for every case
    try:
        for index, case in enumerate(data["tests"]):
            runner.reset_states()
            outcome = _run_case(runner, ruleset, case, float(case.get("interval", data.get("interval", 6.0))),
                                located, ("tests", index))
            outcomes.append(outcome)
    finally:
        runner.close()
    return ruleset.name, outcomes


def _run_case(runner: RulesetRunner, ruleset: Ruleset, case: dict[str, Any], interval: float,
              located: Located | None = None, at: tuple = ()) -> CaseResult:
    steps = case.get("steps") or [{k: case[k] for k in ("nodes", "licences", "violated", "ticks", "expect")
                                   if k in case}]
    now = 1_000_000.0
    tick = 0
    node_specs: list[dict] = case.get("nodes", [])
    licence_specs: dict[str, dict] = case.get("licences", {})
    violated_specs: dict[str, list[str]] = case.get("violated", {})
    failures: list[tuple[str, tuple]] = []
    for number, step in enumerate(steps, 1):
        step_at = at + ("steps", number - 1) if case.get("steps") else at
        node_specs = step.get("nodes", node_specs)
        licence_specs = step.get("licences", licence_specs)
        violated_specs = step.get("violated", violated_specs)
        violated = {k: set(v) for k, v in violated_specs.items()}
        results: list[RuleResult] = []
        actions: list[Action] = []
        errors: list[PluginError] = []
        for _ in range(step.get("ticks", 1)):
            tick += 1
            now += interval
            nodes = [_node(spec, now) for spec in node_specs]
            licences = {nid: _licence(nid, spec) for nid, spec in licence_specs.items()}
            env = EvalEnv(now, cluster_summary(nodes, now), violated)
            transitions: list[dict] = []
            if ruleset.stage == "governance":
                results = runner.governance(nodes, licences, tick=tick, env=env, transitions=transitions,
                                            errors=errors)
            else:
                actions = runner.actions(ruleset.stage, nodes, licences, tick=tick, env=env,
                                         transitions=transitions, errors=errors)
        label = f"step {number}: " if len(steps) > 1 else ""
        failures.extend((f"{label}engine error: {e.error}", step_at) for e in errors)
        failures.extend(_check(step.get("expect", {}), results, actions, label, step_at))

    def place(path: tuple) -> str:
        if located is None:
            return ""
        line, column = located.position(path)
        return f"{located.file}:{line}:{column}" if line is not None else located.file

    line = located.position(at)[0] if located is not None else None
    return CaseResult(case["name"], not failures, [f for f, _ in failures], located.file if located else "", line,
                      [place(p) for _, p in failures])
