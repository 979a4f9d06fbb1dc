"""Checks of the config's ``enforcement`` section beyond its schema (a bad exception or
budget is refused when the config loads, naming the field)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wyneos_core.enforcement.budgets import Budget, BudgetError
from wyneos_core.enforcement.exceptions import ExceptionError, PolicyException

__all__ = ["UNKEYED", "config_warnings", "section_errors"]

#: said at start-up, in every report and by ``wyneos validate`` when no licence is enforced
UNKEYED = ("licence.trusted_keys names no key: licences are not enforced (no_licence and unknown_key "
           "findings are audited only); add the issuer's public key to enforce them")


def config_warnings(config: Any, licence_step: bool) -> list[str]:
    """What a config does that its author may not expect (``wyneos validate`` warns)."""
    out = []
    licence = config["licence"]
    if (licence_step and not licence["trusted_keys"] and config["enforcement"].get("licence") is None
            and not config["demo"].get("enabled")):
        out.append(UNKEYED)
    return out


def section_errors(section: Mapping[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """``(path, reason)`` of every mistake in ``section`` (the filled-in ``enforcement``)."""
    out: list[tuple[tuple[Any, ...], str]] = []
    ids: dict[str, int] = {}
    for index, raw in enumerate(section["exceptions"]):
        try:
            e = PolicyException.parse(raw, f"ex-{index + 1}", "config")
        except ExceptionError as exc:
            field = () if exc.field == "exception" else (exc.field,)
            out.append((("enforcement", "exceptions", index, *field), exc.reason))
            continue
        if e.id in ids:
            out.append((("enforcement", "exceptions", index, "id"),
                        f"duplicate exception id {e.id!r} (first at enforcement.exceptions[{ids[e.id]}])"))
        ids.setdefault(e.id, index)
    names: dict[str, int] = {}
    for index, raw in enumerate(section["budgets"]):
        try:
            b = Budget.parse(raw, f"budget-{index + 1}")
        except BudgetError as exc:
            field = () if exc.field == "budget" else (exc.field,)
            out.append((("enforcement", "budgets", index, *field), str(exc).split(": ", 1)[1]))
            continue
        if b.name in names:
            out.append((("enforcement", "budgets", index, "name"),
                        f"duplicate budget name {b.name!r} (first at enforcement.budgets[{names[b.name]}])"))
        names.setdefault(b.name, index)
    return out
