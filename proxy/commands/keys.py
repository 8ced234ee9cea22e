"""`imagegate keys init-dev`: create development signing credentials for C2PA.

Writes a development root CA and an ES256 (or, with `--algorithm ed25519`, Ed25519) signing
certificate (with the extensions C2PA needs) into a folder, or reuses the ones already there; a
signing certificate of the other algorithm is replaced under the same root only when
`--algorithm` names it. The material is named as development material
in every file name and certificate subject. This command must never overwrite valid existing
credentials, and never print private key material.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from provenance import DEV_ALGORITHMS, CredentialError, ensure_dev_credentials

DEFAULT_DIRECTORY = Path("imagegate-data") / "dev-keys"


def register(subparsers: Any) -> None:
    keys = subparsers.add_parser("keys", help="signing keys and certificates for C2PA")
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    init_dev = actions.add_parser(
        "init-dev",
        help="create (or reuse) a development root CA and ES256 signing certificate",
        description=(
            "Create a development root CA and an ES256 signing certificate for C2PA. "
            "For development and tests only: verifiers trust it only if given the dev root."
        ),
    )
    init_dev.add_argument(
        "--algorithm",
        choices=DEV_ALGORITHMS,
        default=None,
        help=(
            "the signing certificate's algorithm: es256 or ed25519 (signs faster in c2pa-rs). "
            "Default: keep the existing certificate's, es256 for a new one; naming the other "
            "algorithm replaces the signing certificate under the same root. The root CA is "
            "ECDSA P-256 either way"
        ),
    )
    init_dev.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_DIRECTORY,
        metavar="DIR",
        help=f"folder for the PEM files (default: {DEFAULT_DIRECTORY})",
    )
    init_dev.set_defaults(func=init_dev_command)


def init_dev_command(args: argparse.Namespace) -> int:
    try:
        credentials = ensure_dev_credentials(args.out, args.algorithm)
    except (CredentialError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    verb = "created" if credentials.created else "reusing existing"
    print(f"{verb} DEVELOPMENT C2PA credentials ({credentials.algorithm}) in {credentials.directory}:")
    print(f"  root CA (trust anchor):  {credentials.root_ca_file}")
    print(f"  signing chain:           {credentials.cert_chain_file}")
    print(f"  signing key:             {credentials.private_key_file}")
    print("Use them with:")
    print(f'  IMAGEGATE_SIGNING_CERT="$(cat {credentials.cert_chain_file})"')
    print(f'  IMAGEGATE_SIGNING_KEY="$(cat {credentials.private_key_file})"')
    print(f"  imagegate provenance verify IMAGE --trust-anchors {credentials.root_ca_file}")
    print("These are development credentials: never use them to sign production images.")
    return 0
