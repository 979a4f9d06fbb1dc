"""The reason codes of a ``LicenceResult``, each with a one-line meaning.

A result is ``valid`` with reason ``ok``; valid with ``in_grace`` set for a licence
past its expiry but inside its grace period (reason ``expired``) or one whose source is
unreachable under the fail-open policy (reason ``source_unavailable``); otherwise
invalid with one of the codes below.
"""

from __future__ import annotations

from typing import Final

from wyneos_core.model import LICENCE_REASON_TEXT

__all__ = ["REASONS", "OK"]

OK: Final = "ok"

#: code -> what it means. Enforcement maps codes to actions
#: (``wyneos_core.builtin.enforcement.LICENCE_ACTIONS``). Kept in the model layer, where
#: the node table's ``licence_reason`` column codes them.
REASONS: Final[dict[str, str]] = LICENCE_REASON_TEXT
