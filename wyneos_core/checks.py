"""Startup checks of what plugins read from the config: refused before the first tick.

``check_plugins(config, pm)`` returns every mistake (located in the config file) and
every warning. Mistakes come from

* the ``WYNEOS_SETTINGS_SCHEMA`` a plugin declares for ``plugins.settings.<name>``;
* the ``wyneos_check_config`` hook of each plugin (the builtin licence plugin checks
  ``licence.sources``, ``licence.trusted_keys`` and ``licence.directory`` there);
* a plugin whose check itself raises (reported as that plugin's error).

Warnings: ``plugins.settings`` for a plugin that is not loaded (its settings are not
read by anything).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from wyneos_core.config import Config
from wyneos_core.diagnostics import schema_errors, sort_errors, suggest
from wyneos_core.model import PluginError
from wyneos_core.yamlio import LocatedError

__all__ = ["check_plugins", "SCHEMA_ATTRIBUTE"]

SCHEMA_ATTRIBUTE = "WYNEOS_SETTINGS_SCHEMA"
#: ``plugins.settings`` sections the core itself reads (``wyneos serve``'s settings, its relay)
CORE_SETTINGS = frozenset({"service", "relay"})


def _problems(config: Config, plugin: str, answer: Any) -> list[LocatedError]:
    if answer is None:
        return []
    items: Iterable[Any] = answer if isinstance(answer, (list, tuple)) else [answer]
    out = []
    for item in items:
        if isinstance(item, LocatedError):
            out.append(item)
        elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], str):
            out.append(config.error(item[0], item[1]))
        else:
            out.append(config.error(("plugins",), f"plugin {plugin!r}: wyneos_check_config returned "
                                    f"{type(item).__name__}, expected (field, message) pairs"))
    return out


def check_plugins(config: Config, pm: Any) -> tuple[list[LocatedError], list[str]]:
    """Every mistake in the settings the loaded plugins read, and warnings."""
    errors: list[LocatedError] = []
    warnings: list[str] = []
    settings = config["plugins"]["settings"]
    loaded = {name: plugin for name, plugin in pm.list_name_plugin() if plugin is not None}
    blocked = {name for name, plugin in pm.list_name_plugin() if plugin is None}
    with_schema: set[str] = set()
    for name, plugin in loaded.items():
        sch = getattr(plugin, SCHEMA_ATTRIBUTE, None)
        if isinstance(sch, dict) and (name in settings or sch.get("required")):
            path = ("plugins", "settings", name)
            found = schema_errors(config.located, sch, prefix=path, data=settings.get(name, {})) \
                if config.located is not None else []
            if name not in settings:  # the section is missing, yet the schema requires fields in it
                found = [config.error(path, f"plugin {name!r} needs this section: {e.reason} "
                                            f"(plugins.settings.{name} is missing)") for e in found]
            if found:
                with_schema.add(name)
                errors += found
    for name in settings:
        if name not in loaded and name not in blocked and name not in CORE_SETTINGS:
            warnings.append(f"{config.source}: plugins.settings.{name}: no plugin of that name is loaded, "
                            f"its settings are not read{suggest(name, loaded)}")
    failed: list[PluginError] = []
    for plugin, answer in pm.call_each("wyneos_check_config", failed, config=config, pluginmanager=pm):
        if plugin in with_schema:  # its schema errors say it already, and its own checks assume a good schema
            continue
        errors += _problems(config, plugin, answer)
    for e in failed:
        if e.plugin not in with_schema:
            errors.append(config.error(("plugins", "settings", e.plugin) if e.plugin in settings else ("plugins",),
                                       f"plugin {e.plugin!r} refused the config: {e.error}"))
    # a licence source a plugin could not make because of its settings: the settings' errors say why
    errors = [e for e in errors if not any(f"plugin {name!r} could not make its source" in e.reason
                                           for name in with_schema)]
    return sort_errors(errors), warnings
