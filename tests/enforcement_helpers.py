"""Shared by the enforcement tests: a healing ruleset ``hot`` that isolates hot nodes."""

from __future__ import annotations

HOT = """
ruleset: hot
stage: healing
rules:
  - id: isolate-hot
    description: hot nodes are isolated
    when: node.load > {threshold}
    then: [{{isolate: {{}}}}]
"""


def hot(threshold: float = 0.9, more: str = "") -> str:
    """The ``hot`` ruleset isolating nodes above ``threshold`` load, with ``more`` rules after."""
    return HOT.format(threshold=threshold) + more
