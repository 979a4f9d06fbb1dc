"""Exceptions: a named, owned, reasoned and expiring permission not to act.

As Kyverno's PolicyException. An exception names who answers for it (``owner``), why
(``reason``) and when it ends (``expires``), and what it covers: any of a node, a label
selector, a rule (``ruleset/rule`` or a rule id), an action type and a licence reason
code; every one given must match. An action it covers is not approved (``excepted``,
naming the exception); an expired exception stops applying and is reported once.

Exceptions come from the config (``enforcement.exceptions``) and from operators (CLI and
API, with the operator write token), kept in the state store's ``meta`` under
``enforcement.exceptions`` (so both the SQLite and the etcd store hold them).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from wyneos_core.enforcement.modes import rule_of
from wyneos_core.enforcement.selectors import matches

__all__ = ["configured", "MAX_EXCEPTIONS", "META_KEY", "ExceptionError", "PolicyException", "parse_time", "stored", "store_all"]

META_KEY = "enforcement.exceptions"
#: most exceptions kept in the store (an operator adding more is refused)
MAX_EXCEPTIONS = 10_000
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_WORD = re.compile(r"^[a-z][a-z_]{0,39}$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.-]{0,63}$")
_FIELDS = ("id", "owner", "reason", "expires", "node", "selector", "rule", "action", "licence_reason",
           "created_at", "source")


class ExceptionError(ValueError):
    """An exception that cannot be used; ``field`` names the field at fault."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


def _derived_id(raw: Mapping[str, Any]) -> str:
    """An id for an exception given none: ``ex-`` and a digest of what it says."""
    text = json.dumps({k: raw.get(k) for k in _FIELDS[1:9]}, sort_keys=True, default=str)
    return "ex-" + hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def parse_time(value: Any, field_name: str = "expires") -> float:
    """Seconds since the epoch from a number or an ISO 8601 time (UTC when it names no zone)."""
    if isinstance(value, bool):
        raise ExceptionError(field_name, f"expected a time, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        stamp = value
    elif isinstance(value, str):
        try:
            stamp = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ExceptionError(field_name, f"not an ISO 8601 time: {value!r:.60} "
                                             "(e.g. 2026-12-31T00:00:00Z)") from None
    else:
        raise ExceptionError(field_name, f"expected an ISO 8601 time or seconds since the epoch, got {value!r:.60}")
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


@dataclass(slots=True)
class PolicyException:
    """One exception; ``expires`` in seconds since the epoch."""

    id: str
    owner: str
    reason: str
    expires: float
    node: str | None = None
    selector: dict[str, str] = field(default_factory=dict)
    rule: str | None = None
    action: str | None = None
    licence_reason: str | None = None
    created_at: float = 0.0
    #: "config" or "operator"
    source: str = "operator"

    @classmethod
    def parse(cls, raw: Any, default_id: str = "", source: str = "operator", now: float | None = None
              ) -> PolicyException:
        """Check and build an exception from a mapping (the config's, the API's, the store's)."""
        if not isinstance(raw, Mapping):
            raise ExceptionError("exception", f"expected a mapping, got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(_FIELDS))
        if unknown:
            raise ExceptionError(unknown[0], f"unknown field (known: {', '.join(_FIELDS[:9])})")
        for name in ("owner", "reason"):
            value = raw.get(name)
            if not isinstance(value, str) or not value.strip() or len(value) > 1000:
                raise ExceptionError(name, "required: a non-empty text of at most 1,000 characters")
        if "expires" not in raw:
            raise ExceptionError("expires", "required: every exception ends (an ISO 8601 time)")
        ident = raw.get("id") or default_id or _derived_id(raw)
        if not isinstance(ident, str) or not _ID.match(ident):
            raise ExceptionError("id", f"expected 1-64 letters, digits, '.', '_' or '-', got {ident!r:.60}")
        node = raw.get("node")
        if node is not None and (not isinstance(node, str) or not node or len(node) > 253):
            raise ExceptionError("node", f"expected a node id, got {node!r:.60}")
        selector = raw.get("selector") or {}
        if not isinstance(selector, Mapping) or not all(
                isinstance(k, str) and _LABEL.match(k) and isinstance(v, str) and len(v) <= 200
                for k, v in selector.items()) or len(selector) > 20:
            raise ExceptionError("selector", "expected a mapping of at most 20 labels to strings")
        rule = raw.get("rule")
        if rule is not None and (not isinstance(rule, str) or not rule or len(rule) > 200):
            raise ExceptionError("rule", f"expected 'ruleset/rule' or a rule id, got {rule!r:.60}")
        for name in ("action", "licence_reason"):
            value = raw.get(name)
            if value is not None and (not isinstance(value, str) or not _WORD.match(value)):
                raise ExceptionError(name, f"expected a lower-case word, got {value!r:.60}")
        if node is None and not selector and rule is None and raw.get("action") is None \
                and raw.get("licence_reason") is None:
            raise ExceptionError("exception", "covers nothing: give node, selector, rule, action or licence_reason")
        created = raw.get("created_at")
        return cls(ident, raw["owner"].strip(), raw["reason"].strip(), parse_time(raw["expires"]), node,
                   dict(selector), rule, raw.get("action"), raw.get("licence_reason"),
                   float(created) if isinstance(created, (int, float)) and not isinstance(created, bool)
                   else (time.time() if now is None else now), raw.get("source", source))

    def expired(self, now: float) -> bool:
        return now >= self.expires

    def covers(self, action: Any, node: Any) -> bool:
        """Whether this exception holds ``action`` back (``node``: its target, or None)."""
        if self.node is not None and action.target != self.node:
            return False
        if self.action is not None and action.type != self.action:
            return False
        if self.licence_reason is not None and action.params.get("licence_reason") != self.licence_reason:
            return False
        if self.rule is not None:
            named = rule_of(action.origin)
            if named is None or self.rule not in (f"{named[0]}/{named[1]}", named[1]):
                return False
        if self.selector and (node is None or not matches(node, self.selector)):
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["expires_at"] = datetime.fromtimestamp(self.expires, timezone.utc).isoformat().replace("+00:00", "Z")
        return {k: v for k, v in out.items() if v not in (None, {})}


def configured(section: Mapping[str, Any]) -> list[PolicyException]:
    """The exceptions of the config's ``enforcement`` section (checked when it loaded)."""
    return [PolicyException.parse(raw, f"ex-{i + 1}", "config") for i, raw in enumerate(section["exceptions"])]


def stored(store: Any) -> list[PolicyException]:
    """The exceptions kept in ``store`` (entries that no longer parse are skipped)."""
    if store is None:
        return []
    raw = store.meta(META_KEY, [])
    out = []
    for item in raw if isinstance(raw, list) else []:
        try:
            out.append(PolicyException.parse(item))
        except ExceptionError:
            continue
    return out


def store_all(store: Any, items: Iterable[PolicyException]) -> None:
    """Keep ``items`` as the store's exceptions."""
    rows = []
    for e in items:
        row = e.to_dict()
        row.pop("expires_at", None)
        rows.append(row)
    if len(rows) > MAX_EXCEPTIONS:
        raise ExceptionError("exception", f"at most {MAX_EXCEPTIONS} exceptions are kept")
    store.set_meta(META_KEY, rows)
