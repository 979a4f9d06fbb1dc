"""The orchestrator's own Ed25519 key: what every signed thing it hands out is signed with.

Actions, revocation lists, neighbour lists and session answers that the orchestrator
gives to nodes are signed envelopes (``wyneos_core.licensing.envelope``) made with this
key, so a node (or a peer relaying for it) can check that the orchestrator said them,
whatever path they took.

The key is made on first start as a PEM file readable by its owner only (0600), beside
the state file: ``<state file>.orchestrator.key`` (``state.db`` ->
``state.db.orchestrator.key``). A key file that others can read or write is refused, as
ssh refuses such a private key. The public half is known by its **key id** (16 hex
digits, as for licence issuers) and its **fingerprint** (``sha256:...``), which agents
pin at enrolment.

Rotation: :meth:`OrchestratorKey.rotate` writes a new key and keeps the old public key
in ``<key file>.previous.pub``, so a verifier given :meth:`OrchestratorKey.keyring` still
accepts what the old key signed until the operator removes that file.

Retirement: :func:`retire` (``wyneos orchestrator-key retire [--at WHEN]``) writes the
*new* key's signed statement that the previous key is retired from a date on
(``<key file>.retired.json``). :func:`keyring_statement` is what the server hands every
agent: the keys it holds and the retirements, signed by the current key
(``signed_actions.seal_keyring``). Agents stop trusting a retired key at its date, and
any key the statement no longer lists (``.previous.pub`` deleted) at once.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from wyneos_core.licensing.envelope import seal
from wyneos_core.safeio import read_regular_file
from wyneos_core.service import signed_actions as sa
from wyneos_core.licensing.keys import (
    KeyFileError,
    KeyRing,
    fingerprint,
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    public_bytes,
    write_private_key,
    write_public_key,
)

__all__ = ["KEY_SUFFIX", "OrchestratorKey", "key_path_for", "keyring_statement", "retire", "retirements"]

KEY_SUFFIX: Final = ".orchestrator.key"
PREVIOUS_SUFFIX: Final = ".previous.pub"
RETIRED_SUFFIX: Final = ".retired.json"


def key_path_for(state_path: str | Path) -> Path:
    """Where the orchestrator key of the state file ``state_path`` lives."""
    state_path = Path(state_path)
    return state_path.with_name(state_path.name + KEY_SUFFIX)


def _check_private_file(path: Path) -> None:
    try:
        st = path.lstat()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the orchestrator key: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path}: the orchestrator key must be a regular file (not a link, FIFO or device)")
    if st.st_mode & 0o077:
        raise KeyFileError(f"{path}: the orchestrator key is readable or writable by others "
                           f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}")


class OrchestratorKey:
    """The orchestrator's signing key, loaded from (or made at) ``path``."""

    __slots__ = ("path", "private", "key_id", "public_raw", "fingerprint", "_previous")

    def __init__(self, path: Path, private: Ed25519PrivateKey, previous: tuple[Ed25519PublicKey, ...] = ()) -> None:
        self.path = path
        self.private = private
        self.key_id: str = key_id(private)
        self.public_raw: bytes = public_bytes(private)
        self.fingerprint: str = fingerprint(self.public_raw)
        self._previous = previous

    @classmethod
    def load_or_create(cls, path: str | Path) -> OrchestratorKey:
        """Load the key at ``path``; make it (0600) if there is no file there yet.

        :raises KeyFileError: naming the file, if it exists but is not a usable private key
            (not a regular file, open to others, not Ed25519, damaged).
        """
        path = Path(path)
        if not os.path.lexists(path):
            try:
                write_private_key(path, generate_key())
            except FileExistsError:  # another process made it meanwhile: use theirs
                pass
        _check_private_file(path)
        private = load_private_key(path)
        previous_path = path.with_name(path.name + PREVIOUS_SUFFIX)
        previous = (load_public_key(previous_path),) if previous_path.is_file() else ()
        return cls(path, private, previous)

    @classmethod
    def for_state(cls, state_path: str | Path) -> OrchestratorKey:
        """The key that belongs to the state file ``state_path`` (made on first use)."""
        return cls.load_or_create(key_path_for(state_path))

    def rotate(self) -> OrchestratorKey:
        """Replace the key with a new one; the old public key stays trusted as 'previous'."""
        write_public_key(self.path.with_name(self.path.name + PREVIOUS_SUFFIX), self.private, overwrite=True)
        write_private_key(self.path, generate_key(), overwrite=True)
        return OrchestratorKey.load_or_create(self.path)

    def seal(self, fmt: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """A signed envelope of ``payload`` in format ``fmt`` (see ``licensing.envelope``)."""
        return seal(fmt, payload, self.private)

    def sign(self, message: bytes) -> bytes:
        """A raw 64-byte Ed25519 signature of ``message``."""
        return self.private.sign(message)

    def keyring(self) -> KeyRing:
        """The public keys a verifier should trust: this key and the previous one, if kept."""
        return KeyRing((self.private.public_key(), *self._previous))


def _retired_path(okey: OrchestratorKey) -> Path:
    return okey.path.with_name(okey.path.name + RETIRED_SUFFIX)


def retire(okey: OrchestratorKey, at_ms: int) -> tuple[str, int]:
    """Retire the previous key (kept in ``.previous.pub``) from ``at_ms`` on, in a
    statement signed by the current key; (retired key id, date).

    :raises KeyFileError: there is no previous key to retire.
    """
    previous = [raw for kid, raw in ((k, public_bytes(v)) for k, v in okey.keyring().items())
                if kid != okey.key_id]
    if not previous:
        raise KeyFileError(f"{okey.path}: there is no previous key to retire (no {okey.path.name}{PREVIOUS_SUFFIX}; "
                           "`wyneos orchestrator-key rotate` makes one)")
    statements = [s for s in _read_retirements(okey) if s[1][0] != sa.key_entry(previous[0])["key_id"]]
    statement = sa.seal_retirement(okey.private, previous[0], at_ms)
    path = _retired_path(okey)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump([*(raw for raw, _ in statements), statement], fh, sort_keys=True)
    os.replace(tmp, path)
    return sa.open_retirement(statement, okey.public_raw)


def _read_retirements(okey: OrchestratorKey) -> list[tuple[Any, tuple[str, int]]]:
    """The retirement statements kept beside the key that the current key signed."""
    path = _retired_path(okey)
    try:
        data = json.loads(read_regular_file(path, sa.MAX_ENVELOPE_BYTES * sa.MAX_KEYRING))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: not a list of retirement statements ({exc}); remove it and retire again") \
            from None
    out = []
    for statement in data if isinstance(data, list) else []:
        try:
            out.append((statement, sa.open_retirement(statement, okey.public_raw)))
        except sa.Refused:
            continue  # signed by an earlier key (an earlier rotation): it retired a key agents dropped since
    return out[-sa.MAX_KEYRING:]


def retirements(okey: OrchestratorKey) -> dict[str, int]:
    """Retired key id -> date (ms), as the current key signed them."""
    return dict(entry for _, entry in _read_retirements(okey))


def keyring_statement(okey: OrchestratorKey) -> dict[str, Any]:
    """The current key's signed statement of the keys the orchestrator holds and the
    retirements (what every answer to an agent carries)."""
    kept = [okey.public_raw, *(public_bytes(v) for k, v in okey.keyring().items() if k != okey.key_id)]
    return sa.seal_keyring(okey.private, kept, retirements(okey))
