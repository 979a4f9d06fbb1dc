"""The report's trust line counts every move, not the listed sample (was `1000+ probation -> untrusted`)."""

from __future__ import annotations

from types import SimpleNamespace

from wyneos_core.builtin.report import _trust_lines


def test_the_trust_line_counts_every_move_when_the_list_is_capped() -> None:
    listed = [{"node_id": f"n{i:05d}", "from": "probation", "to": "untrusted", "trust": 0.1} for i in range(1000)]
    report = SimpleNamespace(trust={"changes": listed, "changes_total": 4600, "admission": [],
                                    "moves": {"probation -> untrusted": 4500, "trusted -> probation": 100}})
    lines = _trust_lines(report)
    assert lines == ["  trust    4500 probation -> untrusted (n00000, n00001, n00002, +4497)",
                     "  trust    100 trusted -> probation"]
    assert not any("+ " in line.split("(")[0] or "1000+" in line for line in lines)


def test_a_report_without_move_counts_counts_what_it_lists() -> None:
    listed = [{"node_id": f"n{i}", "from": "untrusted", "to": "probation", "trust": 0.5} for i in range(4)]
    lines = _trust_lines(SimpleNamespace(trust={"changes": listed, "changes_total": 4, "admission": []}))
    assert lines == ["  trust    4 untrusted -> probation (n0, n1, n2, +1)"]
