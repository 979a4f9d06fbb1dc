"""Label selectors over nodes: ``{zone: eu-west, tier: gold}`` (every label equal).

A node's labels are its metadata (``zone``, ``region``, ``customer``, any key it
reports or the config gives it); a label the node lacks matches nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["label_of", "label_value", "matches"]


def label_of(node: Any, key: str) -> str | None:
    """The value of label ``key`` of ``node`` (a string), or None when it has none."""
    return label_value(node.metadata.get(key) if isinstance(getattr(node, "metadata", None), dict) else None)


def label_value(value: Any) -> str | None:
    """A metadata value as a label: its text; None for none, a mapping or a list."""
    if value is None or isinstance(value, (dict, list)):
        return None
    return str(value)


def matches(node: Any, selector: Mapping[str, str]) -> bool:
    """Whether ``node`` carries every label of ``selector`` with the given value."""
    return all(label_of(node, k) == v for k, v in selector.items())
