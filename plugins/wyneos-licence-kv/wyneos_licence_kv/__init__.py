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

__all__ = ["KVLicenceSource", "LicenceRegistry", "WYNEOS_SETTINGS_SCHEMA", "wyneos_licence_sources"]
__version__ = "0.1.0"
__wyneos_name__ = "licence-kv"  # registered under its entry-point name however it is loaded

#: ``plugins.settings.licence-kv``, checked by the core before the first tick
WYNEOS_SETTINGS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["path"],
    "properties": {
        "path": {"type": "string", "minLength": 1},
        "name": {"type": "string", "minLength": 1},
    },
}


@hookimpl
def wyneos_check_config(config: Any) -> list[tuple[str, str]]:
    """The registry file must exist (the source opens it read-only; a typo would fail every node)."""
    settings = config.plugin_settings("licence-kv")
    if not settings.get("path") or not isinstance(settings["path"], str):
        return []  # the settings schema says what is wrong
    path = config.resolve(settings["path"])
    if not path.is_file():
        return [("plugins.settings.licence-kv.path", f"no such registry file: {path}")]
    return []


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
