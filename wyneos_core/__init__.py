"""WyneOS core: keeps a fleet of distributed nodes governed, healthy and licensed."""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: the pluggy project name: hook markers and the entry-point group (``wyneos_core.hookspecs``)
PROJECT_NAME = "wyneos"

#: Marker for hook implementations: ``@wyneos_core.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

from wyneos_core.model import (  # noqa: E402
    ORIGIN,
    Action,
    ActionType,
    Delivery,
    Heartbeat,
    LicenceResult,
    Node,
    NodeStatus,
    PluginError,
    RuleResult,
    Severity,
    TickReport,
)

__all__ = [
    "ORIGIN",
    "Action",
    "ActionType",
    "Delivery",
    "Heartbeat",
    "LicenceResult",
    "Node",
    "NodeStatus",
    "PluginError",
    "RuleResult",
    "Severity",
    "TickReport",
    "__version__",
    "hookimpl",
]
