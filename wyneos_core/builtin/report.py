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


def summary_lines(report: TickReport) -> list[str]:
    """The per-tick summary printed by ``wyneos run``."""
    counts = report.status_counts()
    status = " ".join(f"{k}={v}" for k, v in counts.items() if v)
    lines = [f"tick {report.tick}: {len(report.nodes)} nodes ({status}) in {report.duration_ms:.1f} ms"]
    bad_licences = sorted((r for r in report.licences.values() if not r.valid or r.in_grace), key=lambda r: r.node_id)
    for r in bad_licences:
        state = "in grace" if r.valid else "INVALID"
        lines.append(f"  licence  {r.node_id}: {state} {r.reason} - {r.detail}")
    failed = {}
    for r in report.results:
        failed.setdefault(r.rule_id, []).append(r.node_id)
    for rule_id, node_ids in sorted(failed.items()):
        shown = ", ".join(sorted(node_ids)[:8]) + (" ..." if len(node_ids) > 8 else "")
        lines.append(f"  rule     {rule_id}: failed on {len(node_ids)} node(s): {shown}")
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
    if report.heartbeats_rejected:
        lines.append(f"  reject   {len(report.heartbeats_rejected)} heartbeat(s); first: "
                     f"{report.heartbeats_rejected[0]['node_id']}: {report.heartbeats_rejected[0]['field']}: "
                     f"{report.heartbeats_rejected[0]['reason']}")
    for p in report.partitions:
        lines.append(f"  partition {len(p)} node(s) cut off from the orchestrator: {', '.join(p[:6])}")
    for e in report.errors:
        lines.append(f"  error    plugin {e.plugin} in {e.hook}: {e.error}")
    for n in report.notes:
        lines.append(f"  note     {n}")
    return lines


def write_json_atomic(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@hookimpl(trylast=True)
def wyneos_tick_report(ctx: TickContext, report: TickReport) -> None:
    settings = ctx.config["report"]
    mode = settings["stdout"]
    if mode == "summary":
        print("\n".join(summary_lines(report)), flush=True)
    elif mode == "json":
        print(json.dumps(report.to_dict(), separators=(",", ":")), flush=True, file=sys.stdout)
    if settings["json_path"]:
        write_json_atomic(ctx.config.resolve(settings["json_path"]), report.to_dict())
