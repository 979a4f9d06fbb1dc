"""Graduated enforcement: modes, exceptions, disruption budgets, operator overrides,
shadow rulesets and the decision log (docs/enforcement.md).

One concern per module: ``modes``, ``selectors``, ``exceptions``, ``budgets``,
``overrides``, ``check`` (the config section's checks), ``gate`` (the tick's
screening, called by the decide step), ``shadow``, ``decision_log`` and ``journal``
(after the decide step), ``replay``. Import the module you need; this package imports
nothing, so the config can check its section without loading the rest.
"""
