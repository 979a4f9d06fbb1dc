"""Message templates: ``"load {node.load:.2f} on {node.id}"``, checked at load time.

A placeholder is a field (``node.load``, ``node.metadata.region``, ``licence.reason``,
``cluster.size``), a helper call (``heartbeat_age(node)``), or one of ``rule.id``,
``rule.description``, ``rule.severity``, ``ruleset``; an optional format spec
(``:.2f``, ``:>8``, ``:.0%``) follows. ``{{`` and ``}}`` are literal braces. A missing
value renders as ``missing``; a value the spec does not fit renders unformatted.
Placeholders are not expressions: no operators, no other calls.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any, Final

from wyneos_core.model import LicenceResult, Node
from wyneos_core.rules.expr import ExprError, parse
from wyneos_core.rules.interp import EvalEnv
from wyneos_core.rules.ir import MISSING, Call, Ref
from wyneos_core.rules.native import compile_value

__all__ = ["Template", "TemplateError"]

_SPEC: Final = re.compile(r"^[<>^]?\d{0,3}(\.\d{1,2})?[fegds%]?$")
_RULE_FIELDS: Final = ("rule.id", "rule.description", "rule.severity", "ruleset")


class TemplateError(ValueError):
    """A template refused at load time."""


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template; ``render`` fills it for one node."""

    text: str
    parts: tuple[Any, ...]  # str literals and (getter, spec, name) placeholders

    @classmethod
    def parse(cls, text: str, stage: str = "governance", static: dict[str, str] | None = None) -> Template:
        """:param static: values for ``rule.*`` and ``ruleset`` placeholders."""
        static = static or {}
        parts: list[Any] = []
        try:
            pieces = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise TemplateError(f"bad template: {exc}") from None
        for literal, field, spec, conversion in pieces:
            if literal:
                parts.append(literal)
            if field is None:
                continue
            field = field.strip()
            if conversion:
                raise TemplateError(f"placeholder {{{field}!{conversion}}}: conversions (!r, !s) are not allowed")
            if spec and not _SPEC.match(spec):
                raise TemplateError(f"placeholder {{{field}:{spec}}}: format spec not allowed "
                                    "(use e.g. :.2f, :>8, :.0%)")
            if not field:
                raise TemplateError("empty placeholder {}: name a field, e.g. {node.id}")
            if field in _RULE_FIELDS:
                parts.append(static.get(field, ""))
                continue
            try:
                expr = parse(field, stage)
            except ExprError as exc:
                raise TemplateError(f"placeholder {{{field}}}: {exc.reason}") from None
            if type(expr) not in (Ref, Call):
                raise TemplateError(f"placeholder {{{field}}}: only fields and helper calls can be shown, "
                                    "not expressions")
            parts.append((compile_value(expr), spec or "", field))
        return cls(text, tuple(parts))

    def render(self, node: Node, lic: LicenceResult, env: EvalEnv) -> str:
        out = []
        for part in self.parts:
            if type(part) is str:
                out.append(part)
                continue
            getter, spec, _ = part
            value = getter(node, lic, env)
            if value is MISSING:
                out.append("missing")
                continue
            try:
                out.append(format(value, spec))
            except (ValueError, TypeError):
                out.append(str(value))
        return "".join(out)

    @property
    def is_static(self) -> bool:
        return all(type(p) is str for p in self.parts)
