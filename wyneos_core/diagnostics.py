"""Finding every mistake in a user file at once, each located, with "did you mean".

``schema_errors`` checks a loaded YAML document against a JSON Schema and returns one
``LocatedError`` per wrong value (not only the first), in file order, each naming the
file, line, column and field, with a suggestion when an unknown name is close to a known
one. ``suggest`` is the suggestion itself (``difflib``, the standard library's fuzzy
matcher, as Python's own "Did you mean" uses).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema

from wyneos_core.yamlio import Located, LocatedError

__all__ = ["closest", "schema_errors", "suggest", "sort_errors", "short", "unicode_errors"]

#: how much of a user's value an error message echoes
ECHO = 60


def closest(name: Any, candidates: Iterable[Any]) -> str | None:
    """The candidate ``name`` is most likely a typo of, or None."""
    if not isinstance(name, str) or not name or len(name) > 200:
        return None
    pool = [c for c in candidates if isinstance(c, str)]
    exact = [c for c in pool if c.lower() == name.lower()]
    if exact:
        return exact[0]
    found = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    return found[0] if found else None


def suggest(name: Any, candidates: Iterable[Any]) -> str:
    """``"; did you mean 'x'?"`` for a likely typo of a candidate, else ``""``."""
    best = closest(name, candidates)
    return f"; did you mean {best!r}?" if best is not None and best != name else ""


def short(value: Any, limit: int = ECHO) -> str:
    """``repr(value)`` cut to ``limit`` characters (a 1 MB value is never echoed whole)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_TYPES = {"number": "a number", "integer": "a whole number", "string": "a string", "boolean": "true or false",
          "array": "a list", "object": "a mapping", "null": "null"}


def _expected(types: Any) -> str:
    names = [types] if isinstance(types, str) else list(types)
    return " or ".join(_TYPES.get(t, t) for t in names)


def _message(error: jsonschema.ValidationError) -> str:
    v, value = error.validator, error.instance
    if v == "type":
        return f"expected {_expected(error.validator_value)}, got {short(value)}"
    if v == "enum":
        allowed = ", ".join(repr(x) for x in error.validator_value)
        return f"{short(value)} is not one of {allowed}" + suggest(value, error.validator_value)
    if v == "required":
        return error.message.replace("is a required property", "is required")
    if v == "minimum":
        return f"must be at least {error.validator_value}, got {short(value)}"
    if v == "exclusiveMinimum":
        return f"must be above {error.validator_value}, got {short(value)}"
    if v == "maximum":
        return f"must be at most {error.validator_value}, got {short(value)}"
    if v == "exclusiveMaximum":
        return f"must be below {error.validator_value}, got {short(value)}"
    if v == "minLength" and error.validator_value == 1:
        return "must not be empty"
    if v == "maxLength" and isinstance(value, str):
        return f"is {len(value)} characters long, more than {error.validator_value}"
    if v == "maxItems" and isinstance(value, list):
        return f"has {len(value)} items, more than {error.validator_value}"
    if v in ("minLength", "maxLength", "minItems", "maxItems"):
        return f"{v}: {error.validator_value}, got {short(value)}"
    if v == "pattern":
        said = error.schema.get("x-pattern")  # the pattern in words, when the schema gives them
        if not isinstance(said, str):
            return f"{short(value)} does not match {error.validator_value!r}"
        return f"{short(value)} is not allowed: {said}" + _conforming(value, error.validator_value)
    message = error.message
    return message if len(message) <= 200 else message[:197] + "..."


def _conforming(value: Any, pattern: str) -> str:
    """"; e.g. 'my-rules'" when lower-casing ``value`` and joining its words with '-' fits
    ``pattern``, else ""."""
    import re

    if not isinstance(value, str):
        return ""
    candidate = re.sub(r"[^a-z0-9_.-]+", "-", value.lower()).strip("-_.")[:64]
    try:
        fits = bool(candidate) and re.search(pattern, candidate) is not None
    except re.error:
        return ""
    return f"; e.g. {candidate!r}" if fits else ""


def schema_errors(located: Located, schema: Mapping[str, Any], *, prefix: tuple[Any, ...] = (),
                  data: Any = None) -> list[LocatedError]:
    """Every place ``data`` (default: ``located.data``) breaks ``schema``, located.

    ``prefix`` is where ``data`` sits inside ``located`` (for a sub-document such as one
    plugin's settings). Unknown fields are reported one error each, with a suggestion.
    For a value that fails a choice (``anyOf``/``oneOf``) only the most relevant reason
    is given.
    """
    instance = located.data if data is None else data
    validator = jsonschema.Draft202012Validator(schema)
    out: list[LocatedError] = []
    seen: set[tuple[Any, ...]] = set()
    for error in validator.iter_errors(instance):
        if error.context:
            error = jsonschema.exceptions.best_match(error.context)
        path = prefix + tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = list(error.schema.get("properties", {}))
            extra = sorted(set(error.instance) - set(known), key=str)
            for name in extra:
                where = path + (name,)
                if where in seen:
                    continue
                seen.add(where)
                hint = suggest(name, known) or f" (allowed: {', '.join(sorted(known))})"
                out.append(located.error(where, f"unknown field {short(name)}{hint}"))
            continue
        key = path + ("#" + str(error.validator),)
        if path in seen or key in seen:
            continue
        seen.add(key)
        out.append(located.error(path, _message(error)))
    return sort_errors(out)


def sort_errors(errors: list[LocatedError]) -> list[LocatedError]:
    """In file order (errors without a line last, in their given order)."""
    return sorted(errors, key=lambda e: (e.file, e.line is None, e.line or 0, e.column or 0))


def _surrogate(text: str) -> int | None:
    for index, ch in enumerate(text):
        if "\ud800" <= ch <= "\udfff":
            return index
    return None


def unicode_errors(located: Located, skip: Any = None) -> list[LocatedError]:
    """A located error for every string (key or value) that is not valid Unicode text (a
    lone surrogate, which YAML's ``"\\ud800"`` escape makes); the text is never echoed.
    ``skip(path)`` leaves out values another check locates better."""
    out: list[LocatedError] = []
    stack: list[tuple[tuple[Any, ...], Any]] = [((), located.data)]
    while stack and len(out) < 100:
        path, value = stack.pop()
        if isinstance(value, str):
            at = _surrogate(value)
            if at is not None and not (skip and skip(path)):
                out.append(located.error(path, f"not valid Unicode text: a lone surrogate "
                                               f"U+{ord(value[at]):04X} at character {at + 1}"))
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and _surrogate(key) is not None:
                    out.append(located.error(path, "a key is not valid Unicode text (a lone surrogate)"))
                    continue
                stack.append((path + (key,), item))
        elif isinstance(value, list):
            stack.extend((path + (i,), item) for i, item in enumerate(value))
    return sort_errors(out)
