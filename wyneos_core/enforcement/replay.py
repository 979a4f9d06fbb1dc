"""``wyneos replay``: the logged inputs of a decision log re-evaluated with other rulesets.

Each tick's ``inputs`` record (nodes and licence results, written while
``enforcement.decision_log.inputs`` is on) is run, in order, through the given rulesets
(so ``for:`` durations count as they did), and compared with what the live rulesets
gave in that tick (the record's ``failing`` rules and ``proposed`` actions), for the
rulesets of the same names: the nodes that would newly fail or pass each rule, the
actions that would be added or removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from wyneos_core.enforcement.decision_log import read_log
from wyneos_core.enforcement.shadow import diff, evaluate, licences_from, nodes_from

__all__ = ["ReplayError", "render", "replay"]


class ReplayError(ValueError):
    """A log that cannot be replayed (names the file and the line or the tick)."""


def replay(log: Iterable[Path], rulesets: Sequence[str], base_dir: Path | None = None) -> dict[str, Any]:
    """``{"ticks": [{tick, digest, rules, totals}...], "totals": ..., "replayed": N}``;
    only ticks with a difference are listed."""
    from wyneos_core.rules.runtime import RulesetRunner

    runner = RulesetRunner(list(rulesets), base_dir=base_dir, reload=False)
    try:
        names = [r.name for r in runner.rulesets()]
        ticks: list[dict[str, Any]] = []
        totals = {"newly_failing": 0, "newly_passing": 0, "actions_added": 0, "actions_removed": 0}
        replayed = 0
        try:
            for record in read_log(log):
                if record.get("kind") != "inputs":
                    continue
                if "nodes" not in record:
                    raise ReplayError(f"tick {record.get('tick')}: logged without its inputs "
                                      "(enforcement.decision_log.inputs was off)")
                nodes = nodes_from(record["nodes"])
                licences = licences_from(record.get("licences") or [])
                candidate = evaluate(runner, nodes, licences, int(record["tick"]), float(record["time"]))
                failing = {rule: set(ids) for rule, ids in (record.get("failing") or {}).items()}
                actions = {(origin.removeprefix("ruleset:"), type_, target)
                           for type_, target, origin in record.get("proposed") or [] if origin.startswith("ruleset:")}
                result = diff((failing, actions), candidate, names)
                replayed += 1
                if any(result["totals"].values()):
                    ticks.append({"tick": record["tick"], "digest": record.get("digest"), **result})
                    for key, value in result["totals"].items():
                        totals[key] += value
        except (KeyError, TypeError) as exc:
            raise ReplayError(f"a record lacks or mistypes a field: {exc}") from None
        return {"rulesets": names, "replayed": replayed, "ticks": ticks, "totals": totals}
    finally:
        runner.close()


def render(result: dict[str, Any]) -> str:
    """The text ``wyneos replay`` and ``wyneos shadow`` print."""
    lines = []
    for tick in result.get("ticks", [result] if "rules" in result else []):
        if "tick" in tick:
            lines.append(f"tick {tick['tick']}:")
        for rule, d in sorted(tick["rules"].items()):
            parts = []
            for key, sign in (("actions_added", "+"), ("actions_removed", "-")):
                for a in d.get(key, []):
                    parts.append(f"{sign}{a['type']} {a['target']}")
                more = d.get(f"{key}_count", 0) - len(d.get(key, []))
                if more > 0:
                    parts.append(f"{sign}{more} more")
            for key, word in (("newly_failing", "newly failing"), ("newly_passing", "newly passing")):
                if d.get(key):
                    more = d.get(f"{key}_count", 0) - len(d[key])
                    parts.append(f"{word}: {', '.join(d[key])}" + (f" (+{more})" if more > 0 else ""))
            lines.append(f"  {rule}: " + "; ".join(parts))
    t = result.get("totals", {})
    head = f"replayed {result['replayed']} tick(s) with {', '.join(result['rulesets'])}: " if "replayed" in result else ""
    lines.append(f"{head}{t.get('actions_added', 0)} action(s) added, {t.get('actions_removed', 0)} removed; "
                 f"{t.get('newly_failing', 0)} newly failing, {t.get('newly_passing', 0)} newly passing")
    return "\n".join(lines) + "\n"
