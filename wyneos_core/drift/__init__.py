"""Drift: declared state (config or signed manifests) against what nodes report (docs/drift.md)."""

from wyneos_core.drift.declared import (
    FIELDS,
    MANIFEST_FORMAT,
    Declaration,
    DeclarationError,
    declaration_from,
    load_manifests,
    seal_manifest,
)
from wyneos_core.drift.engine import STATES, DriftEngine, DriftStep, DriftView

__all__ = ["FIELDS", "MANIFEST_FORMAT", "STATES", "Declaration", "DeclarationError", "DriftEngine", "DriftStep",
           "DriftView", "declaration_from", "load_manifests", "seal_manifest"]
