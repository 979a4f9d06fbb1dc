"""Reading files and text that users and nodes hand over, bounded and without blocking.

Every file WyneOS reads from an operator or a node (config, rulesets, scenarios,
licences, keys) goes through ``read_regular_file``: the file is opened with
``O_NONBLOCK`` (a FIFO or a device cannot make the open or the read wait), checked with
``fstat`` to be a regular file (``/dev/zero`` behind a symlink, a FIFO, a directory or
a socket are refused), its size is compared with the limit *before* anything is read,
and the read itself stops one byte past the limit (a file that grows meanwhile is
refused too). So a refusal costs a few system calls, never the file's size in memory.

``bad_text`` finds strings that are not valid Unicode (lone surrogates such as
``"\\ud800"``, which JSON and YAML escapes can produce but UTF-8 cannot encode).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from typing import Any

__all__ = ["FileRefused", "bad_text", "field_path", "read_regular_file"]

_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


class FileRefused(OSError):
    """A file that is not read: not a regular file, or larger than its limit.

    An ``OSError`` (``strerror`` is the reason), so code that reports unreadable files
    reports these the same way.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, code: int = errno.EINVAL) -> None:
        super().__init__(code, reason, str(path))


def read_regular_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them.

    :raises FileRefused: not a regular file, or larger than ``limit`` bytes (checked
        before reading, and again while reading).
    :raises OSError: the file cannot be opened or read.
    """
    fd = os.open(path, _FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(path, f"not a regular file ({_kind(st.st_mode)}); only regular files are read")
        if st.st_size > limit:
            raise FileRefused(path, f"file is larger than {limit} bytes ({st.st_size} bytes)", errno.EFBIG)
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, min(limit + 1 - size, 1 << 20) or 1)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise FileRefused(path, f"file is larger than {limit} bytes (it grew while being read)", errno.EFBIG)
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _valid(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def bad_text(value: Any, path: tuple[Any, ...] = (), depth: int = 0) -> tuple[Any, ...] | None:
    """The path (keys and indexes) of the first string in JSON-like ``value`` (keys
    included) that is not valid Unicode, or None when every string is valid."""
    if isinstance(value, str):
        return None if _valid(value) else path
    if depth > 200:
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and not _valid(k):
                return path + (k.encode("utf-8", "backslashreplace").decode("ascii"),)
            found = bad_text(v, path + (k,), depth + 1)
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = bad_text(v, path + (i,), depth + 1)
            if found is not None:
                return found
    return None


def field_path(path: Iterable[Any]) -> str:
    """``("metadata", "tags", 0)`` -> ``metadata.tags[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
