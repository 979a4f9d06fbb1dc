"""Graduated enforcement: modes, exceptions, disruption budgets, operator overrides,
shadow rulesets and the decision log (docs/enforcement.md).

One concern per module: ``modes``, ``selectors``, ``exceptions``, ``budgets``,
``overrides``, ``gate`` (the tick's screening, called by the decide step), ``shadow``,
``decision_log`` and ``journal`` (after the decide step), ``replay``.
"""

from __future__ import annotations

from wyneos_core.enforcement.gate import HOLDS, Gate, gate_of
from wyneos_core.enforcement.journal import Journal, journal_of
from wyneos_core.enforcement.modes import AUDIT, ENFORCE, WARN
from wyneos_core.enforcement.overrides import OPERATOR

__all__ = ["AUDIT", "ENFORCE", "OPERATOR", "WARN", "Gate", "HOLDS", "Journal", "gate_of", "journal_of"]
