"""Trust: every node's score and tier from its behaviour, its peers and its licence.

The arithmetic of the trust step (``docs/trust.md``); the builtin ``trust`` plugin
(``wyneos_core.builtin.trust``) runs it in the tick.
"""

from wyneos_core.trust.admission import AdmissionRules, load_admission
from wyneos_core.trust.eigentrust import EigenTrustResult, eigentrust, local_trust
from wyneos_core.trust.engine import Evidence, TrustEngine
from wyneos_core.trust.observations import MixedObservations, Observation, ObservationBatch, observations_of
from wyneos_core.trust.scores import TrustScores
from wyneos_core.trust.settings import SIGNALS, TrustSettings, TrustSettingsError
from wyneos_core.trust.tiers import TIER_NAMES, Tier, next_tiers, tier_rank

__all__ = [
    "SIGNALS",
    "TIER_NAMES",
    "AdmissionRules",
    "EigenTrustResult",
    "Evidence",
    "MixedObservations",
    "Observation",
    "ObservationBatch",
    "Tier",
    "TrustEngine",
    "TrustScores",
    "TrustSettings",
    "TrustSettingsError",
    "eigentrust",
    "load_admission",
    "local_trust",
    "next_tiers",
    "observations_of",
    "tier_rank",
]
