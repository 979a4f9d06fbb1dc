"""The intermediate form of rule conditions, and the value semantics every engine shares.

A condition written in YAML (``node.load < 0.9``) is parsed once, at load time, by
``wyneos_core.rules.expr`` into a small tree of the frozen dataclasses below. Engines
never see the source text: the native engine compiles the tree into closures, the
durable engine translates it into durable-rules conditions, and the reference
interpreter (``wyneos_core.rules.interp``) walks it for ``wyneos explain``.

Value semantics (the same for every engine):

* A value that is not there (a metadata key that is absent, a ``null`` value, a node
  that never reported its load, ``heartbeat_age`` of a node never heard from) is
  ``MISSING``. Every comparison with ``MISSING`` is false (``==`` and ``!=`` alike),
  ``in`` / ``not in`` with it are false, arithmetic with it gives ``MISSING``, and it is
  falsy. ``x is missing`` / ``x is not missing`` (or ``has(x)``) test for it.
* Values have a kind: boolean, number, string, or other (lists, mappings). Values of
  different kinds are never equal and never ordered: ``"3" == 3`` and ``True == 1`` are
  false, ``"a" < 3`` is false, and none of them raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Union

__all__ = [
    "MISSING",
    "Arith",
    "BoolOp",
    "Call",
    "Cmp",
    "Const",
    "Expr",
    "In",
    "IsMissing",
    "ListLit",
    "Neg",
    "Not",
    "Ref",
    "kind_of",
    "walk",
]


class _Missing:
    """The one ``MISSING`` value: absent metadata, null, or a value that cannot be had."""

    __slots__ = ()
    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "missing"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()


def kind_of(value: Any) -> str | None:
    """``"b"`` boolean, ``"n"`` number, ``"s"`` string, ``"o"`` other, None for missing."""
    t = type(value)
    if t is bool:
        return "b"
    if t is int or t is float:
        return "n"
    if t is str:
        return "s"
    if value is MISSING or value is None:
        return None
    if isinstance(value, bool):
        return "b"
    if isinstance(value, (int, float)):
        return "n"
    if isinstance(value, str):
        return "s"
    return "o"


@dataclass(frozen=True, slots=True)
class Const:
    """A literal: number, string or boolean."""

    value: Any


@dataclass(frozen=True, slots=True)
class ListLit:
    """A literal list (or tuple) of constants, used on the right of ``in``."""

    items: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Ref:
    """A field of ``node``, ``licence`` or ``cluster``; ``path`` descends into metadata."""

    root: str
    field: str
    path: tuple[str | int, ...] = ()

    def text(self) -> str:
        out = f"{self.root}.{self.field}"
        for step in self.path:
            out += f"[{step}]" if isinstance(step, int) else (f".{step}" if step.isidentifier() else f"[{step!r}]")
        return out


@dataclass(frozen=True, slots=True)
class Cmp:
    """``left op right`` with op one of ``== != < <= > >=``."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class BoolOp:
    """``and`` / ``or`` over two or more operands (truthiness, result is a boolean)."""

    op: str
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr


@dataclass(frozen=True, slots=True)
class Arith:
    """``left op right`` with op one of ``+ - * / // %`` on numbers only."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Neg:
    operand: Expr


@dataclass(frozen=True, slots=True)
class In:
    """``item in container`` (``negated``: ``not in``)."""

    item: Expr
    container: Expr
    negated: bool = False


@dataclass(frozen=True, slots=True)
class IsMissing:
    """``operand is missing`` (``negated``: ``is not missing`` / ``has(operand)``)."""

    operand: Expr
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Call:
    """A call of a named helper (``wyneos_core.rules.helpers``)."""

    name: str
    args: tuple[Expr, ...]


Expr = Union[Const, ListLit, Ref, Cmp, BoolOp, Not, Arith, Neg, In, IsMissing, Call]


def walk(expr: Expr):  # noqa: ANN201 - generator of Expr
    """Every node of ``expr``, parents before children."""
    stack = [expr]
    while stack:
        e = stack.pop()
        yield e
        if isinstance(e, (Cmp, Arith)):
            stack.extend((e.right, e.left))
        elif isinstance(e, BoolOp):
            stack.extend(reversed(e.items))
        elif isinstance(e, (Not, Neg, IsMissing)):
            stack.append(e.operand)
        elif isinstance(e, In):
            stack.extend((e.container, e.item))
        elif isinstance(e, Call):
            stack.extend(reversed(e.args))
