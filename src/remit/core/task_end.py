"""What ending a task did (BRK-04: a task end reports partial completion, not success).

Ending a task closes it and every task delegated from it, and revokes their leases
downstream. A downstream revocation that fails leaves the lease ``revoking``
(outstanding, retried with backoff by the sweeper): the task has ended and the lease is
unusable through Remit, but the credential may still be live at the provider until a
retry succeeds. ``TaskEnd`` says so instead of reporting plain success.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TaskEnd:
    """The tasks closed now, and the leases of the task (and those closed with it) whose
    downstream revocation has not succeeded yet (state ``revoking``)."""

    closed: tuple[str, ...]
    outstanding_leases: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """True when nothing is left to revoke downstream."""
        return not self.outstanding_leases
