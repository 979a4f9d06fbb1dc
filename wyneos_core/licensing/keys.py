"""Ed25519 keys: generation, key files, key ids, node fingerprints, key rings.

* A **key id** names an issuer public key inside a signed document, so several trusted
  keys can coexist (rotation): the first 16 hex digits of SHA-256 of the raw 32-byte
  public key.
* A **fingerprint** names a node's own public key (what a licence pairs with): the
  string ``"sha256:"`` followed by the hex SHA-256 of the raw public key bytes.

Private keys are PEM (PKCS#8) files created with owner-only permissions (0600) and
never printed; public keys are PEM (SubjectPublicKeyInfo) files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from wyneos_core.safeio import FileRefused, read_regular_file

__all__ = [
    "KeyFileError",
    "KeyRing",
    "fingerprint",
    "generate_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "public_bytes",
    "write_private_key",
    "write_public_key",
]

MAX_KEY_FILE = 16 * 1024


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file."""


def generate_key() -> Ed25519PrivateKey:
    """A new Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def public_bytes(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """The raw 32 bytes of a public key (of the private key's public half)."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """The id a signed document uses to name its issuer key: 16 hex digits."""
    return hashlib.sha256(public_bytes(key)).hexdigest()[:16]


def fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey | bytes) -> str:
    """A node's key fingerprint: ``sha256:<hex of SHA-256 of the raw public key>``.

    >>> fingerprint(bytes(32))
    'sha256:66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925'
    """
    raw = key if isinstance(key, bytes) else public_bytes(key)
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, got {len(raw)}")
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def write_private_key(path: str | Path, key: Ed25519PrivateKey, *, overwrite: bool = False) -> Path:
    """Write ``key`` as PEM to a new file readable by its owner only (mode 0600).

    :raises FileExistsError: if the file exists and ``overwrite`` is false.
    """
    path = Path(path)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
    finally:
        os.close(fd)
    return path


def write_public_key(path: str | Path, key: Ed25519PublicKey | Ed25519PrivateKey, *, overwrite: bool = False) -> Path:
    """Write the public key as PEM (mode 0644)."""
    path = Path(path)
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, 0o644)
    try:
        os.write(fd, pem)
    finally:
        os.close(fd)
    return path


def _read(path: Path) -> bytes:
    try:
        return read_regular_file(path, MAX_KEY_FILE)
    except FileRefused as exc:
        raise KeyFileError(f"{path}: {exc.strerror}, not a key file") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror or exc}") from None


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from a PEM file.

    :raises KeyFileError: naming the file, if it is unreadable or not an Ed25519 private key.
    """
    path = Path(path)
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a PEM private key ({type(exc).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key from a PEM file.

    :raises KeyFileError: naming the file, if it is unreadable or not an Ed25519 public key.
    """
    path = Path(path)
    data = _read(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a PEM public key ({type(exc).__name__})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


class KeyRing(Mapping[str, Ed25519PublicKey]):
    """Trusted issuer public keys by key id.

    Rotation: add the new key next to the old one, issue with the new key, and remove
    the old key once its licences are renewed; documents signed by a removed key then
    fail with ``unknown_key``.
    """

    __slots__ = ("_keys", "origins")

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        self.origins: dict[str, str] = {}
        for key in keys:
            self.add(key)

    def add(self, key: Ed25519PublicKey, origin: str = "") -> str:
        kid = key_id(key)
        self._keys[kid] = key
        self.origins[kid] = origin
        return kid

    @classmethod
    def from_paths(cls, paths: Iterable[str | Path]) -> KeyRing:
        """Load every public key file named (a directory contributes its ``*.pub`` files)."""
        ring = cls()
        for p in paths:
            p = Path(p)
            files = sorted(p.glob("*.pub")) if p.is_dir() else [p]
            for f in files:
                ring.add(load_public_key(f), str(f))
        return ring

    def __getitem__(self, kid: str) -> Ed25519PublicKey:
        return self._keys[kid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
