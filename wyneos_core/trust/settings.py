"""The trust step's settings: the ``trust`` section of the config, checked once.

Defaults are written in ``schemas/config.schema.json`` (the one place defaults live)
and explained in ``docs/trust.md``. This module turns the validated section into a
frozen object with arrays ready for the step, and checks what the schema cannot
(thresholds in order, ``leave`` below ``enter``, tiers named right).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from wyneos_core.trust.tiers import TIER_NAMES, Tier, tier_rank

__all__ = ["SIGNALS", "TrustSettings", "TrustSettingsError"]

#: the behaviour signals, in the order of the evidence arrays
SIGNALS: Final = ("heartbeat", "compliance", "licence", "acknowledgements", "refusals", "witness")


class TrustSettingsError(ValueError):
    """A ``trust`` setting that cannot be used; ``field`` is its dotted path."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"trust.{field}: {reason}")


@dataclass(frozen=True, slots=True)
class TrustSettings:
    """The validated ``trust`` section (see ``docs/trust.md`` for every field)."""

    forgetting: float
    weights: tuple[float, ...]            # per signal, in ``SIGNALS`` order
    behaviour_weight: float
    peer_weight: float
    teleport: float
    tolerance: float
    max_iterations: int
    saturation: float
    smoothing: float
    enter: np.ndarray                     # per tier rank
    leave: np.ndarray                     # per tier rank
    licence_cap: float
    attested: frozenset[str]
    features: dict[str, int]              # feature -> minimum tier rank
    probation_ticks: int
    admission_file: str | None
    witness_weights: np.ndarray           # per tier rank: weight as a consensus witness

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> TrustSettings:
        weights = section["weights"]
        for name in SIGNALS:
            if name not in weights:
                raise TrustSettingsError(f"weights.{name}", "missing")
        if sum(weights[name] for name in SIGNALS) <= 0:
            raise TrustSettingsError("weights", "at least one signal weight must be above 0")
        if section["behaviour_weight"] + section["peer_weight"] <= 0:
            raise TrustSettingsError("peer_weight", "behaviour_weight + peer_weight must be above 0")
        tiers = section["tiers"]
        enter = [0.0]
        leave = [0.0]
        for name in TIER_NAMES[1:]:
            t = tiers[name]
            if not t["leave"] < t["enter"]:
                raise TrustSettingsError(f"tiers.{name}.leave",
                                         f"must be below enter ({t['enter']}) for hysteresis, got {t['leave']}")
            if t["enter"] < enter[-1] or t["leave"] < leave[-1]:
                raise TrustSettingsError(f"tiers.{name}", "thresholds must not fall below the tier beneath")
            enter.append(float(t["enter"]))
            leave.append(float(t["leave"]))
        if section["licence_cap"] >= tiers["probation"]["leave"]:
            raise TrustSettingsError("licence_cap", "must be below tiers.probation.leave, or an invalid licence "
                                     "would not cap the node at untrusted")
        features: dict[str, int] = {}
        for feature, tier in section["features"].items():
            rank = tier_rank(tier)
            if rank is None:
                raise TrustSettingsError(f"features.{feature}",
                                         f"unknown tier {tier!r} (tiers: {', '.join(TIER_NAMES)})")
            features[feature] = rank
        return cls(
            forgetting=float(section["forgetting"]),
            weights=tuple(float(weights[name]) for name in SIGNALS),
            behaviour_weight=float(section["behaviour_weight"]),
            peer_weight=float(section["peer_weight"]),
            teleport=float(section["peer"]["teleport"]),
            tolerance=float(section["peer"]["tolerance"]),
            max_iterations=int(section["peer"]["max_iterations"]),
            saturation=float(section["peer"]["saturation"]),
            smoothing=float(section["peer"]["smoothing"]),
            enter=np.array(enter), leave=np.array(leave),
            licence_cap=float(section["licence_cap"]),
            attested=frozenset(section["attested"]),
            features=features,
            probation_ticks=int(section["admission"]["probation_ticks"]),
            admission_file=section["admission"]["rules"],
            witness_weights=np.array([float(section["witness_weights"][name]) for name in TIER_NAMES]),
        )

    def tier_of_feature(self, feature: str) -> Tier | None:
        rank = self.features.get(feature)
        return None if rank is None else Tier(rank)
