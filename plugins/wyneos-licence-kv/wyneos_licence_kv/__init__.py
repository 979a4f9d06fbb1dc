"""A WyneOS licence source backed by a key-value licence registry on SQLite.

Registered in the ``wyneos`` entry-point group as ``licence-kv``; it offers a source
named ``kv`` when ``plugins.settings.licence-kv.path`` names the registry file. The
schema and the write API are in ``wyneos_licence_kv.registry``; writers in several
processes at once are safe (WAL, ``BEGIN IMMEDIATE``, busy timeout).
"""

from __future__ import annotations

from typing import Any

from wyneos_core import hookimpl
from wyneos_licence_kv.registry import KVLicenceSource, LicenceRegistry

__all__ = ["KVLicenceSource", "LicenceRegistry", "wyneos_licence_sources"]
__version__ = "0.1.0"


@hookimpl
def wyneos_licence_sources(config: Any) -> Any:
    settings = config.plugin_settings("licence-kv")
    if not settings.get("path"):
        return None
    return KVLicenceSource(config.resolve(settings["path"]), name=settings.get("name", "kv"))
