"""The codes of the node table's coded columns (``nodetable``): status, trust tier and
licence state and reason, each a small integer by slot.

They sit below the table and its views (``nodeviews``), which both read them; import
them from ``wyneos_core.nodetable`` as before.
"""

from __future__ import annotations

from wyneos_core.model import LICENCE_REASON_TEXT, NodeStatus

__all__ = ["LICENCE_IN_GRACE", "LICENCE_INVALID", "LICENCE_REASONS", "LICENCE_UNCHECKED", "LICENCE_VALID",
           "OFFLINE", "ONLINE", "STALE", "STATUSES", "STATUS_CODE", "TIERS", "UNKNOWN"]

#: status codes, in the order of the ``status`` column's values
STATUSES: tuple[NodeStatus, ...] = (NodeStatus.ONLINE, NodeStatus.STALE, NodeStatus.OFFLINE, NodeStatus.UNKNOWN)
STATUS_CODE = {s: i for i, s in enumerate(STATUSES)}
ONLINE, STALE, OFFLINE, UNKNOWN = range(4)
#: the trust tiers the trust step gives, coded in the ``tier`` column (-1: none yet)
TIERS = ("untrusted", "probation", "trusted", "attested")
#: ``licence_state`` codes
LICENCE_UNCHECKED, LICENCE_INVALID, LICENCE_VALID, LICENCE_IN_GRACE = -1, 0, 1, 2
#: ``licence_reason`` codes: the reasons of ``licensing.reasons`` first, others appended as met
LICENCE_REASONS: list[str] = list(LICENCE_REASON_TEXT)
