"""Authentication and authorisation for edumesh: JWT verification, principals, FastAPI deps.

This package verifies bearer tokens and answers "who is calling and may they do this"; it does
not issue production tokens (the identity provider does) and holds no user data. See
docs/auth.md for the token format and the role/scope rules.
"""

from mesh_common.auth.deps import (
    AdminDep,
    OptionalPrincipalDep,
    PrincipalDep,
    ServiceDep,
    StaffDep,
    auth_problem,
    bearer_token,
    current_principal,
    get_verifier,
    install_auth,
    optional_principal,
    require,
    www_authenticate,
)
from mesh_common.auth.principal import Principal, Role
from mesh_common.auth.settings import DEFAULT_AUDIENCE, DEFAULT_ISSUER, AuthSettings
from mesh_common.auth.tokens import (
    RsaKeyPair,
    generate_rsa_jwks,
    generate_rsa_key,
    jwks_document,
    load_private_key,
    mint_token,
)
from mesh_common.auth.verifier import JwksCache, TokenVerifier

__all__ = [
    "DEFAULT_AUDIENCE",
    "DEFAULT_ISSUER",
    "AdminDep",
    "AuthSettings",
    "JwksCache",
    "OptionalPrincipalDep",
    "Principal",
    "PrincipalDep",
    "Role",
    "RsaKeyPair",
    "ServiceDep",
    "StaffDep",
    "TokenVerifier",
    "auth_problem",
    "bearer_token",
    "current_principal",
    "generate_rsa_jwks",
    "generate_rsa_key",
    "get_verifier",
    "install_auth",
    "jwks_document",
    "load_private_key",
    "mint_token",
    "optional_principal",
    "require",
    "www_authenticate",
]
