"""``wyneos validate FILE...``: every mistake `run`, `simulate` and `check` would refuse, at once.

Each file is recognised by its content:

* a **ruleset** has ``rules`` (and ``ruleset``/``stage``);
* a **ruleset test file** has ``tests``;
* a **scenario** has ``scenario``;
* anything else is a **config**.

Nothing runs: no tick, no state file, no licence source asked, no plugin configured.
A config is checked against the schema, then (when its shape is right) the plugins it
would load check the settings they read (``WYNEOS_SETTINGS_SCHEMA``,
``wyneos_check_config``: licence keys, sources and directory, plugin settings), and every
ruleset it names is loaded, so its mistakes are reported in the ruleset's own file.
A ruleset of the durable engine is also handed to durable-rules (in a worker process),
as ``wyneos check`` does.

Every mistake is one line ``file:line:column: field: reason`` with "did you mean"
where a name is close to a known one. Exit 0 when every file is valid, 1 otherwise, 2
for a usage error. ``--format json`` prints one document.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from wyneos_core.yamlio import Located, LocatedError, load_yaml

__all__ = ["register", "validate_file", "validate_paths"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check configs, scenarios, rulesets and ruleset tests without running them")
    p.add_argument("paths", nargs="+", metavar="FILE", help="files to check (directories: their *.yaml, *.yml)")
    p.add_argument("--format", choices=["text", "json"], default="text", help="output format (default text)")
    p.add_argument("--no-plugins", action="store_true",
                   help="check configs with the builtin plugins only (installed plugins not loaded)")
    p.set_defaults(func=cmd_validate)


def kind_of(located: Located) -> str:
    data = located.data
    if not isinstance(data, dict):
        return "config"
    if "tests" in data:
        return "ruleset-tests"
    if "rules" in data or ("stage" in data and "ruleset" in data):
        return "ruleset"
    if "scenario" in data:
        return "scenario"
    return "config"


def _ruleset_errors(path: str | Path, *, engine: str | None = None, default_engine: str = "native",
                    text: str | None = None) -> list[LocatedError]:
    from wyneos_core.rules.loader import load_ruleset, start_durable

    found: list[Any] = []
    try:
        ruleset = load_ruleset(path, text=text, engine=engine, default_engine=default_engine, errors=found)
    except LocatedError as exc:
        return found or [exc]
    if ruleset.engine == "durable":
        try:
            start_durable(ruleset, timeout=60.0).close()
        except LocatedError as exc:
            return [exc]
    return []


def _config_errors(path: Path, located: Located, plugins: bool) -> tuple[list[LocatedError], list[str], int]:
    """Mistakes of a config and of the rulesets it names, warnings, rulesets checked."""
    from wyneos_core.checks import check_plugins
    from wyneos_core.config import Config, ConfigError, config_errors, fill_defaults, schema
    from wyneos_core.plugins import PluginLoadError, PluginManager
    from wyneos_core.rules.runtime import resolve_paths

    errors = config_errors(located)
    if errors:  # go on with the wrong values left out (defaults in their place), to find the rest too
        repaired = _without(located.data, errors)
        if repaired is None or config_errors(Located(repaired, located.file, located.positions)):
            return errors, [], 0
        data = fill_defaults(schema(), repaired)
    else:
        data = fill_defaults(schema(), located.data)
    config = Config(data, source=located.file, base_dir=path.resolve().parent, located=located)
    warnings: list[str] = []
    settings = config["plugins"]
    pm = PluginManager()
    try:
        pm.load_builtins(disable=settings["disable"])
        if plugins:
            pm.load_entrypoints(disable=settings["disable"], only=settings["only"])
        warnings += pm.check_names(settings["disable"], settings["only"] if plugins else None)
    except PluginLoadError as exc:
        errors.append(config.error(("plugins",), str(exc)))
    more, warned = check_plugins(config, pm)
    errors += more
    warnings += warned
    from wyneos_core.enforcement.check import config_warnings

    warnings += config_warnings(config, pm.get_plugin("licence") is not None)
    if "service" in config["plugins"]["settings"]:  # read by `wyneos serve`: refused there, so here too
        from wyneos_core.service.settings import ServiceSettings

        try:
            ServiceSettings.from_config(config)
        except LocatedError as exc:
            hint = ""
            if exc.reason.startswith("unknown setting") and exc.field:
                from dataclasses import fields

                from wyneos_core.diagnostics import suggest

                hint = suggest(exc.field.rsplit(".", 1)[-1], [f.name for f in fields(ServiceSettings)])
            errors.append(config.error(exc.field or "plugins.settings.service", exc.reason + hint))
    if "relay" in config["plugins"]["settings"]:  # read by `wyneos serve` (signed-action relay)
        from wyneos_core.service.action_relay import relay_settings

        try:
            relay_settings(config)
        except LocatedError as exc:
            errors.append(config.error(exc.field or "plugins.settings.relay", exc.reason))
    checked = 0
    rulesets = config["rulesets"]
    for index, entry in enumerate(rulesets.get("paths") or []):
        try:
            files = resolve_paths([entry], base_dir=config.base_dir)
        except (LocatedError, ValueError, OSError) as exc:
            errors.append(config.error(("rulesets", "paths", index), getattr(exc, "reason", str(exc))))
            continue
        if not files:
            errors.append(config.error(("rulesets", "paths", index), f"names no ruleset file ({entry!r})"))
        for file in files:
            checked += 1
            errors += _ruleset_errors(file, default_engine=rulesets.get("engine", "native"))
    del ConfigError
    import os

    from wyneos_core.diagnostics import sort_errors

    for e in errors:  # a ruleset the config names: shown relative to here when it is below here
        if e.file != located.file and os.path.isabs(e.file):
            relative = os.path.relpath(e.file)
            if not relative.startswith(".."):
                e.file = relative
    # the config's own mistakes first, then those of the rulesets it names
    ordered = sort_errors(errors)
    return [e for e in ordered if e.file == located.file] + [e for e in ordered if e.file != located.file], \
        warnings, checked


def _without(data: Any, errors: list[LocatedError]) -> Any:
    """A copy of ``data`` without the values the errors are about (None if one cannot be
    taken out without moving others: an item of a list)."""
    import copy

    from wyneos_core.rules.loader import _path_of

    out = copy.deepcopy(data)
    for error in errors:
        path = _path_of(error.field)
        if not path:
            return None
        parent = out
        for part in path[:-1]:
            try:
                parent = parent[part]
            except (KeyError, IndexError, TypeError):
                parent = None
                break
        if isinstance(parent, dict) and path[-1] in parent:
            del parent[path[-1]]
        elif parent is not None:
            return None
    return out


def _scenario_errors(located: Located) -> list[LocatedError]:
    from wyneos_core.config import schema as config_schema
    from wyneos_core.diagnostics import schema_errors, sort_errors, unicode_errors
    from wyneos_core.simulate.scenario import load_scenario, scenario_schema

    errors = schema_errors(located, scenario_schema()) + unicode_errors(located)
    data = located.data
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        errors += schema_errors(located, config_schema(), prefix=("config",), data=data["config"])
    if errors:
        return sort_errors(errors)
    try:
        load_scenario(located.file)
    except LocatedError as exc:
        return list(getattr(exc, "errors", None) or [exc])
    return []


def validate_file(path: str | Path, *, plugins: bool = True) -> dict[str, Any]:
    """``{"file", "kind", "ok", "errors": [LocatedError...], "warnings": [str...]}`` for one file."""
    path = Path(path)
    out: dict[str, Any] = {"file": str(path), "kind": None, "errors": [], "warnings": []}
    try:
        located = load_yaml(path, surrogates=True)  # the checks of each kind report them, located
    except LocatedError as exc:
        out["errors"] = [exc]
        out["ok"] = False
        return out
    kind = out["kind"] = kind_of(located)
    if kind == "ruleset":
        out["errors"] = _ruleset_errors(path)
    elif kind == "ruleset-tests":
        from wyneos_core.rules.testing import check_test_file

        out["errors"] = check_test_file(path)[2]
    elif kind == "scenario":
        out["errors"] = _scenario_errors(located)
    else:
        errors, warnings, checked = _config_errors(path, located, plugins)
        out["errors"], out["warnings"], out["rulesets"] = errors, warnings, checked
    out["ok"] = not out["errors"]
    return out


def _files(paths: list[str]) -> tuple[list[Path], list[str]]:
    out: list[Path] = []
    missing: list[str] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix in (".yaml", ".yml") and f.is_file()))
        elif p.exists():
            out.append(p)
        else:
            missing.append(raw)
    return out, missing


def validate_paths(paths: list[str], *, plugins: bool = True) -> list[dict[str, Any]]:
    files, missing = _files(paths)
    results = [{"file": raw, "kind": None, "ok": False, "warnings": [],
                "errors": [LocatedError("no such file or directory", file=raw)]} for raw in missing]
    results += [validate_file(f, plugins=plugins) for f in files]
    return results


def _text(text: str) -> str:
    """Printable whatever a user file held (a lone surrogate is escaped, never fatal)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def cmd_validate(args: argparse.Namespace) -> int:
    results = validate_paths(args.paths, plugins=not args.no_plugins)
    if not results:
        print("wyneos validate: no files to check", file=sys.stderr)
        return EXIT_USAGE
    failed = [r for r in results if not r["ok"]]
    if args.format == "json":
        doc = {"ok": not failed, "files": [
            {**{k: v for k, v in r.items() if k != "errors"},
             "errors": [{**e.to_dict(), "message": LocatedError.__str__(e)} for e in r["errors"]]}
            for r in results]}
        print(_text(json.dumps(doc, indent=2, ensure_ascii=False)))
    else:
        for r in results:
            for e in r["errors"]:
                print(_text(LocatedError.__str__(e)))
            for w in r["warnings"]:
                print(_text(f"warning: {w}"))
            if r["ok"]:
                extra = f", {r['rulesets']} ruleset file(s) it names" if r.get("rulesets") else ""
                print(_text(f"ok    {r['file']} ({r['kind']}{extra})"))
        count = sum(len(r["errors"]) for r in results)
        print(f"{len(results) - len(failed)} file(s) valid, {len(failed)} with {count} error(s)")
    return EXIT_FAIL if failed else EXIT_OK
