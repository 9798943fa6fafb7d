"""Credential providers: what Remit mints downstream for a lease (issue 6)."""

from remit.providers.base import CredentialProvider, Injection, IssuedCredential, IssueRequest

__all__ = ["CredentialProvider", "Injection", "IssueRequest", "IssuedCredential"]
