"""One error tree for all of Remit, each class with a stable code.

    RemitError
    ├── InvalidRequest          invalid_request       bad input: size, depth, grammar, schema
    │   └── InvalidGrant        invalid_grant         a one-time credential already used or expired
    ├── InvalidToken            invalid_token         signature, alg, typ, iss, aud, kid, claims
    │   ├── TokenExpired        token_expired
    │   └── TokenRevoked        token_revoked
    ├── InvalidProof            invalid_proof         per-call proof of possession, replay
    ├── Denied                  denied                a decision said no (carries the decision)
    ├── ApprovalRequired        approval_required
    ├── NotFound                not_found
    ├── Conflict                conflict
    ├── Forbidden               forbidden             authenticated, but the scope is too narrow
    ├── PolicyInvalid           policy_invalid        a policy set refused whole at load
    ├── AuditUnavailable        audit_unavailable     the audit could not be written: fail closed
    ├── SealError               sealed                a sealed secret cannot be opened (wrong or
    │                                                 missing master key, tampered or moved data)
    └── StoreUnavailable        store_unavailable

Messages are for humans and never carry secrets or token contents. The
``reason`` is a short machine-readable detail for the audit record (for
example ``alg_not_allowed``); adapters show it only where it leaks nothing.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RemitError(Exception):
    """The root of every error Remit raises on purpose."""

    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, reason: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.code
        self.details = details

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, reason={self.reason!r}, {self.message!r})"
        )


class InvalidRequest(RemitError):
    code = "invalid_request"


class InvalidGrant(InvalidRequest):
    code = "invalid_grant"


class InvalidToken(RemitError):
    code = "invalid_token"


class TokenExpired(InvalidToken):
    code = "token_expired"


class TokenRevoked(InvalidToken):
    code = "token_revoked"


class InvalidProof(RemitError):
    code = "invalid_proof"


class Denied(RemitError):
    code = "denied"


class ApprovalRequired(RemitError):
    code = "approval_required"


class NotFound(RemitError):
    code = "not_found"


class Conflict(RemitError):
    code = "conflict"


class PolicyInvalid(RemitError):
    code = "policy_invalid"


class Forbidden(RemitError):
    """Authenticated, but the credential's scope does not cover this operation."""

    code = "forbidden"


class AuditUnavailable(RemitError):
    code = "audit_unavailable"


class StoreUnavailable(RemitError):
    code = "store_unavailable"


class ProviderUnavailable(RemitError):
    """A downstream credential provider (a database, a token service) failed to issue or
    revoke. Issuance fails closed; a failed revocation is retried, never dropped."""

    code = "provider_unavailable"


class SealError(RemitError):
    """A sealed secret could not be opened: the master key is wrong or missing, or the sealed
    data was changed or moved. Its message never carries key or secret material."""

    code = "sealed"


ALL_ERRORS: tuple[type[RemitError], ...] = (
    RemitError,
    InvalidRequest,
    InvalidGrant,
    InvalidToken,
    TokenExpired,
    TokenRevoked,
    InvalidProof,
    Denied,
    ApprovalRequired,
    NotFound,
    Conflict,
    Forbidden,
    PolicyInvalid,
    AuditUnavailable,
    StoreUnavailable,
    ProviderUnavailable,
    SealError,
)

_BY_CODE = {cls.code: cls for cls in ALL_ERRORS}


def error_for_code(code: str) -> type[RemitError]:
    """The error class for a stable code (as sent over the wire); RemitError if unknown."""
    return _BY_CODE.get(code, RemitError)
