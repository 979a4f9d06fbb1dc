"""``wyneos drift sign|check``: signed manifests of declared state (docs/drift.md).

    wyneos drift sign --key release.key manifest.yaml -o manifests/web-2.4.0.json
    wyneos drift check manifests/ --trusted-key release.pub

``sign`` reads a manifest's payload (YAML or JSON: ``manifest_id``, ``serial``,
``selector`` and any of ``version``, ``config_digest``, ``packages``, ``labels``),
checks it and writes the signed envelope (Ed25519, the licences' key files: ``wyneos
licence keygen``). ``check`` verifies every manifest of a directory as the drift step
would and lists what each declares; exit status 1 when one is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("drift", help="sign and check manifests of declared state",
                       description="Signed manifests of the state nodes should run (docs/drift.md).")
    inner = p.add_subparsers(dest="drift_command", metavar="SUBCOMMAND", required=True)
    s = inner.add_parser("sign", help="sign a manifest", description="Check a manifest's payload and sign it.")
    s.add_argument("payload", metavar="FILE", help="the payload: YAML or JSON")
    s.add_argument("--key", required=True, metavar="FILE", help="the signing private key (PEM)")
    s.add_argument("--out", "-o", metavar="FILE", help="write here (default: stdout)")
    s.add_argument("--force", action="store_true", help="replace the --out file if it exists")
    s.set_defaults(func=cmd_sign)
    c = inner.add_parser("check", help="verify a directory of manifests",
                         description="Verify every *.json manifest of a directory as the drift step would.")
    c.add_argument("directory", metavar="DIR")
    c.add_argument("--trusted-key", action="append", required=True, metavar="FILE",
                   help="a public key (or a directory of *.pub) allowed to sign manifests (repeatable)")
    c.set_defaults(func=cmd_check)


def cmd_sign(args: argparse.Namespace) -> int:
    from wyneos_core.drift.declared import DeclarationError, seal_manifest
    from wyneos_core.licensing.keys import KeyFileError, load_private_key
    from wyneos_core.yamlio import LocatedError, load_yaml

    try:
        payload = load_yaml(Path(args.payload)).data
        if not isinstance(payload, dict):
            raise DeclarationError("a manifest is a mapping")
        doc = seal_manifest(payload, load_private_key(args.key))
    except (DeclarationError, KeyFileError, LocatedError, OSError, ValueError) as exc:
        print(f"wyneos drift sign: {args.payload}: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(doc, indent=1) + "\n"
    if args.out is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"wyneos drift sign: {out} exists (use --force to replace it)", file=sys.stderr)
        return 2
    out.write_text(text)
    print(f"signed manifest {doc['payload']['manifest_id']} (serial {doc['payload']['serial']}) -> {out}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from wyneos_core.drift.declared import load_manifests
    from wyneos_core.licensing.keys import KeyFileError, KeyRing

    try:
        ring = KeyRing.from_paths(args.trusted_key)
    except (KeyFileError, OSError, ValueError) as exc:
        print(f"wyneos drift check: {exc}", file=sys.stderr)
        return 2
    found, problems = load_manifests(Path(args.directory), ring)
    for d in found:
        selector = f"node {d.node}" if d.node else "labels " + ",".join(f"{k}={v}" for k, v in d.selector_labels)
        fields = ", ".join(f"{k}={v if not isinstance(v, tuple) else len(v)}" for k, v in d.declared)
        print(f"ok       {d.source}: {d.manifest_id} serial {d.serial}, {selector}: {fields}")
    for problem in problems:
        print(f"REFUSED  {problem}")
    return 1 if problems else 0
