"""The orchestrator's YAML configuration: loading, validation, defaults.

The format is the JSON Schema in ``schemas/config.schema.json`` (documented field by
field in ``docs/configuration.md``). A bad config is refused with the file, line and
field at fault; defaults come from the schema itself, so the schema is the one place
they are written.
"""

from __future__ import annotations

import copy
import json
import math
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from wyneos_core.yamlio import Located, LocatedError, load_yaml

__all__ = ["Config", "ConfigError", "config_errors", "load_config", "schema", "DEMO_CONFIG"]

DEMO_CONFIG = resources.files("wyneos_core") / "demo" / "demo.yaml"


#: largest cluster a 'full' mesh topology is built for (it has n * (n - 1) / 2 edges)
MAX_FULL_MESH = 2000


class ConfigError(LocatedError):
    """A configuration that cannot be used; names the file, line and field.

    ``errors`` holds every mistake found (this error is the first of them); ``str()``
    gives one line per mistake.
    """

    errors: list[LocatedError]

    def __init__(self, reason: str, **where: Any) -> None:
        super().__init__(reason, **where)
        self.errors = [self]

    @classmethod
    def of(cls, errors: list[LocatedError]) -> ConfigError:
        """One error carrying all of ``errors`` (at least one)."""
        first = errors[0]
        out = cls(first.reason, file=first.file, line=first.line, column=first.column, field=first.field)
        out.errors = [out, *errors[1:]]
        return out

    def __str__(self) -> str:
        errors = getattr(self, "errors", None)
        if not errors or len(errors) == 1:
            return super().__str__()
        return "\n".join(LocatedError.__str__(e) for e in errors)


@cache
def schema(name: str = "config") -> dict[str, Any]:
    text = (resources.files("wyneos_core") / "schemas" / f"{name}.schema.json").read_text()
    return json.loads(text)


class Config:
    """A validated configuration with every default filled in.

    Sections are plain dicts: ``config["heartbeat"]["offline_after"]``. ``source`` is
    the file it came from (or ``<defaults>``), ``base_dir`` the directory relative
    paths in it are resolved against.
    """

    __slots__ = ("data", "source", "base_dir", "located")

    def __init__(self, data: dict[str, Any], source: str = "<defaults>", base_dir: Path | None = None,
                 located: Located | None = None):
        self.data = data
        self.source = source
        self.base_dir = base_dir or Path.cwd()
        #: the file as loaded, with the position of every value (None: not from a file)
        self.located = located

    def error(self, path: Any, reason: str) -> LocatedError:
        """An error at ``path`` (a tuple such as ``("licence", "trusted_keys", 0)`` or a
        dotted name), with the file, line and column it stands at in the config file."""
        if isinstance(path, str):
            path = tuple(int(p) if p.isdigit() else p for p in path.replace("[", ".").replace("]", "").split("."))
        if self.located is None:
            from wyneos_core.yamlio import field_name

            return LocatedError(reason, file=self.source, field=field_name(path) or None)
        return self.located.error(tuple(path), reason)

    def given(self, path: tuple[Any, ...]) -> bool:
        """Whether the config file itself sets ``path`` (not a default)."""
        value: Any = self.located.data if self.located is not None else None
        for part in path:
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
                value = value[part]
            else:
                return False
        return True

    def __getitem__(self, section: str) -> Any:
        return self.data[section]

    def get(self, section: str, default: Any = None) -> Any:
        return self.data.get(section, default)

    def resolve(self, path: str | Path) -> Path:
        """A path from the config, relative to the config file's directory."""
        p = Path(path)
        return p if p.is_absolute() else self.base_dir / p

    def plugin_settings(self, name: str) -> dict[str, Any]:
        return self.data["plugins"]["settings"].get(name, {})

    @classmethod
    def defaults(cls) -> Config:
        return cls(fill_defaults(schema(), {}))

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.data)


def fill_defaults(sch: dict[str, Any], data: Any) -> Any:
    """Fill in schema ``default`` values, recursively, without touching given values."""
    if not isinstance(data, dict) or sch.get("type") != "object":
        if isinstance(data, list) and isinstance(sch.get("items"), dict):
            return [fill_defaults(sch["items"], item) for item in data]
        return data
    out = dict(data)
    for key, sub in sch.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = fill_defaults(sub, out[key])
    return out


def load_config(path: str | Path | None = None, *, text: str | None = None, overrides: dict | None = None) -> Config:
    """Load and validate a config file (or ``text``); ``None`` gives the demo config.

    :raises ConfigError: with file, line and field for any mistake.
    """
    if path is None and text is None:
        located = load_yaml(str(DEMO_CONFIG), text=DEMO_CONFIG.read_text())
        base_dir = Path.cwd()
    else:
        try:
            located = load_yaml(path if path is not None else "<config>", text=text)
        except LocatedError as exc:
            raise ConfigError(exc.reason, file=exc.file, line=exc.line, column=exc.column, field=exc.field) from None
        base_dir = Path(path).resolve().parent if path is not None else Path.cwd()
    return _build(located, base_dir, overrides or {})


def _build(located: Located, base_dir: Path, overrides: dict) -> Config:
    errors = config_errors(located)
    if errors:
        raise ConfigError.of(errors)
    data = fill_defaults(schema(), located.data)
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        data[section][key] = value
    return Config(data, source=located.file, base_dir=base_dir, located=located)


def config_errors(located: Located) -> list[LocatedError]:
    """Every mistake in a loaded config file, in file order (empty: it is usable)."""
    from wyneos_core.diagnostics import schema_errors, sort_errors

    if located.data is None:
        located.data = {}
    if not isinstance(located.data, dict):
        return [ConfigError("a config file must be a mapping of sections", file=located.file, line=1)]
    errors = schema_errors(located, schema())
    errors += _finite_errors(located, located.data)
    if errors:  # the semantic checks need values of the right types
        return sort_errors(errors)
    data = fill_defaults(schema(), located.data)
    return sort_errors(_semantic_errors(located, data))


def _finite_errors(located: Located, value: Any, path: tuple = ()) -> list[LocatedError]:
    if isinstance(value, float) and not math.isfinite(value):
        return [located.error(path, f"must be a finite number, got {value!r}")]
    out: list[LocatedError] = []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _finite_errors(located, item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _finite_errors(located, item, path + (index,))
    return out


def _semantic_errors(located: Located, data: dict[str, Any]) -> list[LocatedError]:
    out: list[LocatedError] = []
    hb = data["heartbeat"]
    if hb["offline_after"] < hb["stale_after"]:
        out.append(located.error(("heartbeat", "offline_after"),
                                 f"must be at least stale_after ({hb['stale_after']}), got {hb['offline_after']}"))
    seen: dict[str, int] = {}
    for index, node in enumerate(data["nodes"]):
        if node["id"] == "orchestrator":
            out.append(located.error(("nodes", index, "id"), "'orchestrator' is reserved (the origin of the mesh)"))
            continue
        if node["id"] in seen:
            out.append(located.error(("nodes", index, "id"),
                                     f"duplicate node id {node['id']!r} (first at nodes[{seen[node['id']]}])"))
            continue
        seen[node["id"]] = index
    names: dict[str, int] = {}
    for index, metric in enumerate(data["telemetry"]["metrics"]):
        if metric["name"] in names:
            out.append(located.error(("telemetry", "metrics", index, "name"), f"duplicate metric {metric['name']!r} "
                                     f"(first at telemetry.metrics[{names[metric['name']]}])"))
        names.setdefault(metric["name"], index)
        if not metric["min"] < metric["max"]:
            out.append(located.error(("telemetry", "metrics", index, "max"),
                                     f"must be more than min ({metric['min']}), got {metric['max']}"))
    if data["mesh"]["topology"] == "full" and len(data["nodes"]) > MAX_FULL_MESH:
        out.append(located.error(("mesh", "topology"),
                                 f"'full' links every node to every other: at most {MAX_FULL_MESH} nodes, "
                                 f"this config has {len(data['nodes'])}"))
    from wyneos_core.enforcement.check import section_errors

    out += [located.error(path, reason) for path, reason in section_errors(data["enforcement"])]
    if data["mesh"]["topology"] == "explicit":
        known = set(seen) | {"orchestrator"}
        for index, (a, b) in enumerate(data["mesh"]["edges"]):
            for end in (a, b):
                if end not in known:
                    from wyneos_core.diagnostics import suggest

                    out.append(located.error(("mesh", "edges", index),
                                             f"edge names unknown node {end!r}" + suggest(end, known)))
    return out


def _check_semantics(located: Located, data: dict[str, Any]) -> None:
    """Raise the first semantic mistake (for callers that check a config inside another file)."""
    from wyneos_core.diagnostics import sort_errors

    errors = sort_errors(_finite_errors(located, located.data) + _semantic_errors(located, data))
    if errors:
        raise errors[0]
