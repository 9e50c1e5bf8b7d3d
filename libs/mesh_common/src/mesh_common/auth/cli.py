"""``mesh-token``: mint development tokens and generate dev RSA key sets.

Responsible for the command line only; the work is done by :mod:`mesh_common.auth.tokens`. The
HS256 secret comes from the environment variable ``MESH_JWT_SECRET`` and never from an argument
(arguments end up in shell history and process listings). It must not print secrets; the only
thing written to stdout is the token (or the kid of a generated key set).

Examples::

    MESH_JWT_SECRET=... mesh-token --sub alice --role admin --scope booking:write --ttl 3600
    mesh-token --gen-rsa-jwks ./devkeys            # writes private.pem + jwks.json
    mesh-token --sub svc --role service --rsa-key ./devkeys/private.pem
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mesh_common.auth.settings import DEFAULT_AUDIENCE, DEFAULT_ISSUER, MIN_HS256_SECRET_BYTES
from mesh_common.auth.tokens import generate_rsa_jwks, load_private_key, mint_token

SECRET_ENV = "MESH_JWT_SECRET"  # noqa: S105 - the variable name, not a secret


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mesh-token",
        description=f"Mint an edumesh JWT (HS256 with ${SECRET_ENV}, or RS256 with --rsa-key).",
    )
    parser.add_argument("--sub", help="subject (user or client id)")
    parser.add_argument("--role", action="append", default=[], help="role; repeatable")
    parser.add_argument("--scope", action="append", default=[], help="scope; repeatable")
    parser.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    parser.add_argument("--iss", default=DEFAULT_ISSUER, help="issuer")
    parser.add_argument("--aud", default=DEFAULT_AUDIENCE, help="audience")
    parser.add_argument("--participant-id", help="participant id claim")
    parser.add_argument("--tenant", help="tenant claim")
    parser.add_argument("--rsa-key", help="sign RS256 with this private PEM instead of HS256")
    parser.add_argument(
        "--gen-rsa-jwks",
        metavar="DIR",
        help="write a new RSA key pair (private.pem) and its public jwks.json into DIR",
    )
    parser.add_argument("--kid", help="key id for --gen-rsa-jwks / --rsa-key (default: thumbprint)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.gen_rsa_jwks:
        pair = generate_rsa_jwks(args.gen_rsa_jwks, kid=args.kid)
        print(pair.kid)
        print(f"wrote {args.gen_rsa_jwks}/private.pem and jwks.json", file=sys.stderr)
        return 0
    if not args.sub:
        print("mesh-token: --sub is required", file=sys.stderr)
        return 2
    common = {
        "subject": args.sub,
        "roles": args.role,
        "scopes": args.scope,
        "ttl_seconds": args.ttl,
        "issuer": args.iss,
        "audience": args.aud,
        "participant_id": args.participant_id,
        "tenant": args.tenant,
    }
    if args.rsa_key:
        token = mint_token(private_key=load_private_key(args.rsa_key, kid=args.kid), **common)
    else:
        secret = os.environ.get(SECRET_ENV)
        if not secret:
            print(f"mesh-token: set {SECRET_ENV} (or use --rsa-key)", file=sys.stderr)
            return 2
        if len(secret.encode()) < MIN_HS256_SECRET_BYTES:
            print(
                f"mesh-token: {SECRET_ENV} must be at least {MIN_HS256_SECRET_BYTES} bytes",
                file=sys.stderr,
            )
            return 2
        token = mint_token(secret=secret, **common)
    print(token)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
