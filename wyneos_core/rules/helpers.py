"""The helper functions a rule condition may call, and nothing else.

Each helper is total: given a missing or wrongly-typed value it returns ``MISSING``
(or false), never raises. Arguments marked constant must be literals in the rule, so
that they are checked (a regex compiles, a version parses) when the ruleset loads.

==========================  ===============================================================
``heartbeat_age(node)``     seconds since the node's last heartbeat (missing if never seen)
``has(x)``                  ``x is not missing``
``matches(x, "glob")``      ``x`` is a string matching the shell-style glob (``edge-*``)
``regex(x, "pattern")``     ``x`` is a string in which the regular expression is found
``version_at_least(x, v)``  version string ``x`` is at least ``v`` (``"2.4.0"``)
``version_below(x, v)``     version string ``x`` is below ``v``
``entitled(licence, "f")``  the licence is valid and lists feature ``f``
``length(x)``               length of a string or list (missing otherwise)
``violated("rule-id")``     (healing and enforcement rulesets) this tick, a governance
                            rule of that id is firing on the node
==========================  ===============================================================
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from wyneos_core.rules.ir import MISSING

__all__ = ["HELPERS", "HelperSpec", "parse_version", "MAX_PATTERN_LENGTH"]

MAX_PATTERN_LENGTH: Final = 200

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


@dataclass(frozen=True, slots=True)
class HelperSpec:
    """A helper's calling convention.

    ``args`` describes each positional argument: ``"node"`` / ``"licence"`` (that bare
    name must be passed), ``"value"`` (any expression) or ``"const-str"`` (a string
    literal, checked at load time by ``check``).
    """

    name: str
    args: tuple[str, ...]
    doc: str
    stages: frozenset[str] = frozenset({"governance", "healing", "enforcement"})
    check: Callable[[str], str | None] | None = None  # constant argument -> error or None


def _check_glob(text: str) -> str | None:
    if len(text) > MAX_PATTERN_LENGTH:
        return f"glob longer than {MAX_PATTERN_LENGTH} characters"
    return None


def _check_regex(text: str) -> str | None:
    if len(text) > MAX_PATTERN_LENGTH:
        return f"regular expression longer than {MAX_PATTERN_LENGTH} characters"
    try:
        re.compile(text)
    except re.error as exc:
        return f"invalid regular expression: {exc}"
    return None


def _check_version(text: str) -> str | None:
    if parse_version(text) is None:
        return f"{text!r} is not a version (expected dot-separated numbers like '2.4.0')"
    return None


def _check_rule_id(text: str) -> str | None:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", text):
        return f"{text!r} is not a rule id"
    return None


HELPERS: Final[dict[str, HelperSpec]] = {
    spec.name: spec
    for spec in (
        HelperSpec("heartbeat_age", ("node",), "seconds since the node's last heartbeat"),
        HelperSpec("has", ("value",), "the value is not missing"),
        HelperSpec("matches", ("value", "const-str"), "shell-style glob match", check=_check_glob),
        HelperSpec("regex", ("value", "const-str"), "regular-expression search", check=_check_regex),
        HelperSpec("version_at_least", ("value", "const-str"), "version comparison", check=_check_version),
        HelperSpec("version_below", ("value", "const-str"), "version comparison", check=_check_version),
        HelperSpec("entitled", ("licence", "const-str"), "licence is valid and lists the feature"),
        HelperSpec("length", ("value",), "length of a string or list"),
        HelperSpec("violated", ("const-str",), "a governance rule fires on this node",
                   stages=frozenset({"healing", "enforcement"}), check=_check_rule_id),
    )
}


# -- implementations (shared by the interpreter and the native compiler) --------------------


def glob_matcher(pattern: str) -> Callable[[Any], bool]:
    rx = re.compile(fnmatch.translate(pattern))
    match = rx.match

    def run(value: Any) -> bool:
        return type(value) is str and match(value) is not None

    return run


def regex_matcher(pattern: str) -> Callable[[Any], bool]:
    search = re.compile(pattern).search

    def run(value: Any) -> bool:
        return type(value) is str and search(value) is not None

    return run


def version_comparer(floor: str, at_least: bool) -> Callable[[Any], Any]:
    bound = parse_version(floor)
    assert bound is not None

    def run(value: Any) -> Any:
        v = parse_version(value)
        if v is None:
            return MISSING
        return (v >= bound) if at_least else (v < bound)  # type: ignore[operator]

    return run


def length_of(value: Any) -> Any:
    if type(value) in (str, list, tuple):
        return len(value)
    return MISSING
