"""Loading, checking, listing and calling plugins.

Builtin plugins are listed once in ``BUILTIN_PLUGINS`` and registered through the same
path as third-party plugins found in the ``wyneos`` entry-point group. Hooks are called
one implementation at a time so that a plugin that raises is recorded and the others
still run.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

import pluggy

from wyneos_core import hookspecs
from wyneos_core.hookspecs import PROJECT_NAME
from wyneos_core.model import PluginError

__all__ = [
    "BUILTIN_PLUGINS",
    "ESSENTIAL_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "PluginLoadError",
    "PluginManager",
]

ENTRY_POINT_GROUP = PROJECT_NAME

#: name -> module of every builtin plugin, in tick order.
BUILTIN_PLUGINS: dict[str, str] = {
    "heartbeat": "wyneos_core.builtin.heartbeat",
    "licence": "wyneos_core.builtin.licence",
    "drift": "wyneos_core.builtin.drift",
    "predict": "wyneos_core.builtin.predict",
    "governance": "wyneos_core.builtin.governance",
    "rulesets": "wyneos_core.builtin.rulesets",
    "trust": "wyneos_core.builtin.trust",
    "healing": "wyneos_core.builtin.healing",
    "enforcement": "wyneos_core.builtin.enforcement",
    "decide": "wyneos_core.builtin.decide",
    "propagate": "wyneos_core.builtin.propagate",
    "report": "wyneos_core.builtin.report",
    "state": "wyneos_core.builtin.state",
}

#: Builtins that cannot be disabled: without them the tick does not hold together.
ESSENTIAL_PLUGINS = frozenset({"heartbeat", "decide", "propagate"})


class PluginLoadError(Exception):
    """A plugin could not be loaded or was refused; the message names plugin and hook."""


@dataclass(slots=True)
class PluginInfo:
    name: str
    version: str
    origin: str  # "builtin", "entry point <dist>", "registered"
    hooks: list[str]
    module: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "origin": self.origin,
                "hooks": self.hooks, "module": self.module}


class PluginManager(pluggy.PluginManager):
    """A pluggy plugin manager for the ``wyneos`` project, checked at registration."""

    def __init__(self) -> None:
        super().__init__(PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.origins: dict[str, str] = {}
        self.trace_file: TextIO | None = None
        self.budget: float = float("inf")

    # -- loading -------------------------------------------------------------------------

    def register(self, plugin: Any, name: str | None = None) -> str | None:  # type: ignore[override]
        label = name or self.get_canonical_name(plugin)
        try:
            registered = super().register(plugin, name)
        except pluggy.PluginValidationError as exc:
            raise PluginLoadError(_explain_validation(label, exc)) from None
        except ValueError as exc:
            raise PluginLoadError(f"plugin {label!r}: {exc}") from None
        if registered is None:
            return None
        try:
            for impl in self._impls_of(plugin):
                if impl.hookwrapper or impl.wrapper:
                    raise PluginLoadError(
                        f"plugin {registered!r}: hook {impl.function.__name__!r} is declared as a wrapper; wyneos calls "
                        "each implementation on its own (so one failing never stops the others) and does not "
                        "support wrappers: use tryfirst/trylast instead"
                    )
            self._check_unmarked(plugin, registered)
            self.check_pending()
        except (pluggy.PluginValidationError, PluginLoadError) as exc:
            self.unregister(plugin)
            if isinstance(exc, PluginLoadError):
                raise
            raise PluginLoadError(_explain_validation(registered, exc)) from None
        self.origins.setdefault(registered, "registered")
        return registered

    def _check_unmarked(self, plugin: Any, name: str) -> None:
        """A ``wyneos_*`` function without the hookimpl marker is almost surely a mistake."""
        marked = {impl.function.__name__ for impl in self._impls_of(plugin)}
        for attr in dir(plugin):
            if attr.startswith("wyneos_") and attr not in marked:
                value = getattr(plugin, attr, None)
                if callable(value) and attr in self.hook.__dict__:
                    raise PluginLoadError(
                        f"plugin {name!r}: function {attr!r} looks like a hook but is not marked "
                        "with @wyneos_core.hookimpl"
                    )
                if callable(value) and not hasattr(self.hook, attr):
                    from wyneos_core.diagnostics import suggest

                    hint = suggest(attr, self.hook_names())
                    raise PluginLoadError(
                        f"plugin {name!r}: {attr!r} matches no wyneos hook"
                        + (hint or f" (known hooks: {', '.join(self.hook_names())})")
                    )

    def _impls_of(self, plugin: Any) -> list[pluggy.HookImpl]:
        return [impl for caller in self.get_hookcallers(plugin) or [] for impl in caller.get_hookimpls()
                if impl.plugin is plugin]

    def hook_names(self) -> list[str]:
        return sorted(name for name in dir(hookspecs) if name.startswith("wyneos_"))

    def load_builtins(self, disable: Iterable[str] = ()) -> None:
        disabled = set(disable)
        for name in sorted(disabled & ESSENTIAL_PLUGINS):
            raise PluginLoadError(f"builtin plugin {name!r} is essential and cannot be disabled")
        for name, module_name in BUILTIN_PLUGINS.items():
            if name in disabled:
                self.set_blocked(name)
                continue
            module = importlib.import_module(module_name)
            self.register(module, name)
            self.origins[name] = "builtin"

    def load_entrypoints(self, disable: Iterable[str] = (), only: Iterable[str] | None = None,
                         broken: dict[str, str] | None = None) -> list[str]:
        """Load third-party plugins from the ``wyneos`` entry-point group.

        :param disable: entry-point names not to load.
        :param only: if given, load only these entry-point names.
        :param broken: when given, a plugin that cannot be loaded is recorded here (name ->
            why) and the others are still loaded; otherwise ``PluginLoadError`` is raised.
        :return: names of the plugins loaded.
        """
        disabled = set(disable)
        allowed = None if only is None else set(only)
        loaded = []
        for dist in importlib.metadata.distributions():
            for ep in dist.entry_points:
                if ep.group != ENTRY_POINT_GROUP:
                    continue
                if ep.name in disabled or (allowed is not None and ep.name not in allowed):
                    continue
                if ep.name in BUILTIN_PLUGINS:
                    raise PluginLoadError(
                        f"plugin {ep.name!r} from {dist.metadata['name']} uses the name of a builtin plugin"
                    )
                if self.get_plugin(ep.name) is not None or self.is_blocked(ep.name):
                    continue
                try:
                    try:
                        plugin = ep.load()
                    except Exception as exc:  # noqa: BLE001 - any import error is reported
                        raise PluginLoadError(
                            f"plugin {ep.name!r} from {dist.metadata['name']} failed to import: "
                            f"{type(exc).__name__}: {exc}"
                        ) from exc
                    self.register(plugin, ep.name)
                except PluginLoadError as exc:
                    if broken is None:
                        raise
                    broken[ep.name] = str(exc)
                    continue
                self._plugin_distinfo.append((plugin, pluggy._manager.DistFacade(dist)))
                self.origins[ep.name] = f"entry point ({dist.metadata['name']})"
                loaded.append(ep.name)
        return loaded

    def check_names(self, disable: Iterable[str], only: Iterable[str] | None) -> list[str]:
        """Check plugin names in ``plugins.disable`` / ``plugins.only``; return warnings.

        Disabling a plugin that is not installed is harmless (one config for machines with
        and without it): a warning, with "did you mean" for a likely typo. ``only`` naming a
        plugin that is not installed is refused (what it asks for cannot be loaded).
        """
        from wyneos_core.diagnostics import suggest

        installed = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
        known = set(BUILTIN_PLUGINS) | installed | {name for name, _ in self.list_name_plugin()}
        warnings = []
        for name in disable:
            if name not in known:
                warnings.append(f"plugins.disable names {name!r}, which is not installed here: nothing to disable"
                                + (suggest(name, known) or f" (known: {', '.join(sorted(known))})"))
        for name in only or ():
            if name not in installed:
                raise PluginLoadError(
                    f"plugins.only names {name!r}, which is no installed plugin "
                    f"(installed: {', '.join(sorted(installed)) or 'none'}){suggest(name, installed)}")
        return warnings

    # -- introspection -------------------------------------------------------------------

    def plugin_infos(self) -> list[PluginInfo]:
        dists = {id(p): d for p, d in self.list_plugin_distinfo()}
        out = []
        for name, plugin in self.list_name_plugin():
            if plugin is None:  # blocked: disabled by config or --disable
                where = "builtin" if name in BUILTIN_PLUGINS else "entry point"
                out.append(PluginInfo(name, "-", f"disabled ({where})", [], ""))
                continue
            dist = dists.get(id(plugin))
            if dist is not None:
                version = dist.version
            elif self.origins.get(name) == "builtin":
                from wyneos_core import __version__

                version = __version__
            else:
                version = str(getattr(plugin, "__version__", "-"))
            hooks = sorted({impl.function.__name__ for impl in self._impls_of(plugin)})
            module = getattr(plugin, "__name__", type(plugin).__module__)
            out.append(PluginInfo(name, version, self.origins.get(name, "registered"), hooks, module))
        order = list(BUILTIN_PLUGINS)
        out.sort(key=lambda i: (order.index(i.name) if i.name in order else len(order), i.name))
        return out

    def installed_plugins(self) -> list[str]:
        """``NAME VERSION`` of each loaded plugin installed through an entry point, for the
        output of commands they change (``run``, ``tick``, ``simulate``, ``explain``)."""
        return [f"{i.name} {i.version}" for i in self.plugin_infos() if i.origin.startswith("entry point")]

    # -- calling -------------------------------------------------------------------------

    def call_each(
        self,
        hook_name: str,
        errors: list[PluginError],
        firstresult: bool = False,
        reraise: tuple[type[BaseException], ...] = (),
        **kwargs: Any,
    ) -> list[tuple[str, Any]]:
        """Call every implementation of ``hook_name`` on its own; return (plugin, result) pairs.

        An implementation that raises (``SystemExit`` included) is recorded in ``errors``
        (plugin, hook, error) and skipped; one that takes longer than ``self.budget``
        seconds is recorded as overrunning (its result is still used). With
        ``firstresult`` the first non-None result ends the call, and so does an
        implementation that raises: the call then has no result (a transport that fails
        has not delivered; the builtin fallback must not answer in its place).
        Exceptions of the ``reraise`` types are not recorded but propagate.
        """
        caller = getattr(self.hook, hook_name)
        results: list[tuple[str, Any]] = []
        for impl in reversed(caller.get_hookimpls()):
            if impl.hookwrapper or impl.wrapper:
                continue
            args = {name: kwargs[name] for name in impl.argnames}
            if self.trace_file is not None:
                self._trace(f"-> {hook_name} [{impl.plugin_name}] {_summary(args)}")
            started = time.perf_counter()
            try:
                result = impl.function(**args)
            except reraise:
                raise
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - a plugin failure must not end the tick
                errors.append(PluginError(impl.plugin_name, hook_name, _describe(exc)))
                if self.trace_file is not None:
                    self._trace(f"<- {hook_name} [{impl.plugin_name}] raised {_describe(exc)}")
                if firstresult:
                    break
                continue
            elapsed = time.perf_counter() - started
            if elapsed > self.budget:
                errors.append(PluginError(
                    impl.plugin_name, hook_name,
                    f"took {elapsed:.3f}s, over its budget of {self.budget:g}s", kind="budget",
                ))
            if self.trace_file is not None:
                self._trace(f"<- {hook_name} [{impl.plugin_name}] {elapsed * 1000:.2f}ms {_summary(result)}")
            if result is not None:
                results.append((impl.plugin_name, result))
                if firstresult:
                    break
        return results

    def _trace(self, line: str) -> None:
        assert self.trace_file is not None
        print(f"[trace] {line}", file=self.trace_file, flush=True)


def _describe(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _summary(value: Any, limit: int = 160) -> str:
    if isinstance(value, dict):
        text = ", ".join(f"{k}={_summary(v, 40)}" for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        text = f"[{len(value)} items]" if len(value) > 3 else repr(value)
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _explain_validation(name: str, exc: pluggy.PluginValidationError) -> str:
    message = str(exc).strip()
    if "unknown hook" in message:
        from wyneos_core.diagnostics import suggest

        hook = message.split("'")[1] if "'" in message else "?"
        known = [n for n in dir(hookspecs) if n.startswith("wyneos_")]
        return (f"plugin {name!r}: hook {hook!r} matches no wyneos hook"
                + (suggest(hook, known) or " (known hooks are declared in wyneos_core.hookspecs)"))
    if "can not be found in the hookspec" in message:
        # pluggy: "Plugin 'x' for hook 'y'\nhookimpl definition: ...\nArgument(s) {'z'} are declared ..."
        lines = message.splitlines()
        hook = lines[0].split("'")[3] if lines[0].count("'") >= 4 else "?"
        args = lines[-1].split("Argument(s) ", 1)[-1].split(" are declared", 1)[0]
        spec = getattr(hookspecs, hook, None)
        known = ", ".join(inspect.signature(spec).parameters) if spec else "?"
        return (f"plugin {name!r}: hook {hook!r} asks for argument(s) {args} that the hook "
                f"does not pass (it passes: {known})")
    return f"plugin {name!r}: {message}"


def describe_callable(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"


def trace_to(pm: PluginManager, stream: TextIO | None = sys.stderr) -> None:
    pm.trace_file = stream
