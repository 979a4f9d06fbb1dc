"""Builtin tick report: a readable summary (or JSON lines) on stdout and a JSON file."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from wyneos_core import hookimpl
from wyneos_core.model import TickReport
from wyneos_core.tick import TickContext


def summary_lines(report: TickReport, previous: TickReport | None = None) -> list[str]:
    """The per-tick summary printed by ``wyneos run``.

    Licence and rule failures are listed in full when they change from ``previous``
    (the tick before); while they hold, one line counts them.
    """
    counts = report.status_counts()
    status = " ".join(f"{k}={v}" for k, v in counts.items() if v)
    lines = [f"tick {report.tick}: {len(report.nodes)} nodes" + (f" ({status})" if status else "")
             + f" in {report.duration_ms:.1f} ms"]
    lines += _licence_lines(report, previous)
    lines += _rule_lines(report, previous)
    for t in report.transitions:
        if t.get("kind") == "status":
            lines.append(f"  status   {t['node_id']}: {t['from']} -> {t['to']}")
        elif t.get("kind") == "rule":
            lines.append(f"  alert    {t['rule_id']} on {t['node_id']}: {t['from']} -> {t['to']}")
    for a in report.actions:
        lines.append(f"  action   {a.type} {a.target} ({a.severity.value}) by {a.origin}: {a.reason}")
    undelivered = [d for d in report.deliveries if not d.delivered]
    if report.deliveries:
        lines.append(f"  deliver  {len(report.deliveries) - len(undelivered)}/{len(report.deliveries)} delivered"
                     + ("; unreachable: " + ", ".join(f"{d.target} ({d.reason})" for d in undelivered[:6])
                        if undelivered else ""))
    rejected: dict[tuple[str, str, str], int] = {}
    for r in report.heartbeats_rejected:
        key = (r["node_id"], r["field"], r["reason"])
        rejected[key] = rejected.get(key, 0) + 1
    for (node_id, field, reason), n in list(rejected.items())[:8]:
        lines.append(f"  reject   {node_id}: {field}: {reason}" + (f" (x{n})" if n > 1 else ""))
    if len(rejected) > 8:
        lines.append(f"  reject   ... and {len(rejected) - 8} more kinds of rejected heartbeat")
    for p in report.partitions:
        lines.append(f"  partition {len(p)} node(s) cut off from the orchestrator: {', '.join(p[:6])}")
    for e in report.errors:
        lines.append(f"  error    plugin {e.plugin} in {e.hook}: {e.error}")
    for n in report.notes:
        lines.append(f"  note     {n}")
    return lines


def _licence_key(report: TickReport | None) -> dict[str, tuple[bool, str, bool]]:
    if report is None:
        return {}
    return {r.node_id: (r.valid, r.reason, r.in_grace) for r in report.licences.values() if not r.valid or r.in_grace}


def _licence_lines(report: TickReport, previous: TickReport | None) -> list[str]:
    now = _licence_key(report)
    if not now:
        return []
    before = _licence_key(previous)
    changed = [node_id for node_id in sorted(now) if before.get(node_id) != now[node_id]]
    lines = []
    for node_id in changed:
        r = report.licences[node_id]
        state = "in grace" if r.valid else "INVALID"
        lines.append(f"  licence  {node_id}: {state} {r.reason} - {r.detail}")
    held = len(now) - len(changed)
    if held:
        reasons: dict[str, int] = {}
        for node_id, (valid, reason, _grace) in now.items():
            if node_id not in changed:
                label = f"{reason} (in grace)" if valid else reason
                reasons[label] = reasons.get(label, 0) + 1
        lines.append(f"  licence  still failing on {held} node(s): "
                     + ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())))
    return lines


def _failed_by_rule(report: TickReport | None) -> dict[str, list[str]]:
    failed: dict[str, list[str]] = {}
    for r in report.results if report is not None else ():
        failed.setdefault(r.rule_id, []).append(r.node_id)
    return failed


def _rule_lines(report: TickReport, previous: TickReport | None) -> list[str]:
    failed = _failed_by_rule(report)
    before = _failed_by_rule(previous)
    lines = []
    for rule_id, node_ids in sorted(failed.items()):
        node_ids.sort()
        if sorted(before.get(rule_id, [])) == node_ids:
            lines.append(f"  rule     {rule_id}: still failing on {len(node_ids)} node(s)")
            continue
        shown = ", ".join(node_ids[:8]) + (" ..." if len(node_ids) > 8 else "")
        lines.append(f"  rule     {rule_id}: failed on {len(node_ids)} node(s): {shown}")
    return lines


def write_json_atomic(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(data, separators=(",", ":")))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@hookimpl(trylast=True)
def wyneos_tick_report(ctx: TickContext, report: TickReport) -> None:
    settings = ctx.config["report"]
    mode = settings["stdout"]
    if mode == "summary":
        # last_report is still the tick before: it is replaced once every report hook ran
        print("\n".join(summary_lines(report, ctx.orchestrator.last_report)), flush=True)
    limit = settings["max_nodes_in_file"]
    data = None
    if mode == "json":
        data = report.to_dict(limit)
        print(json.dumps(data, separators=(",", ":")), flush=True, file=sys.stdout)
    if settings["json_path"]:
        path = ctx.config.resolve(settings["json_path"])
        try:
            write_json_atomic(path, data if data is not None else report.to_dict(limit))
        except OSError as exc:  # say it now: the report of this tick is already printed
            print(f"wyneos: cannot write report.json_path {path}: {exc.strerror or exc}", file=sys.stderr)
            raise
