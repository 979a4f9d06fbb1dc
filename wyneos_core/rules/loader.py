"""Loading a ruleset file: YAML, schema, expressions, templates, engine checks.

``load_ruleset(path)`` returns a ``Ruleset`` whose every condition is already parsed
into the IR, or raises ``RulesetError`` (a ``LocatedError``) naming the file, line,
column and field at fault. A ruleset that loads never fails half-way through a tick:
everything that can be wrong with it is found here.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from wyneos_core.action_params import param_problem
from wyneos_core.model import ActionType, Severity
from wyneos_core.rules.flapguard import PREDICTIVE_FOR
from wyneos_core.rules.predictive import NEVER_ALONE, alone_reason, uses_prediction
from wyneos_core.rules.expr import ExprError, parse
from wyneos_core.rules.ir import Expr, Not
from wyneos_core.rules.state import Duration, parse_duration
from wyneos_core.rules.template import Template, TemplateError
from wyneos_core.yamlio import Located, LocatedError, load_yaml

__all__ = [
    "MAX_RULES",
    "STAGES",
    "ActionSpec",
    "Rule",
    "Ruleset",
    "RulesetError",
    "action_type_problem",
    "load_ruleset",
    "ruleset_schema",
    "start_durable",
]

STAGES = ("governance", "healing", "enforcement")


class RulesetError(LocatedError):
    """A ruleset refused at load time; names file, line, column and field."""


@cache
def ruleset_schema() -> dict[str, Any]:
    text = (resources.files("wyneos_core") / "schemas" / "ruleset.schema.json").read_text()
    return json.loads(text)


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """One entry of ``then:``: an action type and its params (string params may be templates)."""

    type: str
    params: tuple[tuple[str, Any], ...]  # (name, value or Template)


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule."""

    id: str
    description: str
    source: str  # the condition as written
    condition: Expr  # require (governance) or when (action rules)
    active: Expr  # what makes the rule pending/firing: Not(require) or when
    for_: Duration
    keep_firing_for: Duration
    severity: Severity
    labels: Mapping[str, str]
    message: Template
    actions: tuple[ActionSpec, ...] = ()
    line: int | None = None
    #: enforce | warn | audit (None: the ruleset's; see wyneos_core.enforcement.modes)
    mode: str | None = None
    #: the condition calls a prediction helper: warn by default (wyneos_core.rules.predictive)
    predictive: bool = False


@dataclass(frozen=True, slots=True)
class Ruleset:
    """One ruleset file, compiled."""

    name: str
    stage: str
    engine: str
    rules: tuple[Rule, ...]
    file: str
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    #: enforce | warn | audit (None: the config's); ``reload_mode`` when hot reload brought it
    mode: str | None = None
    reload_mode: str | None = None

    def conditions(self) -> list[Expr]:
        return [r.active for r in self.rules]


def _expr_position(located: Located, text: str | None, path: tuple, expr: str,
                   exc: ExprError) -> tuple[int | None, int | None, str]:
    """File line/column of an expression error, and a suffix when the column is unknown."""
    line, col = located.position(path)
    if line is None:
        return None, None, ""
    where = f" (column {exc.column} of the expression)" if exc.column else ""
    if text is None:
        return line, col, where
    lines = text.splitlines()
    block = _block_scalar_position(lines, line - 1, exc)
    if block is not None:
        return block[0], block[1], ""
    first = expr.splitlines()[0].strip() if expr.strip() else ""
    for candidate in range(line - 1, min(line + 2, len(lines))):
        start = lines[candidate].find(first, (col or 1) - 1 if candidate == line - 1 else 0) if first else -1
        if start >= 0:
            if exc.line in (None, 1):
                lead = len(expr.splitlines()[0]) - len(expr.splitlines()[0].lstrip())
                column = start + 1 + ((exc.column or 1) - 1 - lead)
                return candidate + 1, max(column, 1), ""
            return candidate + exc.line, None, where  # type: ignore[operator]
    return line, col, where


#: rules one ruleset file may hold (the schema says the same)
MAX_RULES = 1000
#: prefix of action types a ruleset may propose beyond the builtin ones
CUSTOM_ACTION_PREFIX = "x_"


def action_type_problem(action_type: str) -> str | None:
    """Why ``action_type`` cannot be used in ``then:``, or None.

    The builtin types (``wyneos_core.model.ActionType``) and custom types starting with
    ``x_`` (carried and routed like any action, no builtin effect) are accepted; anything
    else is most likely a typo.
    """
    known = [t.value for t in ActionType]
    if action_type in known or action_type.startswith(CUSTOM_ACTION_PREFIX):
        return None
    close = difflib.get_close_matches(action_type, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (f"unknown action type {action_type!r}: {hint}known types are {', '.join(known)}; a custom type "
            f"must start with {CUSTOM_ACTION_PREFIX!r}")


_BLOCK_KEY = re.compile(r"^(\s*)(?:-\s+)?[\w.-]+\s*:\s*([>|])[-+0-9]*\s*(?:#.*)?$")


def _block_scalar_position(lines: list[str], key_index: int, exc: ExprError) -> tuple[int, int] | None:
    """File (line, column) of an expression error inside a ``>`` or ``|`` block scalar
    whose key is on line ``key_index`` (0-based); None when it is not one."""
    if not 0 <= key_index < len(lines):
        return None
    m = _BLOCK_KEY.match(lines[key_index])
    if m is None:
        return None
    rows: list[tuple[int, str]] = []  # (0-based file line, text without the block's indentation)
    indent: int | None = None
    for i in range(key_index + 1, len(lines)):
        raw = lines[i]
        if not raw.strip():
            rows.append((i, ""))
            continue
        ind = len(raw) - len(raw.lstrip())
        if indent is None:
            if ind <= len(m.group(1)):
                break
            indent = ind
        elif ind < indent:
            break
        rows.append((i, raw[indent:]))
    if indent is None or not rows:
        return None
    if exc.line is None or exc.column is None:
        first = next(r for r in rows if r[1])
        return first[0] + 1, indent + 1
    if m.group(2) == "|":  # literal: the expression's lines are the block's lines
        if exc.line - 1 < len(rows):
            return rows[exc.line - 1][0] + 1, indent + exc.column
        return None
    # folded: non-empty lines joined by one space (blank lines become line breaks)
    offset, text_line = exc.column - 1, 1
    for i, row in rows:
        if not row:
            text_line += 1
            continue
        if text_line < exc.line:
            continue
        if offset <= len(row):
            return i + 1, indent + offset + 1
        offset -= len(row) + 1
    return None


def load_ruleset(path: str | Path, *, text: str | None = None, default_engine: str = "native",
                 engine: str | None = None, errors: list[RulesetError] | None = None) -> Ruleset:
    """Load, validate and compile one ruleset file (or ``text`` named ``path``).

    :param default_engine: the engine of a ruleset that does not name one.
    :param engine: run on this engine whatever the file says (``wyneos check --engine``).
    :param errors: when given, a mistake in one rule does not stop the others from being
        checked: every rule's first mistake is appended here (the first is also raised).

    :raises RulesetError: for any mistake, with file, line, column and field.
    """
    name = str(path)
    try:
        located = load_yaml(name, text=text, surrogates=True)  # each reported with the rule holding it
        if text is None:
            text = located.text or ""
    except LocatedError as exc:
        raise RulesetError(exc.reason, file=exc.file, line=exc.line, column=exc.column, field=exc.field) from None
    except OSError as exc:
        raise RulesetError(f"cannot read file: {exc.strerror or exc}", file=name) from None
    data = located.data
    if not isinstance(data, dict):
        raise RulesetError("a ruleset file must be a mapping with ruleset, stage and rules", file=name, line=1)
    rules_list = data.get("rules")
    if isinstance(rules_list, list) and len(rules_list) > MAX_RULES:
        raise RulesetError(f"{len(rules_list)} rules, more than {MAX_RULES} in one ruleset; split it into several "
                           "files", file=name, line=located.position(("rules",))[0], field="rules")
    from wyneos_core.diagnostics import schema_errors, sort_errors, unicode_errors

    def as_ruleset_error(e: LocatedError) -> RulesetError:
        return RulesetError(e.reason + _schema_hint(data, e), file=e.file, line=e.line, column=e.column,
                            field=e.field)

    # every schema mistake at once; a rule with one is not compiled, the others still are
    bad_text = unicode_errors(located, skip=lambda path: len(path) == 3 and path[2] in ("require", "when"))
    unreadable = {e.field for e in bad_text}  # said once: not valid text (never echoed), not also its pattern
    found = [as_ruleset_error(e) for e in sort_errors(
        [e for e in schema_errors(located, ruleset_schema()) if e.field not in unreadable] + bad_text)]
    if found:
        if errors is None:
            raise found[0]
        errors.extend(found)
    broken_rules = {e_path[1] for e_path in (_path_of(e.field) for e in found)
                    if len(e_path) >= 2 and e_path[0] == "rules" and isinstance(e_path[1], int)}
    top_broken = any(len(_path_of(e.field)) <= 1 and _path_of(e.field)[:1] in ((), ("stage",), ("rules",))
                     for e in found)

    def fail(where: tuple, reason: str) -> RulesetError:
        return as_ruleset_error(located.error(where, reason))

    if top_broken:  # no stage or no list of rules: the rules cannot be compiled
        assert errors is not None
        raise errors[0]
    stage = data["stage"]
    engine = engine or data.get("engine", default_engine)
    if not isinstance(engine, str) or engine not in ("native", "durable"):
        engine = default_engine
    rs_name = data.get("ruleset") if isinstance(data.get("ruleset"), str) else "?"
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    def compile_rule(index: int, spec: dict[str, Any]) -> Rule:
        at = ("rules", index)
        rule_id = spec["id"]
        if rule_id in seen:
            raise fail(at + ("id",), f"duplicate rule id {rule_id!r} (first defined at rules[{seen[rule_id]}])")
        seen[rule_id] = index
        key = "require" if stage == "governance" else "when"
        other = "when" if stage == "governance" else "require"
        if other in spec:
            hint = ("governance rules say what a compliant node looks like with 'require'"
                    if stage == "governance" else f"{stage} rules say when to act with 'when' and 'then'")
            raise fail(at + (other,), f"'{other}' is not allowed in a {stage} ruleset: {hint}")
        if key not in spec:
            raise fail(at, f"'{key}' is required in a {stage} ruleset")
        if stage == "governance" and "then" in spec:
            raise fail(at + ("then",), "governance rules have no actions; enforcement rulesets act on them "
                                       "(violated(\"rule-id\"))")
        if stage != "governance" and "then" not in spec:
            raise fail(at, f"'then' (the actions) is required in a {stage} ruleset")
        source = spec[key]
        try:
            condition = parse(source, stage, strict=True)
        except ExprError as exc:
            line, column, suffix = _expr_position(located, text, at + (key,), source, exc)
            raise RulesetError(exc.reason + suffix, file=name, line=line, column=column,
                               field=f"rules[{index}].{key}") from None
        durations = {}
        for dkey in ("for", "keep_firing_for"):
            default = PREDICTIVE_FOR if dkey == "for" and uses_prediction(condition) else 0
            try:
                durations[dkey] = parse_duration(spec.get(dkey, default))
            except ValueError as exc:
                raise fail(at + (dkey,), str(exc)) from None
        static = {"rule.id": rule_id, "rule.description": spec["description"],
                  "rule.severity": spec.get("severity", "warning"), "ruleset": rs_name}
        try:
            message = Template.parse(spec.get("message", spec["description"]), stage, static)
        except TemplateError as exc:
            raise fail(at + ("message",), str(exc)) from None
        actions = []
        for a_index, entry in enumerate(spec.get("then", [])):
            (a_type, params), = entry.items()
            problem = action_type_problem(a_type)
            if problem is not None:
                raise fail(at + ("then", a_index, a_type), problem)
            compiled = []
            for p_name, p_value in sorted((params or {}).items()):
                if isinstance(p_value, str) and "{" in p_value:
                    try:
                        p_value = Template.parse(p_value, stage, static)
                    except TemplateError as exc:
                        raise fail(at + ("then", a_index, a_type, p_name), str(exc)) from None
                problem = param_problem(a_type, p_name, p_value, templated=isinstance(p_value, Template))
                if problem is not None:
                    raise fail(at + ("then", a_index, a_type, p_name), f"{a_type} param {p_name} {problem}")
                compiled.append((p_name, p_value))
            actions.append(ActionSpec(a_type, tuple(compiled)))
        alone = alone_reason(condition, [a.type for a in actions])
        if alone is not None:
            index_of = next(i for i, a in enumerate(actions) if a.type in NEVER_ALONE)
            raise fail(at + ("then", index_of, actions[index_of].type), alone)
        active = Not(condition) if stage == "governance" else condition
        line, _ = located.position(at)
        return Rule(
            rule_id, spec["description"], source, condition, active, durations["for"],
            durations["keep_firing_for"], Severity(spec.get("severity", "warning")),
            dict(spec.get("labels", {})), message, tuple(actions), line, spec.get("mode"),
            uses_prediction(condition),
        )

    for index, spec in enumerate(data["rules"]):
        if index in broken_rules:
            if isinstance(spec, dict) and isinstance(spec.get("id"), str):
                seen.setdefault(spec["id"], index)
            continue
        try:
            rules.append(compile_rule(index, spec))
        except RulesetError as exc:
            if errors is None:
                raise
            errors.append(exc)
    labels = data.get("labels", {})
    ruleset = Ruleset(rs_name, stage, engine, tuple(rules), name, data.get("description", ""),
                      dict(labels) if isinstance(labels, dict) else {}, data.get("mode"), data.get("reload_mode"))
    if engine == "durable":
        from wyneos_core.rules.durable_translate import MAX_DURABLE_RULES, DurableUnsupported, translate

        if len(rules) > MAX_DURABLE_RULES:
            raise fail(("rules",), f"{len(rules)} rules, more than the {MAX_DURABLE_RULES} the durable engine "
                                   "takes in one ruleset; split the file or use engine: native")
        for index, rule in enumerate(rules):
            try:
                translate([rule.active])
            except DurableUnsupported as exc:
                reason = str(exc).split(": ", 1)[-1]
                exc2 = fail(("rules", index, "require" if stage == "governance" else "when"),
                            f"the durable engine cannot run this condition: {reason} (use engine: native)")
                if errors is None:
                    raise exc2 from None
                errors.append(exc2)
    if errors:
        errors[:] = sort_errors(errors)
        raise errors[0]
    return ruleset


def _schema_hint(data: Any, e: LocatedError) -> str:
    """What to write instead, for the schema mistakes people make most in a rule: a
    condition YAML read as a number or boolean, and actions not written as a list of
    one-key mappings (``then: isolate``)."""
    path = _path_of(e.field)
    if len(path) < 3 or path[0] != "rules" or not isinstance(path[1], int):
        return ""
    try:
        value = data["rules"][path[1]][path[2]]
    except (KeyError, IndexError, TypeError):
        return ""
    key = path[2]
    if key in ("require", "when") and len(path) == 3 and e.reason.startswith("expected a string, got "):
        if isinstance(value, bool):
            return f" (YAML read the expression as a boolean: quote it, e.g. {key}: \"{value}\")"
        if isinstance(value, (int, float)):
            return (f" (a condition compares a field with a value, e.g. {key}: node.load < {value}; YAML read "
                    "the bare number as a number)")
        return f" (write the condition as one string, e.g. {key}: node.load < 0.9)"
    if key != "then":
        return ""
    if len(path) == 3 and isinstance(value, str):
        return f" (each action is a mapping from its type to its params: then: [{{{value}: {{}}}}], or one item per line: - {value}: {{}})"
    if len(path) == 4 and isinstance(value, list) and isinstance(path[3], int) and path[3] < len(value) \
            and isinstance(value[path[3]], str):
        name = value[path[3]]
        return f" (write the action as a mapping from its type to its params: - {name}: {{}})"
    return ""


def _path_of(field: str | None) -> tuple[Any, ...]:
    """``"rules[2].when"`` -> ``("rules", 2, "when")``."""
    if not field:
        return ()
    out: list[Any] = []
    for part in field.replace("[", ".[").split("."):
        if not part:
            continue
        if part.startswith("[") and part.endswith("]") and part[1:-1].isdigit():
            out.append(int(part[1:-1]))
        else:
            out.append(part)
    return tuple(out)


def start_durable(ruleset: Ruleset, timeout: float = 60.0) -> Any:
    """A ``DurableEngine`` for ``ruleset`` with its rules already loaded into a worker.

    This is the load-time check that durable-rules itself accepts the rules (its C
    extension has fixed limits that only building the rules reveals).

    :raises RulesetError: naming the file and the line of the rule durable-rules refused.
    """
    from wyneos_core.rules.durable import DurableEngine, DurableEngineError, DurableRefused

    engine = DurableEngine(ruleset.conditions(), timeout=timeout)
    try:
        engine.start()
    except DurableRefused as exc:
        engine.close()
        key = "require" if ruleset.stage == "governance" else "when"
        reason = str(exc).split(": ", 1)[-1] if exc.rule is not None else str(exc)
        if exc.rule is not None and 0 <= exc.rule < len(ruleset.rules):
            rule = ruleset.rules[exc.rule]
            raise RulesetError(f"the durable engine cannot run this condition: {reason} (use engine: native)",
                               file=ruleset.file, line=rule.line, field=f"rules[{exc.rule}].{key}") from None
        raise RulesetError(f"the durable engine cannot run this ruleset: {reason} (use engine: native)",
                           file=ruleset.file, line=1, field="engine") from None
    except DurableEngineError as exc:
        engine.close()
        raise RulesetError(f"the durable-rules worker failed while loading the rules: {exc}",
                           file=ruleset.file, line=1, field="engine") from None
    return engine
