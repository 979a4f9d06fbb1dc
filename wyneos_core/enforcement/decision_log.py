"""The decision log: every decision of every tick, as JSON Lines, bounded and rotated.

As OPA's decision logs. One ``inputs`` record per tick (the nodes and licence results
the rules saw, and their digest) and one ``decision`` record per lifecycle event of the
decide step (approved, held, warned, audited, excepted, cleared...) carrying the cause
(origin and reason), the mode and the setting that gave it, the budget or exception or
override that held it, the consensus basis, the inputs' digest, the tick and the term
(on replicas). Records go to ``enforcement.decision_log.path`` (rotated at
``max_bytes`` to ``PATH.1`` ... ``PATH.keep``) and to the ``wyneos_decision_log`` hook
for other sinks. ``wyneos replay`` re-evaluates the logged inputs with other rulesets.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

__all__ = ["DecisionLog", "SCHEMA", "digest", "digest_chunks", "read_log"]

SCHEMA = "wyneos.decision/1"
#: largest line read back (a tick's inputs of a large fleet)
MAX_LINE = 256 * 1024 * 1024


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest(inputs: dict[str, Any]) -> str:
    """A stable digest of a tick's inputs."""
    return "sha256:" + hashlib.sha256(_text(inputs).encode()).hexdigest()


#: items per chunk of a streamed digest (what ``digest_chunks`` holds at once)
CHUNK = 4096


def digest_chunks(inputs: dict[str, Iterable[Any]]) -> str:
    """``digest(inputs)`` of a dict of lists given as iterables, read a chunk of items at
    a time: the same text digested (JSON is written item by item), without the lists or
    their text in memory at once."""
    h = hashlib.sha256()
    h.update(b"{")
    for k, key in enumerate(sorted(inputs)):
        h.update((b"," if k else b"") + _text(key).encode() + b":[")
        items = iter(inputs[key])
        sep = b""
        while chunk := list(islice(items, CHUNK)):
            h.update(sep + _text(chunk)[1:-1].encode())
            sep = b","
        h.update(b"]")
    h.update(b"}")
    return "sha256:" + h.hexdigest()


class DecisionLog:
    """Appends records to a JSON Lines file, rotating it at ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int = 16 * 1024 * 1024, keep: int = 3) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(r, sort_keys=True, separators=(",", ":"), default=str) + "\n" for r in records)
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(lines) > self.max_bytes:
            self.rotate()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(lines)

    def rotate(self) -> None:
        """PATH -> PATH.1 -> PATH.2 ...; the file past ``keep`` is dropped."""
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
            return
        for n in range(self.keep, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            newer = self.path if n == 1 else self.path.with_name(f"{self.path.name}.{n - 1}")
            if newer.exists():
                os.replace(newer, older)

    def files(self) -> list[Path]:
        """The log's files, oldest first."""
        rotated = [self.path.with_name(f"{self.path.name}.{n}") for n in range(self.keep, 0, -1)]
        return [p for p in [*rotated, self.path] if p.exists()]


def read_log(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """The records of ``paths`` in order; a line that is not a JSON object is refused
    with the file and line."""
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as fh:
            number = 0
            while line := fh.readline(MAX_LINE + 1):  # never more than MAX_LINE read at once
                number += 1
                if len(line) > MAX_LINE:
                    raise ValueError(f"{path}:{number}: line longer than {MAX_LINE} characters")
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
                if not isinstance(record, dict) or record.get("schema") != SCHEMA:
                    raise ValueError(f"{path}:{number}: not a decision log record ({SCHEMA})")
                yield record
