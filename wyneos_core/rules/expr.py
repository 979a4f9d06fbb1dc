"""The rule expression language: Python syntax, parsed under a whitelist into the IR.

``parse(text, stage)`` turns ``node.load < 0.9 and node.metadata.region == "eu"`` into
the intermediate form of ``wyneos_core.rules.ir``, or raises ``ExprError`` naming the
line and column of the expression at fault and a plain reason. Nothing is executed:
the text goes through ``ast.parse`` and only the node types listed here are accepted.

Accepted: literals (numbers, strings, ``True``/``False``, lists or tuples of them on the
right of ``in``), the names ``node``, ``licence``, ``cluster`` and their documented
fields, attribute or key access into metadata, comparisons (chains too),
``and``/``or``/``not``, ``+ - * / // %`` and unary minus, ``in`` / ``not in``,
``is missing`` / ``is not missing``, and calls of the helpers in
``wyneos_core.rules.helpers``. Refused: every other name and call, dunder or private
access, ``**`` and bit operations, lambdas, comprehensions, conditional expressions,
f-strings, walrus, starred and keyword arguments, ``None`` (use ``missing``), text
longer than ``MAX_LENGTH``, more than ``MAX_NODES`` syntax nodes, nesting deeper than
``MAX_DEPTH``.
"""

from __future__ import annotations

import ast
import math
from typing import Any, Final

from wyneos_core.rules.helpers import DURATION_VALUED, HELPERS, duration_seconds
from wyneos_core.rules.ir import (
    MISSING,
    Arith,
    BoolOp,
    Call,
    Cmp,
    Const,
    Expr,
    In,
    IsMissing,
    ListLit,
    Neg,
    Not,
    Ref,
)

__all__ = ["ExprError", "parse", "FIELDS", "MAX_LENGTH", "MAX_NODES", "MAX_DEPTH", "arith"]

MAX_LENGTH: Final = 2000
MAX_NODES: Final = 400
MAX_DEPTH: Final = 40
MAX_STRING: Final = 1000
MAX_LIST: Final = 200
MAX_INT: Final = 2**53
#: arithmetic results beyond this magnitude are MISSING (no unbounded integers)
MAX_MAGNITUDE: Final = float(2**63)

#: root name -> field -> kind ("n" number, "s" string, "b" boolean, "o" nested data)
FIELDS: Final[dict[str, dict[str, str]]] = {
    "node": {
        "id": "s", "status": "s", "last_seen": "n", "load": "n", "metadata": "o",
        "licence_ref": "s", "fingerprint": "s", "isolated": "b", "trust": "n", "trust_tier": "s",
        "metrics": "o", "drift": "o", "registered_at": "n", "last_rollback": "n",
    },
    "licence": {
        "valid": "b", "reason": "s", "detail": "s", "licence_id": "s", "customer": "s", "product": "s",
        "tier": "s", "features": "o", "expires": "n", "in_grace": "b", "source": "s",
    },
    "cluster": {
        "size": "n", "online": "n", "offline": "n", "stale": "n", "unknown": "n", "isolated": "n",
        "mean_load": "n", "now": "n",
    },
}

#: the values of ``node.status``
STATUSES: Final = ("online", "stale", "offline", "unknown")

_CMP = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_ARITH = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%"}
_REFUSED_NODES = {
    ast.Lambda: "lambda expressions are not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "generator expressions are not allowed",
    ast.IfExp: "conditional expressions (x if c else y) are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.NamedExpr: "assignment expressions (:=) are not allowed",
    ast.Starred: "starred expressions are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
    ast.Dict: "mapping literals are not allowed",
    ast.Set: "set literals are not allowed",
    ast.Slice: "slices are not allowed",
}
_REFUSED_OPS = {
    ast.Pow: "the ** operator is not allowed (unbounded arithmetic)",
    ast.LShift: "bit shifts are not allowed", ast.RShift: "bit shifts are not allowed",
    ast.BitAnd: "bit operations are not allowed", ast.BitOr: "bit operations are not allowed",
    ast.BitXor: "bit operations are not allowed", ast.MatMult: "the @ operator is not allowed",
    ast.Invert: "bit operations are not allowed",
}


class ExprError(ValueError):
    """An expression refused at load time; ``line``/``column`` are 1-based, in the expression."""

    def __init__(self, reason: str, line: int | None = None, column: int | None = None) -> None:
        self.reason = reason
        self.line = line
        self.column = column
        super().__init__(reason if line is None else f"{reason} (expression line {line}, column {column})")


def arith(op: str, a: Any, b: Any) -> Any:
    """``a op b`` on numbers; MISSING for anything else, division by zero or overflow."""
    ta, tb = type(a), type(b)
    if ta not in (int, float) or tb not in (int, float):
        return MISSING
    try:
        if op == "+":
            r = a + b
        elif op == "-":
            r = a - b
        elif op == "*":
            r = a * b
        elif op == "/":
            r = a / b
        elif op == "//":
            r = a // b
        else:
            r = a % b
    except (ZeroDivisionError, OverflowError):
        return MISSING
    if not (-MAX_MAGNITUDE <= r <= MAX_MAGNITUDE):  # also false for NaN
        return MISSING
    return r


def parse(text: str, stage: str = "governance", *, strict: bool = False) -> Expr:
    """Parse one rule condition into the IR; raise ``ExprError`` for anything refused.

    ``strict`` (rulesets as they load, ``wyneos check``, ``wyneos validate``) also refuses
    a comparison that can never be true: a field and a literal of different kinds
    (``node.load < "0.9"``), or ``node.status`` against a value it never has."""
    if not isinstance(text, str):
        raise ExprError(f"an expression must be a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ExprError(f"expression is {len(text)} characters long, more than {MAX_LENGTH}")
    if not text.strip():
        raise ExprError("empty expression")
    if "\x00" in text:
        raise ExprError("expression contains a NUL character")
    bad = next((i for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff"), None)
    if bad is not None:  # a lone surrogate (from a "\ud800" escape): not text, and never echoed
        line = text.count("\n", 0, bad) + 1
        column = bad - (text.rfind("\n", 0, bad) + 1) + 1
        raise ExprError(f"not valid Unicode text: a lone surrogate U+{ord(text[bad]):04X}", line, column)
    flat = text.replace("\r", " ").replace("\n", " ").replace("\t", " ")
    lead = len(flat) - len(flat.lstrip())
    try:
        tree = ast.parse(flat.strip(), mode="eval")
    except SyntaxError as exc:
        reason, offset = _syntax_problem(flat.strip(), exc)
        line, col = _position(text, flat, offset, byte=False, lead=lead)
        raise ExprError(f"syntax error: {reason}", line, col) from None
    except (RecursionError, MemoryError):
        raise ExprError("expression is nested too deeply") from None
    _check_size(tree, text, flat, lead)
    return _Converter(text, flat, lead, stage, strict).convert(tree.body)


#: operators of other languages, and the word a rule writes instead
_FOREIGN_OPERATORS = (("&&", "and"), ("||", "or"))
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"


def _syntax_problem(stripped: str, exc: SyntaxError) -> tuple[str, int | None]:
    """What is wrong with an expression Python cannot parse, said for the mistakes people
    make most, and where (an offset in ``stripped``; Python's own place otherwise)."""
    import re

    for foreign, word in _FOREIGN_OPERATORS:
        at = _outside_strings(stripped, foreign)
        if at is not None:
            return f"{foreign!r} is not an operator here: use {word!r}", at
    m = _outside_strings_re(stripped, re.compile(rf"(?<![\w.]){_NUMBER}\s*%(?!\s*(?!(?:and|or|not|in|is)\b)[\w(.\[\"'])"))
    if m is not None:
        number = m.group(0).rstrip("% \t")
        return f"percent is not an operator: {float(number) / 100:g} (for {number}%)", m.start()
    m = _outside_strings_re(stripped, re.compile(r"!(?!=)"))
    if m is not None:
        return "'!' is not an operator here: use 'not'", m.start()
    m = re.search(r"(?:^|(?<=[\s)]))(and|or|not)\s*$", stripped)
    if m is not None:
        return (f"the expression ends with {m.group(1)!r}: add the condition that follows it, or remove "
                f"{m.group(1)!r}"), m.start(1)
    m = re.match(r"\s*(and|or)\b", stripped)
    if m is not None:
        return f"the expression starts with {m.group(1)!r}: add the condition before it, or remove it", m.start(1)
    offset = exc.offset - 1 if exc.offset else None
    if _outside_strings_re(stripped, re.compile(r"(?<![=!<>])=(?!=)")) is not None:
        return f"{exc.msg}; did you mean '==' (comparison) instead of '='?", offset
    return exc.msg, offset


def _blank_strings(text: str) -> str:
    """``text`` with the inside of its string literals blanked (same length), so an
    operator is not looked for inside a string."""
    import re

    return re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", lambda m: m.group(0)[0] + " " * (len(m.group(0)) - 2)
                  + m.group(0)[-1], text)


def _outside_strings(text: str, needle: str) -> int | None:
    at = _blank_strings(text).find(needle)
    return None if at < 0 else at


def _outside_strings_re(text: str, pattern: Any) -> Any:
    return pattern.search(_blank_strings(text))


def _hint(name: str, candidates: Any) -> str:
    """"; did you mean ..." for a mistyped name (true/false/none are Python's True/False/None)."""
    from wyneos_core.diagnostics import suggest

    literal = {"true": "True", "false": "False", "null": "None", "none": "None", "nil": "None"}.get(name.lower())
    if literal is not None and name != literal:
        return f"; did you mean {literal!r}?"
    return suggest(name, candidates)


def _position(text: str, flat: str, offset: int | None, byte: bool = True, lead: int = 0) -> tuple[int | None, int | None]:
    """Map an offset in the flattened, stripped text back to (line, column) in ``text``."""
    if offset is None:
        return None, None
    stripped = flat.strip()
    if byte:
        offset = len(stripped.encode()[:offset].decode(errors="ignore"))
    offset += lead
    before = text[:offset]
    line = before.count("\n") + 1
    column = offset - (before.rfind("\n") + 1) + 1
    return line, column


def _check_size(tree: ast.AST, text: str, flat: str, lead: int) -> None:
    count = 0
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ExprError(f"expression has more than {MAX_NODES} parts; split the rule")
        if depth > MAX_DEPTH:
            line, col = _position(text, flat, getattr(node, "col_offset", None), lead=lead)
            raise ExprError(f"expression is nested more than {MAX_DEPTH} levels deep", line, col)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            line, col = _position(text, flat, node.value.end_col_offset, lead=lead)
            raise ExprError(f"access to {node.attr!r} is not allowed (names starting with '_')", line,
                            col + 1 if col else col)
        for child in ast.iter_child_nodes(node):
            stack.append((child, depth + 1))


class _Converter:
    def __init__(self, text: str, flat: str, lead: int, stage: str, strict: bool = False) -> None:
        self.text = text
        self.flat = flat
        self.lead = lead
        self.stage = stage
        self.strict = strict

    def error(self, node: ast.AST, reason: str) -> ExprError:
        line, col = _position(self.text, self.flat, getattr(node, "col_offset", None), lead=self.lead)
        return ExprError(reason, line, col)

    # -- dispatch -----------------------------------------------------------------------------

    def convert(self, node: ast.AST) -> Expr:
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            reason = _REFUSED_NODES.get(type(node)) or f"{_describe(node)} is not allowed in a rule expression"
            raise self.error(node, reason)
        return method(node)

    def _Constant(self, node: ast.Constant) -> Expr:
        return Const(self.literal(node))

    def literal(self, node: ast.AST) -> Any:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            value = self.literal(node.operand)
            if type(value) in (int, float):
                return -value
            raise self.error(node, "unary minus needs a number")
        if not isinstance(node, ast.Constant):
            raise self.error(node, "a list on the right of 'in' may hold only literals")
        value = node.value
        if value is None:
            raise self.error(node, "None is not a value here: test for absent data with 'is missing'")
        if isinstance(value, bool) or isinstance(value, str):
            if isinstance(value, str) and len(value) > MAX_STRING:
                raise self.error(node, f"string literal longer than {MAX_STRING} characters")
            return value
        if isinstance(value, int):
            if abs(value) > MAX_INT:
                raise self.error(node, f"integer literal beyond +/-2**53")
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise self.error(node, "number literal is not finite")
            return value
        raise self.error(node, f"{type(value).__name__} literals are not allowed")

    def _Name(self, node: ast.Name) -> Expr:
        if node.id in FIELDS:
            raise self.error(node, f"{node.id!r} on its own is not a value; use a field, e.g. "
                                   f"{node.id}.{next(iter(FIELDS[node.id]))}")
        if node.id == "missing":
            raise self.error(node, "'missing' is only allowed as 'x is missing' or 'x is not missing'")
        if node.id in HELPERS:
            raise self.error(node, f"helper {node.id!r} must be called")
        known = ", ".join([*FIELDS, "missing"])
        hint = _hint(node.id, [*FIELDS, "missing", *HELPERS])
        if hint:
            raise self.error(node, f"unknown name {node.id!r}{hint}")
        raise self.error(node, f"unknown name {node.id!r} (known names: {known}, and the helpers "
                               f"{', '.join(HELPERS)})")

    def _Attribute(self, node: ast.Attribute) -> Expr:
        return self.ref(node)

    def _Subscript(self, node: ast.Subscript) -> Expr:
        return self.ref(node)

    def ref(self, node: ast.AST) -> Ref:
        steps: list[str | int] = []
        cur = node
        while True:
            if isinstance(cur, ast.Attribute):
                if cur.attr.startswith("_"):
                    raise self.error(cur, f"access to {cur.attr!r} is not allowed (names starting with '_')")
                steps.append(cur.attr)
                cur = cur.value
            elif isinstance(cur, ast.Subscript):
                key = cur.slice
                if (isinstance(key, ast.UnaryOp) and isinstance(key.op, ast.USub) and isinstance(key.operand, ast.Constant)
                        and type(key.operand.value) is int):  # tags[-1]: from the end
                    key = ast.Constant(-key.operand.value)
                if not isinstance(key, ast.Constant) or type(key.value) not in (str, int):
                    raise self.error(cur, "a key must be a string or integer literal, e.g. metadata[\"zone\"]")
                if isinstance(key.value, str) and (key.value.startswith("__") or len(key.value) > 200):
                    raise self.error(cur, f"key {key.value[:40]!r} is not allowed")
                steps.append(key.value)
                cur = cur.value
            elif isinstance(cur, ast.Name):
                break
            else:
                raise self.error(cur, f"{_describe(cur)} has no fields; fields belong to node, licence or cluster")
        root = cur.id
        if root not in FIELDS:
            if root in ("missing",) or root in HELPERS:
                raise self.error(cur, f"{root!r} has no fields")
            raise self.error(cur, f"unknown name {root!r}{_hint(root, FIELDS) or ''} "
                                  f"(known names: {', '.join(FIELDS)})")
        steps.reverse()
        first = steps[0]
        if not isinstance(first, str) or first not in FIELDS[root]:
            raise self.error(node, f"{root} has no field {str(first)[:60]!r}{_hint(str(first), FIELDS[root])} "
                                   f"(fields: {', '.join(FIELDS[root])})")
        rest = tuple(steps[1:])
        if rest and FIELDS[root][first] != "o":
            raise self.error(node, f"{root}.{first} is a plain value; it has no fields or keys")
        if root == "node" and first == "metrics" and (len(rest) != 1 or not isinstance(rest[0], str)):
            raise self.error(node, "name one telemetry metric: node.metrics.NAME (e.g. node.metrics.cpu)")
        return Ref(root, first, rest)

    def _BoolOp(self, node: ast.BoolOp) -> Expr:
        op = "and" if isinstance(node.op, ast.And) else "or"
        return BoolOp(op, tuple(self.convert(v) for v in node.values))

    def _UnaryOp(self, node: ast.UnaryOp) -> Expr:
        if isinstance(node.op, ast.Not):
            return Not(self.convert(node.operand))
        if isinstance(node.op, ast.USub):
            operand = self.convert(node.operand)
            if isinstance(operand, Const):
                if type(operand.value) in (int, float):
                    return Const(-operand.value)
                raise self.error(node, "unary minus needs a number")
            return Neg(operand)
        if isinstance(node.op, ast.UAdd):
            raise self.error(node, "unary plus is not allowed")
        raise self.error(node, _REFUSED_OPS.get(type(node.op), "operator not allowed"))

    def _BinOp(self, node: ast.BinOp) -> Expr:
        op = _ARITH.get(type(node.op))
        if op is None:
            raise self.error(node, _REFUSED_OPS.get(type(node.op), f"operator {type(node.op).__name__} not allowed"))
        left, right = self.convert(node.left), self.convert(node.right)
        for side in (left, right):
            if isinstance(side, Const) and type(side.value) not in (int, float):
                raise self.error(node, f"arithmetic needs numbers, not {type(side.value).__name__} literals")
        if isinstance(left, Const) and isinstance(right, Const):
            value = arith(op, left.value, right.value)
            if value is MISSING:
                raise self.error(node, "constant arithmetic has no value (division by zero or overflow)")
            return Const(value)
        return Arith(op, left, right)

    def _Compare(self, node: ast.Compare) -> Expr:
        parts: list[Expr] = []
        left_node = node.left
        for op, right_node in zip(node.ops, node.comparators):
            parts.append(self.compare(node, op, left_node, right_node))
            left_node = right_node
        return parts[0] if len(parts) == 1 else BoolOp("and", tuple(parts))

    def compare(self, node: ast.Compare, op: ast.cmpop, left_node: ast.AST, right_node: ast.AST) -> Expr:
        if isinstance(op, (ast.Is, ast.IsNot)):
            if not (isinstance(right_node, ast.Name) and right_node.id == "missing"):
                raise self.error(node, "'is' is only allowed as 'is missing' / 'is not missing'; "
                                       "compare values with ==")
            return IsMissing(self.convert(left_node), negated=isinstance(op, ast.IsNot))
        if isinstance(op, (ast.In, ast.NotIn)):
            item = self.convert(left_node)
            if isinstance(right_node, (ast.List, ast.Tuple)):
                if len(right_node.elts) > MAX_LIST:
                    raise self.error(right_node, f"list of more than {MAX_LIST} items")
                container: Expr = ListLit(tuple(self.literal(e) for e in right_node.elts))
            else:
                container = self.convert(right_node)
                if isinstance(container, Const) and type(container.value) is not str:
                    raise self.error(right_node, "'in' needs a list, a string or a field on its right")
            if self.strict and isinstance(container, ListLit):
                for element, value in zip(right_node.elts, container.items):  # type: ignore[union-attr]
                    self.never_true(element, item, value)
            return In(item, container, negated=isinstance(op, ast.NotIn))
        symbol = _CMP[type(op)]
        left, right = self.convert(left_node), self.convert(right_node)
        left, right = self.duration(node, left, right), self.duration(node, right, left)
        if symbol not in ("==", "!=") and any(isinstance(s, Const) and type(s.value) is bool for s in (left, right)):
            raise self.error(node, f"booleans cannot be ordered with {symbol}")
        if self.strict:
            for field_side, const_side, const_node in ((left, right, right_node), (right, left, left_node)):
                if isinstance(const_side, Const):
                    self.never_true(const_node, field_side, const_side.value)
        return Cmp(symbol, left, right)

    def never_true(self, node: ast.AST, side: Expr, value: Any) -> None:
        """Refuse comparing a field with a literal it can never equal or be ordered with."""
        if not isinstance(side, Ref) or side.path:
            return
        kind = FIELDS.get(side.root, {}).get(side.field)
        if kind not in ("n", "s", "b"):
            return
        name = f"{side.root}.{side.field}"
        if (side.root, side.field) == ("node", "status") and type(value) is str and value not in STATUSES:
            raise self.error(node, f"{value[:40]!r} is never a node's status: status is one of "
                                   f"{', '.join(STATUSES)}" + (f"; did you mean {value.lower()!r}?" if value.lower() in STATUSES
                                                 else _hint(value, STATUSES) or ""))
        got = {bool: "b", int: "n", float: "n", str: "s"}.get(type(value))
        if got is None or got == kind:
            return
        kinds = {"n": "a number", "s": "a string", "b": "a boolean (True or False)"}
        fix = ""
        if kind == "n" and got == "s":
            try:
                fix = f": write {float(value):g} without quotes"
            except ValueError:
                fix = ""
        elif kind == "s" and got != "s":
            fix = f": quote it, \"{value}\"" if got == "n" else ""
        raise self.error(node, f"{name} is {kinds[kind]} and {value!r} is {kinds[got]}: they are never equal "
                               f"or ordered, so the comparison is never true{fix}")

    def duration(self, node: ast.AST, side: Expr, other: Expr) -> Expr:
        """A duration string compared with a helper that gives seconds, as seconds."""
        if not (isinstance(side, Const) and type(side.value) is str
                and isinstance(other, Call) and other.name in DURATION_VALUED):
            return side
        seconds = duration_seconds(side.value)
        if seconds is None and other.name == "heartbeat_age":
            return side  # as it always was: a string, unequal to every number
        if seconds is None:
            raise self.error(node, f"{other.name}() gives seconds: compare it with a number or a duration "
                                   f"such as '30s', '15m' or '2h', not {side.value[:40]!r}")
        return Const(seconds)

    def _Call(self, node: ast.Call) -> Expr:
        if not isinstance(node.func, ast.Name):
            raise self.error(node, "only the helper functions may be called (no methods)")
        name = node.func.id
        spec = HELPERS.get(name)
        if spec is None:
            raise self.error(node, f"unknown function {name!r}{_hint(name, HELPERS)} (helpers: {', '.join(HELPERS)})")
        if node.keywords:
            raise self.error(node, f"{name}() takes no keyword arguments")
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.error(arg, "starred arguments are not allowed")
        if len(node.args) != len(spec.args):
            raise self.error(node, f"{name}() takes {len(spec.args)} argument(s), got {len(node.args)}")
        if self.stage not in spec.stages:
            raise self.error(node, f"{name}() is only available in {' and '.join(sorted(spec.stages))} rulesets")
        args: list[Expr] = []
        for kind, arg in zip(spec.args, node.args):
            if kind in ("node", "licence"):
                if not (isinstance(arg, ast.Name) and arg.id == kind):
                    raise self.error(arg, f"{name}() takes {kind!r} itself as this argument, e.g. {name}({kind}"
                                          + (", ...)" if len(spec.args) > 1 else ")"))
                continue
            if kind == "metric":
                ref = self.convert(arg) if isinstance(arg, (ast.Attribute, ast.Subscript)) else None
                if not (isinstance(ref, Ref) and ref.root == "node" and ref.field == "metrics"):
                    raise self.error(arg, f"{name}() takes a telemetry metric here, written node.metrics.NAME")
                args.append(ref)
                continue
            if kind == "const-num":
                value = self.literal(arg) if isinstance(arg, (ast.Constant, ast.UnaryOp)) else None
                if type(value) not in (int, float):
                    raise self.error(arg, f"{name}() needs a number literal here")
                args.append(Const(value))
                continue
            if kind == "duration":
                if not (isinstance(arg, ast.Constant) and type(arg.value) is str):
                    raise self.error(arg, f"{name}() needs a duration string here, e.g. \"1h\"")
                problem = spec.check(arg.value) if spec.check else None
                if problem:
                    raise self.error(arg, f"{name}(): {problem}")
                args.append(Const(self.literal(arg)))
                continue
            if kind == "const-str":
                if not (isinstance(arg, ast.Constant) and type(arg.value) is str):
                    raise self.error(arg, f"{name}() needs a string literal here")
                problem = spec.check(arg.value) if spec.check else None
                if problem:
                    raise self.error(arg, f"{name}(): {problem}")
                args.append(Const(self.literal(arg)))
                continue
            args.append(self.convert(arg))
        if name == "has":
            return IsMissing(args[0], negated=True)
        return Call(name, tuple(args))

    def _List(self, node: ast.List) -> Expr:
        raise self.error(node, "a list is only allowed on the right of 'in'")

    _Tuple = _List


def _describe(node: ast.AST) -> str:
    names = {ast.Call: "a call", ast.Constant: "a literal", ast.BinOp: "an arithmetic result",
             ast.Compare: "a comparison", ast.BoolOp: "a boolean expression", ast.UnaryOp: "a unary operation",
             ast.List: "a list", ast.Tuple: "a tuple"}
    return names.get(type(node), f"a {type(node).__name__} expression")
