"""Declared state: what a node should be running, from the config or a signed manifest.

A declaration names up to four fields (``version``, ``config_digest``, ``packages``,
``labels``) and the nodes it applies to (``selector``: one ``node`` id, or ``labels``
that the node's reported labels must all carry). It comes from the config
(``drift.declared``) or from a signed manifest: a JSON envelope of format
``wyneos.manifest/1`` signed with Ed25519 by a trusted key (the same envelope and key
tooling as licences, ``wyneos_core.licensing.envelope``), whose payload adds a
``manifest_id`` and a ``serial`` (a newer manifest for the same selector has a larger
serial and replaces the older one).

For each node the declaration in force is the most specific one that selects it (a
``node`` selector before a ``labels`` selector, more labels before fewer), the highest
serial first among equals, manifests before the config among equals.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wyneos_core.licensing.envelope import EnvelopeError, open_envelope, seal

__all__ = ["FIELDS", "MANIFEST_FORMAT", "Declaration", "DeclarationError", "canonical", "declaration_from",
           "load_manifests", "seal_manifest"]

MANIFEST_FORMAT: Final = "wyneos.manifest/1"
#: the fields a declaration may name, in column order
FIELDS: Final = ("version", "config_digest", "packages", "labels")
MAX_MANIFEST_FILES: Final = 10_000
MAX_PACKAGES: Final = 4096
MAX_TEXT: Final = 512
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class DeclarationError(ValueError):
    """A declaration or manifest refused; the message names the file or entry and the field."""


@dataclass(frozen=True, slots=True)
class Declaration:
    """One declared state and the nodes it selects."""

    source: str  # "config[0]" or the manifest file
    manifest_id: str | None
    serial: int
    node: str | None  # selector: this node id
    selector_labels: tuple[tuple[str, str], ...]  # selector: every one of these labels
    declared: tuple[tuple[str, Any], ...]  # (field, value) for the fields it names

    def selects(self, node_id: str, labels: Any) -> bool:
        if self.node is not None:
            return node_id == self.node
        if type(labels) is not dict:
            return not self.selector_labels
        return all(labels.get(k) == v for k, v in self.selector_labels)

    @property
    def rank(self) -> tuple[int, int, int, int]:
        """Higher wins: node selector, more labels, higher serial, a manifest."""
        return (1 if self.node is not None else 0, len(self.selector_labels), self.serial,
                1 if self.manifest_id is not None else 0)

    def value(self, field: str) -> Any:
        return dict(self.declared).get(field)

    def to_dict(self) -> dict[str, Any]:
        selector: dict[str, Any] = {"node": self.node} if self.node is not None else {
            "labels": dict(self.selector_labels)}
        return {"source": self.source, "manifest_id": self.manifest_id, "serial": self.serial,
                "selector": selector, **dict(self.declared)}


def canonical(field: str, value: Any, declared: Any = None) -> str | None:
    """The comparable text of a reported or declared value (None: not a usable value).

    Packages compare as a set; labels compare on the keys the declaration names (the
    node may carry more).
    """
    if value is None:
        return None
    if field in ("version", "config_digest"):
        return value[:MAX_TEXT] if type(value) is str else None
    if field == "packages":
        if type(value) not in (list, tuple) or len(value) > MAX_PACKAGES:
            return None
        if any(type(p) is not str for p in value):
            return None
        return "\n".join(sorted(set(value)))
    if type(value) is not dict:
        return None
    keys = sorted(declared) if type(declared) is dict else sorted(value)
    return "\n".join(f"{k}={value.get(k)!s:.{MAX_TEXT}}" for k in keys if type(k) is str)


def _text(entry: Mapping[str, Any], field: str, where: str) -> str | None:
    value = entry.get(field)
    if value is None:
        return None
    if type(value) is not str or not value or len(value) > MAX_TEXT:
        raise DeclarationError(f"{where}.{field}: a non-empty string of at most {MAX_TEXT} characters")
    return value


def _labels(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if type(value) is not dict or any(type(k) is not str or type(v) is not str for k, v in value.items()):
        raise DeclarationError(f"{where}: a mapping of label names to strings")
    return tuple(sorted(value.items()))


def declaration_from(entry: Any, where: str, *, manifest_id: str | None = None, serial: int = 0) -> Declaration:
    """One declaration from a config entry or a manifest's payload."""
    if type(entry) is not dict:
        raise DeclarationError(f"{where}: a declaration is a mapping")
    selector = entry.get("selector")
    if type(selector) is not dict or len(selector) != 1 or not ({"node", "labels"} & set(selector)):
        raise DeclarationError(f"{where}.selector: name one node ({{node: ID}}) or labels ({{labels: {{k: v}}}})")
    unknown = sorted(set(entry) - {"selector", *FIELDS, "manifest_id", "serial", "key_id"})
    if unknown:
        from wyneos_core.diagnostics import suggest

        raise DeclarationError(f"{where}: unknown field {str(unknown[0])[:60]!r}{suggest(str(unknown[0]), FIELDS)} "
                               f"(fields: selector, {', '.join(FIELDS)})")
    node = selector.get("node")
    if node is not None and (type(node) is not str or not _ID.match(node)):
        raise DeclarationError(f"{where}.selector.node: not a node id: {str(node)[:60]!r}")
    sel_labels = _labels(selector["labels"], f"{where}.selector.labels") if "labels" in selector else ()
    declared: list[tuple[str, Any]] = []
    for field in ("version", "config_digest"):
        text = _text(entry, field, where)
        if text is not None:
            declared.append((field, text))
    packages = entry.get("packages")
    if packages is not None:
        if canonical("packages", packages) is None:
            raise DeclarationError(f"{where}.packages: a list of at most {MAX_PACKAGES} strings")
        declared.append(("packages", tuple(sorted(set(packages)))))
    if entry.get("labels") is not None:
        declared.append(("labels", dict(_labels(entry["labels"], f"{where}.labels"))))
    if not declared:
        raise DeclarationError(f"{where}: declares nothing (name version, config_digest, packages or labels)")
    declared.sort(key=lambda kv: FIELDS.index(kv[0]))
    return Declaration(where, manifest_id, serial, node, sel_labels, tuple(declared))


def seal_manifest(payload: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """A signed manifest: ``payload`` (``manifest_id``, ``serial``, ``selector`` and the
    declared fields) checked, then signed with ``key``."""
    body = dict(payload)
    declaration_from({k: v for k, v in body.items()}, "manifest", manifest_id=str(body.get("manifest_id")),
                     serial=0)
    if type(body.get("manifest_id")) is not str or not _ID.match(body["manifest_id"]):
        raise DeclarationError("manifest.manifest_id: a name of letters, digits and . _ : -")
    if type(body.get("serial")) is not int or body["serial"] < 0:
        raise DeclarationError("manifest.serial: a non-negative integer (a newer manifest has a larger one)")
    return seal(MANIFEST_FORMAT, body, key)


def load_manifests(directory: Path, keyring: Mapping[str, Any]) -> tuple[list[Declaration], list[str]]:
    """The verified manifests of ``directory`` (``*.json``), and one problem per file refused.

    A file that does not verify (unknown key, bad signature, malformed) is refused and
    named; it never declares anything.
    """
    out: list[Declaration] = []
    problems: list[str] = []
    if not directory.is_dir():
        return out, [f"{directory}: manifests directory not found"]
    files = sorted(directory.glob("*.json"))[:MAX_MANIFEST_FILES]
    for path in files:
        try:
            raw = path.read_bytes() if path.stat().st_size <= 256 * 1024 else None
            if raw is None:
                raise DeclarationError("larger than 256 KiB")
            payload = open_envelope(raw, MANIFEST_FORMAT, keyring)
            serial = payload.get("serial")
            if type(serial) is not int or serial < 0:
                raise DeclarationError("serial: a non-negative integer")
            mid = payload.get("manifest_id")
            if type(mid) is not str or not _ID.match(mid):
                raise DeclarationError("manifest_id: a name of letters, digits and . _ : -")
            out.append(declaration_from(payload, path.name, manifest_id=mid, serial=serial))
        except (EnvelopeError, DeclarationError, OSError) as exc:
            problems.append(f"{path.name}: {exc}")
    return out, problems


def in_force(declarations: Iterable[Declaration], node_id: str, labels: Any) -> int:
    """The index of the declaration in force for a node (-1: none selects it)."""
    best, best_rank = -1, None
    for index, decl in enumerate(declarations):
        if decl.selects(node_id, labels):
            rank = decl.rank
            if best_rank is None or rank > best_rank:
                best, best_rank = index, rank
    return best
