"""Why a node has its trust: ``TrustEngine.explain``'s breakdown (``wyneos explain``).

Each signal's evidence, score, weight, pull on the combined score and change since the
last tick (from the last evidence the engine keeps in quarters), the peer score and the
admission state with its rule and reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from wyneos_core.trust.persist import ADMISSION_NAMES
from wyneos_core.trust.settings import SIGNALS
from wyneos_core.trust.tiers import TIER_NAMES

if TYPE_CHECKING:
    from wyneos_core.trust.engine import TrustEngine

__all__ = ["explain_slot"]


def explain_slot(engine: TrustEngine, node_id: str) -> dict[str, Any] | None:
    """The breakdown of ``node_id`` (None: unknown, or the orchestrator)."""
    slot = engine.index.get(node_id)
    if slot is None or slot == 0:
        return None
    st = engine.settings
    r, s = engine.evidence.r[:, slot], engine.evidence.s[:, slot]
    scores = (r + 1.0) / (r + s + 2.0)
    last = engine._last_evidence
    if last is not None and slot < last.shape[2]:
        pos, neg = last[0, :, slot] / 4.0, last[1, :, slot] / 4.0
        r0, s0 = (r - pos) / st.forgetting, (s - neg) / st.forgetting
        prev = (r0 + 1.0) / (r0 + s0 + 2.0)
    else:
        prev = scores
    wsum = sum(st.weights)
    share_b = st.behaviour_weight / (st.behaviour_weight + st.peer_weight)
    signals = []
    for i, name in enumerate(SIGNALS):
        w = st.weights[i]
        signals.append({
            "signal": name, "weight": w, "positive": round(float(engine.evidence.r[i, slot]), 4),
            "negative": round(float(engine.evidence.s[i, slot]), 4), "score": round(float(scores[i]), 4),
            # how far this signal pulls the combined score away from the neutral 0.5 prior
            "pull": round(float(share_b * w * (scores[i] - 0.5) / wsum), 4),
            "change": round(float(scores[i] - prev[i]), 4),
        })
    behaviour = float(np.dot(st.weights, scores) / wsum)
    reason = engine.admission_reason.get(slot)
    return {
        "node_id": node_id, "trust": round(float(engine.trust[slot]), 4), "tier": TIER_NAMES[engine.tier[slot]],
        "behaviour": round(behaviour, 4), "behaviour_weight": st.behaviour_weight,
        "peer": round(float(engine.peer[slot]), 4), "peer_weight": st.peer_weight,
        "global_trust": float(engine.global_trust[slot]),
        "attested": node_id in st.attested,
        "admission": ADMISSION_NAMES[engine.admission[slot]],
        "admission_rule": reason[0] if reason else None, "admission_reason": reason[1] if reason else None,
        "signals": signals,
    }
