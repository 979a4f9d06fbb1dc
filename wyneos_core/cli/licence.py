"""``wyneos licence``: keygen, issue, verify, inspect, revoke.

Private keys are written with owner-only permissions and never printed. Exit codes:
0 success (``verify``: the licence is valid), 1 the licence is not valid, 2 usage or
input errors (a message names the file and field).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from wyneos_core.licensing.document import FORMAT, format_time, issue_licence, parse_licence, parse_time
from wyneos_core.licensing.engine import LicenceEngine
from wyneos_core.licensing.envelope import MAX_DOCUMENT_BYTES, EnvelopeError, parse_envelope, verify_envelope
from wyneos_core.safeio import read_regular_file
from wyneos_core.licensing.keys import (
    KeyFileError,
    KeyRing,
    generate_key,
    key_id,
    load_private_key,
    write_private_key,
    write_public_key,
)
from wyneos_core.licensing.revocation import RevocationList, write_atomic
from wyneos_core.licensing.settings import LicenceSettings
from wyneos_core.licensing.sources import LicenceRecord
from wyneos_core.model import Node

__all__ = ["register", "parse_when"]

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
_RELATIVE = re.compile(r"^([+-]?\d{1,12})([dhms])$")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_LAST_SECOND = 253402300799  # 9999-12-31T23:59:59Z


class UsageError(Exception):
    pass


def parse_when(text: str, now: float, field: str) -> float:
    """``2027-01-31``, ``2027-01-31T12:00:00Z``, ``+365d``, ``-2h`` or ``now`` -> epoch seconds."""
    if text == "now":
        return float(int(now))
    m = _RELATIVE.match(text)
    if m:
        when = int(now) + int(m.group(1)) * _UNITS[m.group(2)]
        if not 0 <= when <= _LAST_SECOND:
            raise UsageError(f"{field}: {text!r} is outside 1970-01-01 .. 9999-12-31")
        return float(when)
    if re.match(r"^\d{4}-\d{2}-\d{2}$", text):
        text += "T00:00:00Z"
    try:
        return parse_time(text, field)
    except EnvelopeError as exc:
        raise UsageError(f"{field}: expected YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ, now or +Nd/+Nh, got {text!r}") from exc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("licence", help="make, check and revoke signed licences")
    lsub = p.add_subparsers(dest="licence_command", metavar="ACTION")

    k = lsub.add_parser("keygen", help="create an Ed25519 issuer key pair (NAME.key 0600, NAME.pub)")
    k.add_argument("--out", default=".", metavar="DIR", help="directory for the key files (default: .)")
    k.add_argument("--name", default="issuer", help="file name stem (default: issuer)")
    k.add_argument("--force", action="store_true", help="replace existing key files")
    k.set_defaults(func=cmd_keygen)

    i = lsub.add_parser("issue", help="sign a new licence")
    i.add_argument("--key", required=True, metavar="FILE", help="issuer private key (PEM)")
    i.add_argument("--id", required=True, dest="licence_id", help="licence id")
    i.add_argument("--customer", required=True)
    i.add_argument("--expires", required=True, help="YYYY-MM-DD, full UTC time, or +365d")
    i.add_argument("--product", default="wyneos")
    i.add_argument("--tier", default="standard")
    i.add_argument("--feature", action="append", default=[], help="granted feature (repeatable)")
    i.add_argument("--seats", type=int, help="how many nodes may use it at once")
    i.add_argument("--fingerprint", action="append", default=[], help="node key fingerprint it is paired with "
                   "(repeatable)")
    i.add_argument("--integrity", metavar="DIGEST|FILE", help="pin the integrity digest of what it licenses "
                   "(sha256:<hex>, or a file whose digest is taken); a node reporting another is refused "
                   "(integrity_mismatch)")
    i.add_argument("--grace-days", type=int, default=0)
    i.add_argument("--not-before", help="valid from (default: now)")
    i.add_argument("--issued", help="issue time (default: now)")
    i.add_argument("--out", "-o", metavar="FILE", help="write here (default: stdout)")
    i.add_argument("--force", action="store_true", help="replace the --out file if it exists")
    i.set_defaults(func=cmd_issue)

    v = lsub.add_parser("verify", help="verify a licence file and check it as the orchestrator would")
    v.add_argument("file")
    v.add_argument("--trusted", action="append", required=True, metavar="PUB",
                   help="trusted public key file or directory of *.pub (repeatable)")
    v.add_argument("--product", default="wyneos")
    v.add_argument("--customer")
    v.add_argument("--fingerprint", help="the node's key fingerprint (for paired licences)")
    v.add_argument("--feature", action="append", default=[], help="a feature the node needs (repeatable)")
    v.add_argument("--revocations", metavar="FILE", help="signed revocation list to consult")
    v.add_argument("--at", help="check at this time instead of now")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    n = lsub.add_parser("inspect", help="show a licence's or a revocation list's fields (and whether its "
                        "signature verifies)")
    n.add_argument("file")
    n.add_argument("--trusted", action="append", default=[], metavar="PUB")
    n.add_argument("--json", action="store_true")
    n.set_defaults(func=cmd_inspect)

    r = lsub.add_parser("revoke", help="add a licence to a signed revocation list (version + 1)")
    r.add_argument("licence_id")
    r.add_argument("--key", required=True, metavar="FILE", help="issuer private key (PEM)")
    r.add_argument("--list", required=True, dest="list_path", metavar="FILE", help="revocation list file")
    r.add_argument("--trusted", action="append", default=[], metavar="PUB",
                   help="other keys the existing list may be signed with (rotation)")
    r.add_argument("--reason", default="")
    r.add_argument("--licences", action="append", default=[], metavar="DIR",
                   help="directory of the issued licence files the id must be among (repeatable; default: "
                        "./licences when it exists)")
    r.add_argument("--force", action="store_true", help="revoke the id even if no licence file has it")
    r.set_defaults(func=cmd_revoke)

    p.set_defaults(func=lambda args: _help(p))


def _help(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return EXIT_USAGE


def _guard(fn):  # noqa: ANN001, ANN202
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (UsageError, KeyFileError, EnvelopeError, FileExistsError, OSError, ValueError) as exc:
            if isinstance(exc, FileExistsError):
                msg = f"{exc.filename}: exists already (use --force to replace it)"
            elif isinstance(exc, OSError) and not isinstance(exc, FileExistsError):
                msg = f"{exc.filename or ''}: {exc.strerror or exc}"
            else:
                msg = str(exc)
            print(f"wyneos licence: error: {msg}", file=sys.stderr)
            return EXIT_USAGE
    run.__name__ = fn.__name__
    return run


@_guard
def cmd_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    key = generate_key()
    private = write_private_key(out / f"{args.name}.key", key, overwrite=args.force)
    public = write_public_key(out / f"{args.name}.pub", key, overwrite=args.force)
    print(f"private key: {private} (mode 0600; keep it secret, it is not printed)")
    print(f"public key:  {public}")
    print(f"key id:      {key_id(key)}")
    return EXIT_OK


def _read(path: str) -> bytes:
    try:  # licence documents: a regular file, opened without blocking, its size checked first
        return read_regular_file(path, 4 * MAX_DOCUMENT_BYTES)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _integrity(value: str | None) -> str | None:
    """``--integrity``: a digest as it is, or a file whose sha256 digest is pinned."""
    if value is None or value.startswith("sha256:"):
        return value
    from wyneos_core.service.integrity import file_digest

    try:
        return file_digest(value)
    except OSError as exc:
        raise UsageError(f"--integrity {value!r}: neither sha256:<64 hex digits> nor a readable file "
                         f"({exc.strerror or exc})") from None


@_guard
def cmd_issue(args: argparse.Namespace) -> int:
    now = time.time()
    key = load_private_key(args.key)
    issued = parse_when(args.issued, now, "--issued") if args.issued else float(int(now))
    try:
        doc = issue_licence(
            key, licence_id=args.licence_id, customer=args.customer, product=args.product, tier=args.tier,
            features=args.feature, issued=issued, expires=parse_when(args.expires, now, "--expires"),
            not_before=parse_when(args.not_before, now, "--not-before") if args.not_before else None,
            grace_days=args.grace_days, seats=args.seats, fingerprints=args.fingerprint,
            integrity=_integrity(args.integrity),
        )
    except EnvelopeError as exc:
        raise UsageError(f"cannot issue: {exc}") from None
    text = json.dumps(doc, indent=1) + "\n"
    if args.out:
        if Path(args.out).exists() and not args.force:
            raise UsageError(f"{args.out}: exists already (use --force to replace it)")
        write_atomic(Path(args.out), text)
        print(f"licence {args.licence_id} written to {args.out} (key id {doc['payload']['key_id']})",
              file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _keyring(paths: list[str]) -> KeyRing:
    return KeyRing.from_paths(paths)


@_guard
def cmd_verify(args: argparse.Namespace) -> int:
    now = time.time()
    at = parse_when(args.at, now, "--at") if args.at else now
    settings = LicenceSettings(product=args.product, customer=args.customer, cache_ttl=0,
                               required_features=frozenset(args.feature))
    keyring = _keyring(args.trusted)
    engine = LicenceEngine(settings, keyring, {})
    if args.revocations:  # asked for explicitly: a list that is missing or does not verify is an error
        rev_path = Path(args.revocations)
        if not rev_path.is_file():
            raise UsageError(f"{rev_path}: no such revocation list")
        try:
            engine.revocations = RevocationList.load(rev_path, keyring)
        except EnvelopeError as exc:
            raise UsageError(f"{rev_path}: revocation list refused ({exc.reason}): {exc}") from None
    engine.begin(at)
    for note in engine.notes:
        print(f"note: {note}", file=sys.stderr)
    node = Node("cli", fingerprint=args.fingerprint)
    record = LicenceRecord(_read(args.file), "file", origin=args.file)
    result, _, _ = engine.check(node, record, at)
    if args.json:
        print(json.dumps({k: v for k, v in result.to_dict().items() if k != "node_id"}, indent=1))
    else:
        state = ("VALID (in grace)" if result.in_grace else "VALID") if result.valid else "INVALID"
        print(f"{state} {result.reason}: {result.detail}")
    return EXIT_OK if result.valid else EXIT_INVALID


@_guard
def cmd_inspect(args: argparse.Namespace) -> int:
    from wyneos_core.licensing.revocation import FORMAT as REVOCATIONS

    data = _read(args.file)
    try:
        parse_envelope(data, REVOCATIONS)
        return _inspect_revocations(args, data)
    except EnvelopeError:
        pass  # not a revocation list: a licence, or what is wrong is said below
    try:
        envelope = parse_envelope(data, FORMAT)
    except EnvelopeError as exc:
        raise UsageError(f"{args.file}: {exc}") from None
    try:
        _, lic = parse_licence(envelope)
        fields = lic.to_payload()
    except EnvelopeError as exc:
        fields = dict(envelope["payload"])
        fields["_problem"] = str(exc)
    signature = "not checked (give --trusted)"
    if args.trusted:
        try:
            verify_envelope(envelope, _keyring(args.trusted))
            signature = "valid"
        except EnvelopeError as exc:
            signature = f"{exc.reason}: {exc}"
    if args.json:
        print(json.dumps({"kind": "licence", "payload": fields, "signature": signature}, indent=1))
        return EXIT_OK
    width = max(len(k) for k in fields)
    for name, value in fields.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else ("-" if value is None else value)
        print(f"{name:<{width}}  {shown}")
    print(f"{'signature':<{width}}  {signature}")
    return EXIT_OK


def _inspect_revocations(args: argparse.Namespace, data: bytes) -> int:
    """A signed revocation list: version, issue time, every revoked id, the signature."""
    try:
        listed = RevocationList.from_document(data, {}, verify=False)
    except EnvelopeError as exc:
        raise UsageError(f"{args.file}: revocation list: {exc}") from None
    signature = "not checked (give --trusted)"
    if args.trusted:
        try:
            RevocationList.from_document(data, _keyring(args.trusted))
            signature = "valid"
        except EnvelopeError as exc:
            signature = f"{exc.reason}: {exc}"
    entries = [e.to_dict() for e in sorted(listed.entries.values(), key=lambda e: e.licence_id)]
    if args.json:
        print(json.dumps({"kind": "revocations", "version": listed.version, "issued": format_time(listed.issued),
                          "key_id": listed.key_id, "revoked": entries, "signature": signature}, indent=1))
        return EXIT_OK
    print(f"revocation list version {listed.version}, issued {format_time(listed.issued)}, "
          f"{len(entries)} licence(s) revoked")
    for e in entries:
        print(f"  {e['licence_id']}  revoked {e['revoked_at']}" + (f"  ({e['reason']})" if e["reason"] else ""))
    print(f"signature  {signature}")
    return EXIT_OK


def _issued_ids(dirs: list[str]) -> tuple[dict[str, str], list[str]]:
    """Licence ids of the licence files in ``dirs`` (id -> file), and the directories read."""
    ids: dict[str, str] = {}
    read = []
    for raw in dirs:
        directory = Path(raw)
        if not directory.is_dir():
            raise UsageError(f"{directory}: no such licence directory")
        read.append(str(directory))
        for path in sorted(directory.iterdir()):
            if not path.name.endswith((".licence", ".lic", ".json")) or not path.is_file():
                continue
            try:
                _, lic = parse_licence(path.read_bytes()[: 1024 * 1024])
            except Exception:  # noqa: BLE001 - not a licence (a revocation list, garbage): not an id
                continue
            ids.setdefault(lic.licence_id, str(path))
    return ids, read


@_guard
def cmd_revoke(args: argparse.Namespace) -> int:
    key = load_private_key(args.key)
    ring = _keyring(args.trusted)
    ring.add(key.public_key(), args.key)
    path = Path(args.list_path)
    try:
        current = RevocationList.load(path, ring)
    except EnvelopeError as exc:
        raise UsageError(f"{path}: revocation list refused ({exc.reason}): {exc}") from None
    if args.licence_id in current:
        print(f"licence {args.licence_id} is already revoked (list version {current.version})", file=sys.stderr)
        return EXIT_OK
    dirs = args.licences or (["licences"] if Path("licences").is_dir() else [])
    if dirs:
        ids, read = _issued_ids(dirs)
        if args.licence_id not in ids and not args.force:
            from wyneos_core.diagnostics import suggest

            raise UsageError(f"no licence with id {args.licence_id!r} in {', '.join(read)} "
                             f"({len(ids)} licence(s) there){suggest(args.licence_id, ids)} "
                             "(--force revokes it anyway)")
    else:
        print(f"wyneos licence: warning: {args.licence_id!r} not checked against issued licences "
              "(give --licences DIR)", file=sys.stderr)
    new = current.revoke(args.licence_id, now=time.time(), reason=args.reason)
    new.save(path, key)
    print(f"licence {args.licence_id} revoked: {path} is now version {new.version} "
          f"({len(new.entries)} revoked, issued {format_time(new.issued)})")
    return EXIT_OK
