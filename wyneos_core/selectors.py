"""Label selectors, as kubectl writes them: ``zone=eu,tier!=trusted,gpu,!draining``.

A selector is a comma-separated list of requirements, all of which must hold:

* ``key=value`` (or ``key==value``): the label is there and equals the value;
* ``key!=value``: the label is absent or differs;
* ``key in (a,b)`` / ``key notin (a,b)``: one of / none of the values;
* ``key``: the label is there; ``!key``: it is not.

Labels are strings; a selector never evaluates anything. ``parse`` refuses a malformed
selector with a message naming the requirement and what is wrong with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Requirement", "Selector", "SelectorError", "flat_labels", "parse"]

#: longest selector read (a query parameter, typed by a person)
MAX_LENGTH = 1000

_KEY = r"[A-Za-z0-9][A-Za-z0-9_.\-/]*"
_VALUE = r"[A-Za-z0-9_.:\-/@+]*"
_SET = re.compile(rf"^({_KEY})\s+(in|notin)\s+\(([^()]*)\)$")
_CMP = re.compile(rf"^({_KEY})\s*(==|!=|=)\s*({_VALUE})$")
_HAS = re.compile(rf"^(!?)\s*({_KEY})$")


class SelectorError(ValueError):
    """A selector that cannot be read."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op == "exists":
            return value is not None
        if self.op == "!exists":
            return value is None
        if self.op in ("=", "in"):
            return value is not None and value in self.values
        return value is None or value not in self.values  # "!=", "notin"

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!exists":
            return "!" + self.key
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(self.values)})"
        return f"{self.key}{self.op}{self.values[0]}"


@dataclass(frozen=True, slots=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse(text: str | None) -> Selector:
    """``text`` as a ``Selector`` (empty or None: one that matches everything).

    :raises SelectorError: naming the requirement that cannot be read.
    """
    if not text or not text.strip():
        return Selector()
    if len(text) > MAX_LENGTH:
        raise SelectorError(f"selector is {len(text)} characters long; at most {MAX_LENGTH}")
    if text.count("(") != text.count(")"):
        raise SelectorError(f"selector {text!r}: unbalanced parentheses")
    out = []
    for raw in _split(text):
        part = raw.strip()
        if not part:
            raise SelectorError(f"selector {text!r}: an empty requirement (two commas, or one at an end)")
        if m := _SET.match(part):
            values = tuple(v.strip() for v in m.group(3).split(","))
            if not all(re.fullmatch(_VALUE, v) and v for v in values):
                raise SelectorError(f"selector requirement {part!r}: write values as (a,b,c)")
            out.append(Requirement(m.group(1), m.group(2), values))
        elif m := _CMP.match(part):
            out.append(Requirement(m.group(1), "=" if m.group(2) == "==" else m.group(2), (m.group(3),)))
        elif m := _HAS.match(part):
            out.append(Requirement(m.group(2), "!exists" if m.group(1) else "exists"))
        else:
            hint = " (labels compare as text: no <, > or quotes)" if re.search(r"[<>\"']", part) else ""
            raise SelectorError(f"selector requirement {part!r} is not KEY=VALUE, KEY!=VALUE, KEY in (A,B), "
                                f"KEY notin (A,B), KEY or !KEY{hint}")
    return Selector(tuple(out))


def flat_labels(row: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The scalar fields of ``row`` (nested mappings as ``a.b``) as label strings:
    booleans ``true``/``false``, None left out."""
    out: dict[str, str] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_labels(value, name + "."))
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            out[name] = str(value)
    return out
