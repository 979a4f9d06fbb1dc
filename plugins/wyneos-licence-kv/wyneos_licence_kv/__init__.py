"""A WyneOS licence source backed by a key-value licence registry on SQLite.

Registered in the ``wyneos`` entry-point group as ``licence-kv``; it offers a source
named ``kv`` when ``plugins.settings.licence-kv.path`` names the registry file. The
schema and the write API are in ``wyneos_licence_kv.registry``; writers in several
processes at once are safe (WAL, ``BEGIN IMMEDIATE``, busy timeout). The source opens
the file read-only with a short lock wait, and a row it cannot use makes only its
nodes' licences ``malformed``.
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
    path, name = settings["path"], settings.get("name", "kv")
    if not isinstance(path, str):
        raise ValueError(f"plugins.settings.licence-kv.path: expected a file path, got {path!r:.40}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"plugins.settings.licence-kv.name: expected a non-empty string, got {name!r:.40}")
    return KVLicenceSource(config.resolve(path), name=name)
