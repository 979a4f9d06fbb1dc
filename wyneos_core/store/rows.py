"""The rows of the SQLite state file: made from nodes and actions for writing (JSON text
encoded a batch at a time), and checked when read back (a damaged row is named, never
half-read)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from itertools import islice, repeat
from typing import Any

import msgspec

from wyneos_core.model import Node, NodeStatus, Severity
from wyneos_core.registry import NODE_ID_PATTERN
from wyneos_core.safeio import bad_text, field_path

__all__ = ["ENCODE", "ENCODE_SORTED", "ENCODE_SORTED_TEXT", "ROWS_CHUNK", "action_row_problem", "encode_each",
           "json_problem", "node_row_problem", "node_rows", "sorted_json"]

#: the store's JSON text: compact, keys sorted where the old text sorted them (msgspec: one
#: call encodes a tick's actions, events or effects, a fraction of ``json.dumps`` each)
ENCODE = msgspec.json.Encoder()
ENCODE_SORTED = msgspec.json.Encoder(order="sorted")
ENCODE_SORTED_TEXT = msgspec.json.Encoder(order="sorted", enc_hook=str)  # what JSON lacks, as its text
#: rows per chunk of node rows written (bounds what a write of the whole fleet holds at once)
ROWS_CHUNK = 4096


def encode_each(encoder: msgspec.json.Encoder, items: list[Any],
                fallback: Callable[[Any], str] = json.dumps) -> list[str]:
    """The JSON text of each of ``items``, encoded in one call; ``fallback`` encodes them one
    by one when the encoder refuses one (text that is not valid Unicode, a type it lacks),
    as the store always did."""
    if not items:
        return []
    try:
        return encoder.encode_lines(items).decode().split("\n")[:-1]
    except (TypeError, ValueError, OverflowError):  # UnicodeEncodeError is a ValueError
        return [fallback(item) for item in items]


def sorted_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _node_columns(nodes: Iterable[Node]) -> Iterable[tuple[list[Any], ...]]:
    """``Node`` values as chunks of stored columns (``Listed.column_chunks``' shape)."""
    it = iter(nodes)
    while chunk := list(islice(it, ROWS_CHUNK)):
        yield ([n.id for n in chunk], [n.status.value for n in chunk], [n.last_seen for n in chunk],
               [n.load for n in chunk], [n.metadata for n in chunk], [n.licence_ref for n in chunk],
               [n.fingerprint for n in chunk], [n.registered_at for n in chunk], [n.isolated for n in chunk])


def node_rows(nodes: Iterable[Node], tick: int) -> Iterable[tuple[Any, ...]]:
    """The ``nodes`` rows of ``nodes``, made a chunk at a time: from columns when the nodes
    offer them (``column_chunks``, the report's nodes listed over its column copy), else
    from each ``Node``."""
    columns = getattr(nodes, "column_chunks", None)
    for ids, status, last_seen, load, metadata, ref, fingerprint, registered, isolated in (
            columns() if columns is not None else _node_columns(nodes)):
        yield from zip(ids, status, last_seen, load, encode_each(ENCODE, metadata), ref, fingerprint, registered,
                       map(int, isolated), repeat(tick))


_STATUSES = frozenset(s.value for s in NodeStatus)
_SEVERITIES = frozenset(s.value for s in Severity)


def json_problem(text: Any, kind: type) -> str | None:
    if not isinstance(text, str):
        return f"not text ({type(text).__name__})"
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return f"not JSON ({str(exc)[:80]})"
    if not isinstance(value, kind):
        return f"not a JSON {'object' if kind is dict else kind.__name__}"
    return None


def _number(value: Any, optional: bool = True) -> bool:
    return (value is None and optional) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def node_row_problem(row: tuple) -> dict[str, Any] | tuple[str, str]:
    """The stored metadata of a nodes row, or ``(column, why)`` when the row is damaged."""
    node_id, status, last_seen, load, metadata, _ref, _fp, registered_at, isolated = row
    if not isinstance(node_id, str) or not NODE_ID_PATTERN.match(node_id):
        return "id", (f"not a node id ({str(node_id)[:40]!r}: 1-128 letters, digits, '_', '.', ':' or '-', "
                      "starting with a letter or digit)")
    if status not in _STATUSES:
        return "status", f"unknown status {str(status)[:40]!r} (known: {', '.join(sorted(_STATUSES))})"
    for column, value, optional in (("last_seen", last_seen, True), ("load", load, True),
                                    ("registered_at", registered_at, False)):
        if not _number(value, optional):
            return column, f"not a number ({str(value)[:40]!r})"
    if isolated not in (0, 1):
        return "isolated", f"not 0 or 1 ({str(isolated)[:40]!r})"
    why = json_problem(metadata, dict)
    if why is not None:
        return "metadata", why
    value = json.loads(metadata)
    where = bad_text(value)
    if where is not None:  # stored by a release that let a lone surrogate in
        return f"metadata.{field_path(where)}", "not valid Unicode text (a lone surrogate)"
    return value


def action_row_problem(row: tuple) -> tuple[str, str] | None:
    action_id, type_, target, _origin, _reason, severity, params, state, first_tick, last_tick = row
    if not isinstance(type_, str) or not type_:
        return "type", "not an action type"
    if not isinstance(target, str):
        return "target", "not a node id"
    if severity not in _SEVERITIES:
        return "severity", f"unknown severity {str(severity)[:40]!r}"
    if not isinstance(state, str) or not state:
        return "state", "not a lifecycle state"
    if not (isinstance(first_tick, int) and isinstance(last_tick, int)):
        return "first_tick", "not a tick number"
    why = json_problem(params, dict)
    if why is not None:
        return "params", why
    return None
