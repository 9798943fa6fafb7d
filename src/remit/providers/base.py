"""The credential provider interface (issue 6): one small protocol for every kind of
downstream credential Remit mints and revokes.

A provider turns a lease into credential material (``issue``) and undoes it
(``revoke``). It never decides: whether a task may have a credential at all is
decided by the service (Cedar, the mandate, the lease rules) before ``issue`` is
called. Providers do I/O (a database, a signing key), so they live outside
``remit.core``; they are built once by the composition root.

Rules every provider keeps:

* ``issue`` fails closed: on any failure it raises ``ProviderUnavailable`` (or an
  ``InvalidRequest`` for a bad configuration) and leaves nothing behind that it
  cannot revoke by the handle it would have returned.
* ``revoke`` is idempotent: revoking what is already gone succeeds. A failure raises
  ``ProviderUnavailable``; the service retries it with backoff and shows the lease as
  outstanding until it succeeds.
* Secret values appear only inside ``Secret`` objects; handles, error messages and
  logs never carry them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from remit.core.catalog import Privilege
from remit.core.secrets import Secret


@dataclass(frozen=True, slots=True)
class IssueRequest:
    """What a provider needs to mint one credential for one lease."""

    lease_id: str
    task_id: str
    agent_id: str  # the agent's SPIFFE ID
    tool: str
    privilege: Privilege  # the tool's class: read < write < act
    issued_at: float
    expires_at: float  # the lease's expiry: never past the task's
    call_id: str | None = None  # the decision id, for a credential bound to one call
    options: Mapping[str, object] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    """A minted credential: ``handle`` is a non-secret reference (a role name, a token id)
    stored with the lease and used to revoke it; ``values`` are the secret parts, named
    (e.g. ``username``, ``password``, ``dsn``, ``token``)."""

    handle: str
    values: Mapping[str, Secret] = field(hash=False)


@runtime_checkable
class CredentialProvider(Protocol):
    """One kind of downstream credential."""

    @property
    def kind(self) -> str:
        """The provider kind named in catalog entries (``static``, ``signed-token``,
        ``postgres``)."""
        ...

    def issue(self, request: IssueRequest) -> IssuedCredential:
        """Mint a credential for ``request``; raise ``ProviderUnavailable`` on failure."""
        ...

    def revoke(self, handle: str) -> None:
        """Undo what ``issue`` made; idempotent; raise ``ProviderUnavailable`` on failure."""
        ...


@dataclass(frozen=True, slots=True)
class Injection:
    """What a gateway puts into the one upstream call (``headers``) or the upstream
    process it starts for this lease (``env``), for an ``inject_header`` or
    ``inject_env`` obligation. Values are Secrets: revealed only at the socket or the
    process boundary."""

    lease_id: str
    expires_at: float
    headers: Mapping[str, Secret] = field(default_factory=dict, hash=False)
    env: Mapping[str, Secret] = field(default_factory=dict, hash=False)
    # The issued values the headers or env were rendered from: a gateway redacts each on
    # its own too (an upstream may echo a DSN's password, not the whole DSN).
    issued: tuple[Secret, ...] = field(default=(), hash=False)
