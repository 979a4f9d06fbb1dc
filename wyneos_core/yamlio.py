"""Loading YAML that users write (config, rulesets, scenarios) with positions kept.

YAML from users is hostile until checked: it is parsed with the safe loader only, its
size is bounded, duplicate keys and anchors/aliases are refused, and every value's
line and column is kept so that later checks can name the place of a mistake.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from wyneos_core.safeio import FileRefused, bad_text, field_path, read_regular_file

__all__ = ["LocatedError", "Located", "load_yaml", "validate_schema"]

MAX_YAML_BYTES = 2 * 1024 * 1024

PathKey = tuple[Any, ...]


class LocatedError(ValueError):
    """A mistake in a user file, with the file, line, column and field it is at."""

    def __init__(
        self,
        reason: str,
        *,
        file: str = "<string>",
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = reason
        self.file = file
        self.line = line
        self.column = column
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        what = f"{self.field}: " if self.field else ""
        return f"{where}: {what}{self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "field": self.field,
            "reason": self.reason,
        }


#: ``("rules", 2, "id")`` -> ``rules[2].id`` (the one spelling of a field's place, shared
#: with the service's checks of request bodies)
field_name = field_path


@dataclass(slots=True)
class Located:
    """Parsed YAML data plus where each value stood in the file (1-based)."""

    data: Any
    file: str
    positions: dict[PathKey, tuple[int, int]]
    #: the text it was parsed from
    text: str | None = None

    def position(self, path: Iterable[Any]) -> tuple[int | None, int | None]:
        path = tuple(path)
        while path:
            if path in self.positions:
                return self.positions[path]
            path = path[:-1]
        return self.positions.get((), (None, None))

    def error(self, path: Iterable[Any], reason: str) -> LocatedError:
        path = tuple(path)
        line, column = self.position(path)
        return LocatedError(
            reason, file=self.file, line=line, column=column, field=field_name(path) or None
        )


def load_yaml(source: str | Path, *, text: str | None = None, surrogates: bool = False) -> Located:
    """Load one YAML document from ``source`` (a path), or from ``text`` named ``source``.

    Raises ``LocatedError`` for unreadable files, anything but a regular file (a FIFO,
    a device such as ``/dev/zero``), files over 2 MiB (checked before reading), syntax
    errors, duplicate keys, anchors/aliases, text that is not valid Unicode and
    integers of more than 100 digits. With ``surrogates`` a string holding a lone
    surrogate (YAML's ``"\\ud800"`` escape) is let through, for a caller that reports
    every such place with the file's other mistakes (``diagnostics.unicode_errors``).
    """
    name = str(source)
    if text is None:
        try:  # a regular file only, opened without blocking, its size checked before reading
            raw = read_regular_file(source, MAX_YAML_BYTES)
        except FileRefused as exc:
            raise LocatedError(str(exc.strerror), file=name) from None
        except OSError as exc:
            raise LocatedError(f"cannot read file: {exc.strerror or exc}", file=name) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LocatedError(f"not UTF-8 text (byte {exc.start})", file=name) from None
    elif len(text.encode()) > MAX_YAML_BYTES:
        raise LocatedError(f"text is larger than {MAX_YAML_BYTES} bytes", file=name)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise LocatedError("nested too deeply", file=name) from None
    except yaml.MarkedYAMLError as exc:
        raise _marked(exc, name) from None
    except yaml.YAMLError as exc:
        raise LocatedError(f"invalid YAML: {exc}", file=name) from None
    positions: dict[PathKey, tuple[int, int]] = {}
    if node is None:
        return Located(None, name, positions, text)
    _walk(node, (), positions, name, set(), 0, surrogates)
    loader = yaml.SafeLoader("")
    try:
        data = loader.construct_document(node)
    except yaml.constructor.ConstructorError as exc:
        raise _marked(exc, name) from None
    finally:
        loader.dispose()
    return Located(data, name, positions, text)


def _marked(exc: yaml.MarkedYAMLError, name: str) -> LocatedError:
    mark = exc.problem_mark
    return LocatedError(
        f"invalid YAML: {exc.problem}",
        file=name,
        line=mark.line + 1 if mark else None,
        column=mark.column + 1 if mark else None,
    )


#: how deeply mappings and sequences may nest in a user file
MAX_YAML_DEPTH = 64


def _walk(node: yaml.Node, path: PathKey, out: dict, name: str, seen: set[int], depth: int,
          surrogates: bool = False) -> None:
    if depth > MAX_YAML_DEPTH:
        raise LocatedError(
            f"nested deeper than {MAX_YAML_DEPTH} levels",
            file=name, line=node.start_mark.line + 1, column=node.start_mark.column + 1,
            field=field_name(path) or None,
        )
    if id(node) in seen and isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        raise LocatedError(
            "anchors and aliases are not allowed",
            file=name,
            line=node.start_mark.line + 1,
            column=node.start_mark.column + 1,
            field=field_name(path) or None,
        )
    seen.add(id(node))
    out[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        keys: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node)
            if isinstance(key_node, yaml.ScalarNode):
                _check_scalar(key_node, path, name, surrogates)
            if key == "<<":
                raise LocatedError(
                    "merge keys (<<) are not allowed",
                    file=name,
                    line=key_node.start_mark.line + 1,
                    column=key_node.start_mark.column + 1,
                )
            if key in keys:
                raise LocatedError(
                    f"duplicate key {key!r}",
                    file=name,
                    line=key_node.start_mark.line + 1,
                    column=key_node.start_mark.column + 1,
                    field=field_name(path) or None,
                )
            keys.add(key)
            child = path + (key,)
            _walk(value_node, child, out, name, seen, depth + 1, surrogates)
            out[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, path + (index,), out, name, seen, depth + 1, surrogates)
    elif isinstance(node, yaml.ScalarNode):
        _check_scalar(node, path, name, surrogates)


#: the most digits an integer in a user file may have (Python refuses to convert more
#: than 4,300 anyway; no setting needs more than a handful)
MAX_INT_DIGITS = 100


def _check_scalar(node: yaml.ScalarNode, path: PathKey, name: str, surrogates: bool = False) -> None:
    """Refuse text that is not valid Unicode and integers too long to be a setting,
    naming the place (the value is not echoed: it may be huge)."""
    value = node.value
    where = {"file": name, "line": node.start_mark.line + 1, "column": node.start_mark.column + 1,
             "field": field_name(path) or None}
    if not surrogates and bad_text(value) is not None:
        raise LocatedError("not valid Unicode text (a lone surrogate escape)", **where)
    if node.tag == "tag:yaml.org,2002:int" and len(value) > MAX_INT_DIGITS:
        raise LocatedError(f"an integer of {len(value)} characters; at most {MAX_INT_DIGITS} digits are accepted",
                           **where)


def validate_schema(located: Located, schema: Mapping[str, Any], *, prefix: PathKey = ()) -> None:
    """Check ``located.data`` against a JSON Schema; raise the first error, located.

    Errors are reported for the deepest failing value, in file order, so the message
    names the field a person would look at first.
    """
    validator = jsonschema.Draft202012Validator(schema)
    errors = list(validator.iter_errors(located.data))
    if not errors:
        return
    errors.sort(key=lambda e: located.position(prefix + tuple(e.absolute_path)))
    best = jsonschema.exceptions.best_match(errors) if len(errors) > 1 else errors[0]
    # best_match prefers the most relevant error; keep the earliest place among equals.
    path = prefix + tuple(best.absolute_path)
    if best.validator == "additionalProperties" and isinstance(best.instance, dict):
        extra = sorted(set(best.instance) - set(best.schema.get("properties", {})), key=str)
        if extra:
            path += (extra[0],)
    raise located.error(path, _plain(best))


def _plain(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        extra = sorted(
            set(error.instance) - set(error.schema.get("properties", {}))
            if isinstance(error.instance, dict)
            else []
        )
        if extra:
            allowed = ", ".join(sorted(error.schema.get("properties", {})))
            return f"unknown field {extra[0]!r} (allowed: {allowed})"
    if error.validator == "required":
        return error.message.replace("is a required property", "is required")
    if error.validator == "enum":
        allowed = ", ".join(repr(v) for v in error.validator_value)
        return f"{error.instance!r} is not one of {allowed}"
    return error.message
