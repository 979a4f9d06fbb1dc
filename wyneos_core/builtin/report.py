"""Builtin tick report: a readable summary (or JSON lines) on stdout and a JSON file."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from wyneos_core import hookimpl
from wyneos_core.builtin.listing import licence_problems, node_chunks, report_parts, transition_chunks
from wyneos_core.causes import action_cause
from wyneos_core.model import Action, RuleResult, TickReport
from wyneos_core.transitions import Transitions
from wyneos_core.wording import examples, plural

if TYPE_CHECKING:
    from wyneos_core.tick import TickContext

#: how much ``wyneos run`` prints per tick (``report.stdout``): ``quiet`` one line,
#: ``summary`` what changed grouped with counts, ``verbose`` every item of every node
VERBOSITIES = ("quiet", "summary", "verbose")
#: at most this many grouped lines per kind (the rest is counted in one line)
MAX_GROUPS = 12


def summary_lines(report: TickReport, previous: TickReport | None = None,
                  verbosity: str = "summary") -> list[str]:
    """The per-tick summary printed by ``wyneos run`` (see ``VERBOSITIES``).

    ``summary`` groups what changed since ``previous`` (the tick before) by licence
    reason, rule, transition and action type, each with a count and a few example
    node ids; what still holds as in the tick before is counted in one ``still`` line.
    ``quiet`` is one line per tick; ``verbose`` lists every node of every item, held or
    not.
    """
    if verbosity == "quiet":
        return [quiet_line(report)]
    if verbosity == "verbose":
        return _verbose_lines(report, previous)
    held: list[str] = []  # what still holds as in the tick before: one line at the end
    lines = [_header(report)]
    lines += _licence_lines(report, previous, held)
    lines += _rule_lines(report, previous, held)
    lines += _grouped_transitions(report)
    lines += _trust_lines(report)
    lines += _action_lines(report)
    lines += _delivery_lines(report)
    lines += _reject_lines(report, previous, held)
    lines += _capped([f"  partition {plural(len(p), 'node')} cut off from the orchestrator: {examples(p)}"
                      for p in report.partitions], "partitions")
    lines += _capped([f"  error    plugin {e.plugin} in {e.hook}: {e.error}" for e in report.errors], "errors")
    lines += _capped([f"  note     {n}" for n in report.notes], "notes")
    if held:
        lines.append("  still    " + "; ".join(held))
    return lines


def _header(report: TickReport) -> str:
    counts = report.status_counts()
    status = " ".join(f"{k}={v}" for k, v in counts.items() if v)
    return (f"tick {report.tick}: {plural(len(report.nodes), 'node')}" + (f" ({status})" if status else "")
            + f" in {report.duration_ms:.1f} ms")


def quiet_line(report: TickReport) -> str:
    """One line for a tick: node states and how many licences, rules, actions and
    problems there are (only the counts that are not zero)."""
    counts = report.status_counts()
    status = " ".join(f"{k}={v}" for k, v in counts.items() if v)
    parts = []
    problems = licence_problems(report.licences)
    failing = sum(1 for r in problems if not r.valid)
    grace = len(problems) - failing
    if failing or grace:
        parts.append("licences: " + ", ".join(t for t in (f"{failing} invalid" if failing else "",
                                                          f"{grace} in grace" if grace else "") if t))
    rules = {r.rule_id for r in report.results}
    if rules:
        failing_nodes = len({r.node_id for r in report.results})
        parts.append(f"{plural(len(rules), 'rule')} failing on {plural(failing_nodes, 'node')}")
    if report.actions:
        parts.append(f"{plural(len(report.actions), 'new action')}")
    cleared = sum(1 for e in report.lifecycle if e.get("state") == "cleared")
    if cleared:
        parts.append(f"{cleared} cleared")
    undelivered = sum(1 for d in report.deliveries if not d.delivered)
    if undelivered:
        parts.append(f"{undelivered} undelivered")
    if report.heartbeats_rejected:
        parts.append(f"{len(report.heartbeats_rejected)} rejected")
    if report.partitions:
        parts.append(plural(len(report.partitions), "partition"))
    if report.errors:
        parts.append(plural(len(report.errors), "error"))
    return (f"tick {report.tick}: {plural(len(report.nodes), 'node')}" + (f" ({status})" if status else "")
            + "".join(f"; {p}" for p in parts) + f" in {report.duration_ms:.1f} ms")


def _capped(lines: list[str], many: str) -> list[str]:
    """At most ``MAX_GROUPS`` of ``lines``; the rest counted in one line."""
    if len(lines) <= MAX_GROUPS:
        return lines
    kind = lines[0].split()[0]
    return lines[:MAX_GROUPS] + [f"  {kind:<8} ... and {len(lines) - MAX_GROUPS} more {many} (-v lists all)"]


def _one_text(texts: Sequence[str]) -> str:
    """The text shared by a group, or its first one and how many others differ."""
    distinct = list(dict.fromkeys(texts))
    if len(distinct) == 1:
        return distinct[0]
    return f"{distinct[0]} (and {plural(len(distinct) - 1, 'other')})"


def _licence_key(report: TickReport | None) -> tuple[dict[str, tuple[bool, str, bool]], dict[str, Any]]:
    """The results that are not plainly valid, by node: their key and the result."""
    if report is None:
        return {}, {}
    found = {r.node_id: r for r in licence_problems(report.licences)}
    return {n: (r.valid, r.reason, r.in_grace) for n, r in found.items()}, found


def _licence_lines(report: TickReport, previous: TickReport | None, still: list[str]) -> list[str]:
    now, results = _licence_key(report)
    before, _ = _licence_key(previous)
    groups: dict[tuple[str, str], list[str]] = {}
    held: dict[str, int] = {}
    for node_id, (valid, reason, _grace) in now.items():
        state = "in grace" if valid else "INVALID"
        if before.get(node_id) == now[node_id]:
            label = f"{reason} (in grace)" if valid else reason
            held[label] = held.get(label, 0) + 1
        else:
            groups.setdefault((state, reason), []).append(node_id)
    lines = []
    for (state, reason), node_ids in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        detail = _one_text([results[n].detail for n in sorted(node_ids)])
        lines.append(f"  licence  {len(node_ids)} {state} {reason} ({examples(node_ids)}): {detail}")
    lines = _capped(lines, "licence reasons")
    recovered = [n for n in before if n not in now]
    if recovered:  # and still have a result (still registered): one pass in C over the ids
        ids = getattr(getattr(report.licences, "results", None), "ids", None)  # the licence columns' ids
        present = set(ids) if ids is not None else report.licences
        recovered = [n for n in recovered if n in present]
    if recovered:
        lines.append(f"  licence  {len(recovered)} valid again ({examples(recovered)})")
    if held:
        still.append(f"licence failing on {plural(sum(held.values()), 'node')} ("
                     + ", ".join(f"{k}={v}" for k, v in sorted(held.items())[:MAX_GROUPS])
                     + (", ..." if len(held) > MAX_GROUPS else "") + ")")
    return lines


def _failed_by_rule(report: TickReport | None) -> dict[str, dict[str, RuleResult]]:
    failed: dict[str, dict[str, RuleResult]] = {}
    for r in report.results if report is not None else ():
        failed.setdefault(r.rule_id, {})[r.node_id] = r
    return failed


def _rule_lines(report: TickReport, previous: TickReport | None, still: list[str]) -> list[str]:
    failed = _failed_by_rule(report)
    before = _failed_by_rule(previous)
    lines = []
    held: dict[str, int] = {}
    for rule_id, now in sorted(failed.items()):
        was = before.get(rule_id, {})
        new = [r for node_id, r in now.items() if node_id not in was]
        gone = [node_id for node_id in was if node_id not in now]
        if not new and not gone:
            held[rule_id] = len(now)
            continue
        text = f"  rule     {rule_id}: failing on {plural(len(now), 'node')}"
        if new:
            new.sort(key=lambda r: r.node_id)
            text += (f", {len(new)} new ({examples(r.node_id for r in new)}): "
                     + _one_text([r.problem() or r.message for r in new]))
        if gone:
            text += f"; passing again on {len(gone)} ({examples(gone)})"
        lines.append(text)
    lines = _capped(lines, "rules")
    cleared = {rule_id: list(ids) for rule_id, ids in before.items() if rule_id not in failed}
    for rule_id, node_ids in sorted(cleared.items())[:MAX_GROUPS]:
        lines.append(f"  rule     {rule_id}: passing again on {plural(len(node_ids), 'node')} ({examples(node_ids)})")
    if len(cleared) > MAX_GROUPS:
        lines.append(f"  rule     ... and {len(cleared) - MAX_GROUPS} more rules passing again (-v lists all)")
    if held:
        shown = sorted(held.items())
        still.append("rules failing: " + ", ".join(f"{k}={v}" for k, v in shown[:MAX_GROUPS])
                     + (f" and {len(shown) - MAX_GROUPS} more" if len(shown) > MAX_GROUPS else ""))
    return lines


def _grouped_transitions(report: TickReport) -> list[str]:
    status: dict[tuple[str, str], list[str]] = {}
    alerts: dict[tuple[str, str, str], list[str]] = {}
    transitions = report.transitions
    columns = isinstance(transitions, Transitions)  # status changes grouped over their columns
    if columns:
        status = transitions.status_groups()  # type: ignore[attr-defined]
    for t in transitions.held() if columns else transitions:  # type: ignore[attr-defined]
        if t.get("kind") == "status" and not columns:
            status.setdefault((t["from"], t["to"]), []).append(t["node_id"])
        elif t.get("kind") == "rule":
            alerts.setdefault((t["rule_id"], t["from"], t["to"]), []).append(t["node_id"])
    lines = [f"  status   {len(ids)} {old} -> {new} ({examples(ids)})"
             for (old, new), ids in sorted(status.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
    alert_lines = [f"  alert    {rule_id}: {len(ids)} {old} -> {new} ({examples(ids)})"
                   for (rule_id, old, new), ids in sorted(alerts.items())]
    return _capped(lines, "status changes") + _capped(alert_lines, "alert changes")


def _trust_lines(report: TickReport) -> list[str]:
    """Tier moves and admission decisions of the tick, grouped (docs/trust.md)."""
    trust = report.trust
    moves: dict[tuple[str, str], list[str]] = {}
    for c in trust.get("changes", []):
        moves.setdefault((c["from"], c["to"]), []).append(c["node_id"])
    counted = trust.get("moves") or {}  # every move counted; the listed ones are a sample of them
    for move in counted:
        old, _, new = move.partition(" -> ")
        moves.setdefault((old, new), [])  # moved, none of them in the listed sample
    rows = sorted(((counted.get(f"{old} -> {new}", len(ids)), old, new, ids) for (old, new), ids in moves.items()),
                  key=lambda row: (-row[0], row[1], row[2]))
    lines = [f"  trust    {count} {old} -> {new}" + (f" ({examples(ids, total=count)})" if ids else "")
             for count, old, new, ids in rows]
    decided: dict[tuple[str, str, str], list[str]] = {}
    for a in trust.get("admission", []):
        decided.setdefault((a["decision"], a["rule"], a["reason"]), []).append(a["node_id"])
    lines += [f"  admit    {len(ids)} {decision}" + (f" by {rule}: {reason}" if rule else "") + f" ({examples(ids)})"
              for (decision, rule, reason), ids in sorted(decided.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
    return _capped(lines, "trust changes")


def _for(action: Action) -> str:
    """`` for licence:CODE`` or `` for rule:RULE`` when the action's cause says more than
    its origin (``wyneos_core.causes``), else nothing."""
    cause = action_cause(action)
    if cause.kind == "licence" or (cause.kind == "rule" and cause.failing_rule):
        return f" for {cause.label}"
    return ""


def _action_lines(report: TickReport) -> list[str]:
    groups: dict[tuple[str, str, str, str], list[Action]] = {}
    why: dict[tuple[Any, ...], str] = {}  # _for of the first action of each cause (its origin, type, params)
    for a in report.actions:
        params = a.params if isinstance(a.params, dict) else {}
        key = (a.origin, a.type, params.get("licence_reason"), params.get("rule"))
        try:
            text = why.get(key)
            if text is None:
                text = why[key] = _for(a)
        except TypeError:  # a param that cannot be a key
            text = _for(a)
        groups.setdefault((a.type, a.severity.value, text, a.origin), []).append(a)
    lines = [f"  action   {len(acts)} {type_} ({severity}){why} by {origin} ({examples([a.target for a in acts])}): "
             + _one_text([a.reason for a in acts])
             for (type_, severity, why, origin), acts in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
    lines = _capped(lines, "kinds of action")
    cleared: dict[str, list[str]] = {}
    for e in report.lifecycle:
        if e.get("state") == "cleared":
            cleared.setdefault(e.get("type", "?"), []).append(str(e.get("target", "?")))
    lines += [f"  cleared  {len(ids)} {type_} ({examples(ids)})" for type_, ids in sorted(cleared.items())]
    return lines


def _delivery_lines(report: TickReport) -> list[str]:
    if not report.deliveries:
        return []
    by_reason: dict[str, list[str]] = {}
    for d in report.deliveries:
        if not d.delivered:
            by_reason.setdefault(d.reason or "unknown", []).append(d.target)
    done = len(report.deliveries) - sum(len(v) for v in by_reason.values())
    return [f"  deliver  {done}/{len(report.deliveries)} delivered"
            + ("; unreachable: " + "; ".join(f"{len(ids)} {reason} ({examples(ids)})"
                                             for reason, ids in sorted(by_reason.items())) if by_reason else "")]


def _rejects(report: TickReport | None) -> dict[tuple[str, str], list[str]]:
    groups: dict[tuple[str, str], list[str]] = {}
    for r in report.heartbeats_rejected if report is not None else ():
        ids = groups.setdefault((str(r["field"]), str(r["reason"])), [])
        if r["node_id"] not in ids:
            ids.append(r["node_id"])
    return groups


def _reject_lines(report: TickReport, previous: TickReport | None, still: list[str]) -> list[str]:
    """Rejected heartbeats grouped by field and reason; a group that already showed in the
    tick before, on the same nodes, is only counted."""
    before = _rejects(previous)
    lines = []
    again = 0
    for (field_, reason), ids in _rejects(report).items():
        if set(before.get((field_, reason), ())) >= set(ids):
            again += len(ids)
            continue
        lines.append(f"  reject   {field_}: {reason}: {plural(len(ids), 'node')} ({examples(ids)})")
    lines = _capped(lines, "kinds of rejected heartbeat")
    if again:
        still.append(f"heartbeats rejected from {plural(again, 'node')}")
    return lines


def _verbose_lines(report: TickReport, previous: TickReport | None) -> list[str]:
    """Everything: one line per node of every licence failure, rule failure,
    transition, action, delivery and rejected heartbeat."""
    lines = [_header(report)]
    for r in sorted(licence_problems(report.licences), key=lambda r: r.node_id):
        if not r.valid or r.in_grace:
            lines.append(f"  licence  {r.node_id}: {'in grace' if r.valid else 'INVALID'} {r.reason} - {r.detail}")
    for r in sorted(report.results, key=lambda r: (r.rule_id, r.node_id)):
        lines.append(f"  rule     {r.rule_id} on {r.node_id}: {r.problem() or r.message}")
    for t in report.transitions:
        if t.get("kind") == "status":
            lines.append(f"  status   {t['node_id']}: {t['from']} -> {t['to']}")
        elif t.get("kind") == "rule":
            lines.append(f"  alert    {t['rule_id']} on {t['node_id']}: {t['from']} -> {t['to']}")
    for c in report.trust.get("changes", []):
        lines.append(f"  trust    {c['node_id']}: {c['from']} -> {c['to']} (score {c['trust']:.2f})")
    for a in report.trust.get("admission", []):
        lines.append(f"  admit    {a['node_id']}: {a['decision']}" + (f" by {a['rule']}: {a['reason']}" if a["rule"] else ""))
    for a in report.actions:
        lines.append(f"  action   {a.type} {a.target} ({a.severity.value}){_for(a)} by {a.origin}: {a.reason}")
    for e in report.lifecycle:
        if e.get("state") in ("cleared", "deferred", "suppressed", "awaiting_witnesses", "rejected"):
            lines.append(f"  {e['state']:<8} {e.get('type')} {e.get('target')}: {e.get('detail', '')}")
    for d in report.deliveries:
        lines.append(f"  deliver  {d.action_id} to {d.target}: "
                     + ("delivered" if d.delivered else f"NOT delivered ({d.reason})"))
    for r in report.heartbeats_rejected:
        lines.append(f"  reject   {r['node_id']}: {r['field']}: {r['reason']}")
    for p in report.partitions:
        lines.append(f"  partition {plural(len(p), 'node')} cut off from the orchestrator: {', '.join(p)}")
    for e in report.errors:
        lines.append(f"  error    plugin {e.plugin} in {e.hook}: {e.error}")
    for n in report.notes:
        lines.append(f"  note     {n}")
    return lines


def _plain(value: Any) -> Any:
    """A numpy number as the Python number it holds (for the JSON encoder)."""
    item = getattr(value, "item", None)
    if item is None:
        raise TypeError(f"cannot write {type(value).__name__} into the report")
    return item()


#: the report's JSON, compact (msgspec: the standard library's format at a fraction of its cost)
encode_json = msgspec.json.Encoder(enc_hook=_plain).encode


def report_json(report: TickReport, registry: Any, max_nodes: int | None = None) -> Iterator[bytes]:
    """``encode_json(report_dict(report, registry, max_nodes))`` in pieces, the node list
    and the transitions a chunk of rows at a time (``listing.CHUNK``): the same bytes,
    without the whole lists' dicts or text in memory at once (the first tick of a large
    fleet lists every node, and every node's status changes)."""
    data, listed = report_parts(report, registry, max_nodes)
    yield b"{"
    for k, (key, value) in enumerate(data.items()):
        yield (b"," if k else b"") + encode_json(key) + b":"
        if key not in ("nodes", "transitions"):
            yield encode_json(value)
            continue
        yield b"["
        sep = b""
        for chunk in node_chunks(report.nodes, listed) if key == "nodes" else transition_chunks(report):
            body = encode_json(chunk)[1:-1]
            if body:
                yield sep + body
                sep = b","
        yield b"]"
    yield b"}"


def write_json_atomic(path: Path, data: object) -> None:
    """Write ``data`` as JSON to ``path`` atomically (a reader sees the old file or the new)."""
    write_atomic(path, [encode_json(data)])


def write_atomic(path: Path, pieces: Iterable[bytes]) -> None:
    """Write the bytes of ``pieces`` to ``path`` atomically (a temporary file, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            for piece in pieces:
                fh.write(piece)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def close_stdout_quietly() -> None:
    """Point standard output at /dev/null: its reader has gone (``wyneos run | head``)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def _emit(text: str) -> None:
    """Print ``text``; when the reader of standard output has gone, say so once and go on."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        close_stdout_quietly()
        print("wyneos: standard output was closed; tick summaries are no longer printed "
              "(the run goes on; the state file and report.json_path still get every tick)", file=sys.stderr)


@hookimpl(trylast=True)
def wyneos_tick_report(ctx: TickContext, report: TickReport) -> None:
    settings = ctx.config["report"]
    mode = settings["stdout"]
    if mode in VERBOSITIES:
        # last_report is still the tick before: it is replaced once every report hook ran
        _emit("\n".join(summary_lines(report, ctx.orchestrator.last_report, mode)))
    limit = settings["max_nodes_in_file"]
    whole = None
    if mode == "json":
        whole = b"".join(report_json(report, ctx.registry, limit))
        _emit(whole.decode())
    if settings["json_path"]:
        path = ctx.config.resolve(settings["json_path"])
        try:
            write_atomic(path, [whole] if whole is not None else report_json(report, ctx.registry, limit))
        except OSError as exc:  # say it now: the report of this tick is already printed
            print(f"wyneos: cannot write report.json_path {path}: {exc.strerror or exc}", file=sys.stderr)
            raise
