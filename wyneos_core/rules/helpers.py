"""The helper functions a rule condition may call, and nothing else.

Each helper is total: given a missing or wrongly-typed value it returns ``MISSING``
(or false), never raises. Arguments marked constant must be literals in the rule, so
that they are checked (a regex compiles, a version parses) when the ruleset loads.

==========================  ===============================================================
``heartbeat_age(node)``     seconds since the node's last heartbeat (missing if never seen)
``has(x)``                  ``x is not missing``
``matches(x, "glob")``      ``x`` is a string matching the shell-style glob (``edge-*``)
``regex(x, "pattern")``     ``x`` is a string in which the regular expression (RE2
                            syntax, linear time) is found
``version_at_least(x, v)``  version string ``x`` is at least ``v`` (``"2.4.0"``)
``version_below(x, v)``     version string ``x`` is below ``v``
``entitled(licence, "f")``  the licence is valid and lists feature ``f``
``length(x)``               length of a string or list (missing otherwise)
``violated("rule-id")``     (healing and enforcement rulesets) this tick, a governance
                            rule of that id is firing on the node
``trust_at_least("tier")``  the node's trust tier is at least ``tier`` (``untrusted`` <
                            ``probation`` < ``trusted`` < ``attested``); false before the
                            trust step first ran (docs/trust.md)
``forecast(m, "1h")``       the value metric ``m`` (``node.metrics.NAME``) is expected to
                            have after the duration (docs/prediction.md)
``time_to(m, level)``       seconds until metric ``m`` is expected to reach ``level``
``anomaly(m)``              how unusual metric ``m``'s latest value is, 0 to 1
``trend(m)``                metric ``m``'s slope, in its units per second
``drift_age()``             seconds since the node's state first differed from what was
                            declared (missing while it does not; docs/drift.md)
==========================  ===============================================================

``time_to``, ``drift_age`` and ``heartbeat_age`` give seconds: compared with a duration
string (``time_to(node.metrics.disk_used, 1.0) < "2h"``) the string is read as seconds
when the ruleset loads (any other string is refused, except beside ``heartbeat_age``,
where it stays a string and so unequal to every number, as it always was).

Regular expressions run on RE2 (the ``google-re2`` package), whose matching time is
linear in the length of the text whatever the pattern: a pattern like ``^(a+)+$``
cannot take exponential time. RE2 has no backreferences or lookaround; a pattern that
uses them is refused at load time. Globs and regular expressions only look at strings
of at most ``MAX_MATCH_LENGTH`` characters; a longer string gives missing.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import re2

from wyneos_core.rules.ir import MISSING
from wyneos_core.model import parse_version

__all__ = ["HELPERS", "PREDICTIVE", "DURATION_VALUED", "HelperSpec", "parse_version", "duration_seconds", "MAX_PATTERN_LENGTH", "MAX_MATCH_LENGTH", "compile_regex"]

MAX_PATTERN_LENGTH: Final = 200
#: strings longer than this are not matched by globs or regular expressions (missing)
MAX_MATCH_LENGTH: Final = 10_000

@dataclass(frozen=True, slots=True)
class HelperSpec:
    """A helper's calling convention.

    ``args`` describes each positional argument: ``"node"`` / ``"licence"`` (that bare
    name must be passed), ``"value"`` (any expression), ``"const-str"`` (a string
    literal, checked at load time by ``check``), ``"const-num"`` (a number literal),
    ``"duration"`` (a duration string such as ``"1h"``, kept as seconds) or ``"metric"``
    (a telemetry metric written ``node.metrics.NAME``).
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


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # the refusal is reported by the loader, not logged to stderr
    options.max_mem = 8 << 20
    return options


def compile_regex(pattern: str) -> re2._Regexp:
    """``pattern`` compiled by RE2; ``ValueError`` with a plain reason if RE2 refuses it."""
    try:
        return re2.compile(pattern, _re2_options())
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        hint = ""
        if re.search(r"\\[1-9]|\(\?P=", pattern):
            hint = " (backreferences are not supported: RE2 matches in linear time)"
        elif re.search(r"\(\?<?[=!]", pattern):
            hint = " (lookahead and lookbehind are not supported: RE2 matches in linear time)"
        raise ValueError(f"{detail}{hint}") from None


def _check_regex(text: str) -> str | None:
    if len(text) > MAX_PATTERN_LENGTH:
        return f"regular expression longer than {MAX_PATTERN_LENGTH} characters"
    try:
        compile_regex(text)
    except ValueError as exc:
        return f"invalid regular expression: {exc}"
    return None


def _check_version(text: str) -> str | None:
    if parse_version(text) is None:
        return f"{text!r} is not a version (expected dot-separated numbers like '2.4.0')"
    return None


def _check_tier(text: str) -> str | None:
    from wyneos_core.trust.tiers import TIER_NAMES, tier_rank

    if tier_rank(text) is None:
        return f"{text!r} is not a trust tier (tiers: {', '.join(TIER_NAMES)})"
    return None


def trust_at_least(tier: str) -> Callable[[Any], bool]:
    """``tier name of a node -> is it at least tier`` (false for a node without a tier)."""
    from wyneos_core.trust.tiers import tier_rank

    floor = tier_rank(tier)
    assert floor is not None
    ranks = {name: tier_rank(name) for name in ("untrusted", "probation", "trusted", "attested")}

    def run(value: Any) -> bool:
        rank = ranks.get(value) if type(value) is str else None
        return rank is not None and rank >= floor

    return run


def duration_seconds(text: str) -> float | None:
    """``"1h30m"`` -> 5400.0; None if ``text`` is not a duration in seconds, minutes,
    hours or days."""
    from wyneos_core.rules.state import parse_duration

    try:
        duration = parse_duration(text)
    except ValueError:
        return None
    return duration.amount if duration.unit == "seconds" else None


def _check_duration(text: str) -> str | None:
    if duration_seconds(text) is None:
        return f"{text!r} is not a duration: write '30s', '15m', '2h' or '1d'"
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
        HelperSpec("trust_at_least", ("const-str",), "the node's trust tier is at least the one named",
                   check=_check_tier),
        HelperSpec("forecast", ("metric", "duration"), "the metric's expected value after the duration",
                   check=_check_duration),
        HelperSpec("time_to", ("metric", "const-num"), "seconds until the metric is expected to reach the level"),
        HelperSpec("anomaly", ("metric",), "how unusual the metric's latest value is, 0 to 1"),
        HelperSpec("trend", ("metric",), "the metric's slope per second"),
        HelperSpec("drift_age", (), "seconds since the node's state first differed from the declared state"),
    )
}

#: helpers whose value is a prediction (rules using them warn by default and never isolate alone)
PREDICTIVE: Final = frozenset({"forecast", "time_to", "anomaly", "trend"})
#: helpers whose value is seconds (a duration string compared with them is read as seconds)
DURATION_VALUED: Final = frozenset({"time_to", "drift_age", "heartbeat_age"})


# -- implementations (shared by the interpreter and the native compiler) --------------------


def glob_matcher(pattern: str) -> Callable[[Any], Any]:
    # fnmatch's translation avoids nested quantifiers (no catastrophic backtracking)
    rx = re.compile(fnmatch.translate(pattern))
    match = rx.match

    def run(value: Any) -> Any:
        if type(value) is not str:
            return False
        if len(value) > MAX_MATCH_LENGTH:
            return MISSING
        return match(value) is not None

    return run


def _found(compiled: Any) -> Callable[[bytes], bool]:
    """``text -> found?`` on UTF-8 bytes: RE2's match call itself when the binding has it
    (five times cheaper than ``search``, which builds a match object and offsets)."""
    low = getattr(compiled, "_regexp", None)
    anchor = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)
    null = getattr(re2, "_NULL_SPAN", None)
    if low is not None and anchor is not None and null is not None and hasattr(low, "Match"):
        match = low.Match
        return lambda data: match(anchor, data, 0, len(data))[0] != null
    search = compiled.search
    return lambda data: search(data.decode("utf-8")) is not None


def regex_matcher(pattern: str) -> Callable[[Any], Any]:
    options = _re2_options()
    options.never_capture = True  # only "is it found" is asked
    found = _found(re2.compile(pattern, options))

    def run(value: Any) -> Any:
        if type(value) is not str:
            return False
        if len(value) > MAX_MATCH_LENGTH:
            return MISSING
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: matched as U+FFFD
            data = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")
        return found(data)

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


def predicted(name: str, predictions: Any, node_id: str, metric: str, arg: Any) -> Any:
    """The value of prediction helper ``name`` for one node (MISSING when the predict
    step left nothing, or it has nothing to say); total, never raises on its answers."""
    if predictions is None:
        return MISSING
    try:
        if name == "forecast":
            value = predictions.forecast(node_id, metric, arg)
        elif name == "time_to":
            value = predictions.time_to(node_id, metric, arg)
        elif name == "anomaly":
            value = predictions.anomaly(node_id, metric)
        elif name == "trend":
            value = predictions.trend(node_id, metric)
        else:
            value = predictions.latest(node_id, metric)
    except Exception:  # noqa: BLE001 - a failing detector gives missing, never a failed tick
        return MISSING
    if isinstance(value, bool) or not isinstance(value, (int, float)):  # None, or anything else
        return MISSING
    value = float(value)  # numpy's floats too
    return value if math.isfinite(value) else MISSING


def length_of(value: Any) -> Any:
    if type(value) in (str, list, tuple):
        return len(value)
    return MISSING
