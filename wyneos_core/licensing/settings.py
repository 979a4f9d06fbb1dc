"""The ``licence`` section of the config, resolved into typed settings.

Paths are resolved against the config file's directory. See docs/licences.md for each
field; defaults live in ``schemas/config.schema.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LicenceSettings"]


@dataclass(slots=True)
class LicenceSettings:
    sources: list[str] = field(default_factory=lambda: ["file"])
    directory: Path = Path("licences")
    mapping: dict[str, str] = field(default_factory=dict)
    trusted_keys: list[Path] = field(default_factory=list)
    product: str = "wyneos"
    customer: str | None = None
    required_features: frozenset[str] = frozenset()
    tiers: dict[str, list[str]] = field(default_factory=dict)
    revocations: Path | None = None
    ledger: Path | None = None
    cache_ttl: float = 300.0
    rescan: float = 5.0
    source_timeout: float = 10.0
    outage_policy: str = "fail-open"
    outage_grace: float = 3600.0
    rollback_hold: float = 3600.0
    count_offline_seats: bool = False

    @classmethod
    def from_config(cls, section: Mapping[str, Any], resolve: Any = Path) -> LicenceSettings:
        """Build from ``config["licence"]`` (defaults already filled in by the schema)."""
        outage = section.get("outage", {})
        return cls(
            sources=list(section.get("sources", ["file"])),
            directory=resolve(section.get("directory", "licences")),
            mapping=dict(section.get("map", {})),
            trusted_keys=[resolve(p) for p in section.get("trusted_keys", [])],
            product=section.get("product", "wyneos"),
            customer=section.get("customer"),
            required_features=frozenset(section.get("required_features", [])),
            tiers={k: list(v) for k, v in section.get("tiers", {}).items()},
            revocations=resolve(section["revocations"]) if section.get("revocations") else None,
            ledger=resolve(section["ledger"]) if section.get("ledger") else None,
            cache_ttl=float(section.get("cache_ttl", 300.0)),
            rescan=float(section.get("rescan", 5.0)),
            source_timeout=float(section.get("source_timeout", 10.0)),
            outage_policy=outage.get("policy", "fail-open"),
            outage_grace=float(outage.get("grace", 3600.0)),
            rollback_hold=float(section.get("rollback_hold", 3600.0)),
            count_offline_seats=bool(section.get("count_offline_seats", False)),
        )
