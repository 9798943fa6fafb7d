"""Upstream credentials from leases: what an allowed call's obligations inject, and the
upstream connections started for them.

An allowed call on a tool whose catalog entry names a credential carries an
obligation (``inject_header`` or ``inject_env``) naming a lease. Before the call
is forwarded, the gateway asks Remit for the lease's ``Injection``
(``Remit.credential_for``: refused unless the lease, its task and its agent are
still live) and runs the call on a connection **of that lease alone**:

* ``inject_env`` (stdio upstreams): a server process started for the lease, with
  the configured environment plus the injected variables. Different tasks never
  share a credentialed process.
* ``inject_header`` (streamable-HTTP upstreams): an MCP session of its own whose
  HTTP client sends the configured headers plus the injected ones (a lease header
  replaces a configured header of the same name).

Why a connection per lease for headers too, rather than one shared session with a
per-request hook (an httpx event hook reading a contextvar set around the call):
the SDK sends each request from its transport's writer task, so a contextvar
reaches the request only as long as the SDK keeps copying the sender's context
into that task, an internal detail; requests the SDK makes on its own (a
re-listing after a header mismatch, the session's DELETE) would carry whatever
context they were started in; and the upstream would see one MCP session used
with many tasks' credentials. A session per lease makes the separation
structural: the lease's headers exist only in that session's HTTP client, which
no other task's call ever uses, and an upstream that binds its session to the
first credential it sees (as OAuth-protected MCP servers do) sees one credential
per session. Every request of that session carries the headers, which is what an
upstream that authenticates its handshake needs.

A leased connection is reused by later calls under the same lease (each of them
checked through ``credential_for`` first) and stopped when the lease ends: when
``credential_for`` refuses, when the caller's task is refused as ended, on the
periodic sweep (lease expired, or no longer open in Remit; a connection with a call
in flight is left to finish it and checked again on the next sweep), and at
shutdown. A single-use (per-call) lease, no longer usable once handed out, gets a
connection for its one call, stopped as soon as the call returns.
There are at most ``gateway.max_leased_upstreams`` of them; past that a call is
refused (``upstream_unavailable``, ``too_many_leased_upstreams``).

Every injected value is added to the gateway's redaction set before it is used,
so an upstream that echoes it back has it redacted from the result, its stderr
and the gateway's logs. Values are revealed only into the child's environment or
the HTTP client's headers; nothing here logs, stores or hashes them in the clear
(the fingerprint that tells a changed injection is an HMAC under a per-process
random key).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Final, Protocol, TextIO

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from remit.core.pipeline import Obligation
from remit.core.secrets import Secret
from remit.errors import ProviderUnavailable, RemitError
from remit.gateway.config import (
    HttpTarget,
    StdioTarget,
    UpstreamConfig,
    env_name_ok,
    header_name_ok,
)
from remit.gateway.redact import MIN_PART_LENGTH, Redactor
from remit.gateway.upstream import Upstream, UpstreamUnavailable
from remit.providers.base import Injection

logger = logging.getLogger("remit.gateway")

INJECT_HEADER: Final = "inject_header"
INJECT_ENV: Final = "inject_env"
CREDENTIAL_OBLIGATIONS: Final = frozenset({INJECT_HEADER, INJECT_ENV})
# Codes of a refusal that mean the lease (or its task) is over: its connection goes too.
ENDED_CODES: Final = frozenset({"token_revoked", "token_expired"})
STOP_TIMEOUT: Final = 10.0
_FINGERPRINT_KEY: Final = os.urandom(32)


class CredentialSource(Protocol):
    """Where the gateway gets leased credentials: Remit (in-process), or nowhere."""

    def credential(self, obligation: Obligation) -> Injection:
        """What to inject for an ``inject_header`` / ``inject_env`` obligation; raises a
        ``RemitError`` (``token_revoked``, ``token_expired``, ``provider_unavailable``, ...)
        when the lease is no longer usable. May block."""
        ...

    def lease_usable(self, lease_id: str) -> bool:
        """Whether the lease is still open, without using it. May block."""
        ...

    def now(self) -> float:
        """Remit's clock (leases expire on it)."""
        ...


def _refuse(message: str, reason: str) -> ProviderUnavailable:
    return ProviderUnavailable(message, reason=reason)


def credential_obligations(obligations: Iterable[Obligation]) -> tuple[Obligation, ...]:
    """The obligations that ask for a credential; any other kind is refused (fail closed:
    the gateway never forwards a call whose obligation it cannot fulfil)."""
    found = []
    for obligation in obligations:
        if obligation.kind not in CREDENTIAL_OBLIGATIONS:
            raise _refuse(
                f"the gateway cannot fulfil the obligation {obligation.kind[:64]!r}",
                "obligation_unsupported",
            )
        found.append(obligation)
    return tuple(found)


def fetch_injections(
    source: CredentialSource,
    upstream: UpstreamConfig,
    obligations: Sequence[Obligation],
    redactor: Redactor,
) -> tuple[Injection, ...]:
    """In a worker thread: each credential obligation's ``Injection``, checked against the
    upstream's transport and added to the redaction set. Raises a ``RemitError`` on any
    failure, naming its code and never a value."""
    wanted = INJECT_ENV if isinstance(upstream.target, StdioTarget) else INJECT_HEADER
    for obligation in obligations:
        if obligation.kind != wanted:
            # Checked before asking for the credential: a per-call lease is not spent.
            where = "a stdio" if wanted == INJECT_ENV else "an HTTP"
            raise _refuse(
                f"upstream {upstream.name} is {where} server: it cannot take an "
                f"{obligation.kind} credential (the catalog and the gateway config disagree)",
                "obligation_transport_mismatch",
            )
    injections = []
    for obligation in obligations:
        injection = source.credential(obligation)
        if not isinstance(injection, Injection) or injection.lease_id != obligation.ref:
            raise _refuse("Remit returned no usable credential", "bad_injection")
        values = injection.env if wanted == INJECT_ENV else injection.headers
        # First into the redaction set, whatever happens next: the rendered values, and the
        # issued values they were made from (long enough not to redact common words).
        redactor.add(v for v in values.values() if isinstance(v, Secret))
        redactor.add(
            v
            for v in injection.issued
            if isinstance(v, Secret) and len(v.reveal()) >= MIN_PART_LENGTH
        )
        _check_values(values, wanted)
        injections.append(injection)
    return tuple(injections)


def _check_values(values: Mapping[str, Secret], kind: str) -> None:
    if not values:
        raise _refuse("the credential lease carries nothing to inject", "empty_injection")
    name_ok = env_name_ok if kind == INJECT_ENV else header_name_ok
    for name, value in values.items():
        if not name_ok(name):
            raise _refuse(
                "the credential names a header or variable the gateway may not set",
                "bad_injection",
            )
        if not isinstance(value, Secret):
            raise _refuse("the credential value is not sealed", "bad_injection")
        revealed = value.reveal()
        if not revealed or any(c in revealed for c in "\r\n\0"):
            raise _refuse("the credential value cannot be injected", "bad_injection")


def leased_config(config: UpstreamConfig, injections: Sequence[Injection]) -> UpstreamConfig:
    """The upstream's config with the injected env or headers merged in (a lease's value
    wins over a configured one of the same name; header names compare case-insensitively)."""
    target = config.target
    if isinstance(target, StdioTarget):
        env: dict[str, Secret] = dict(target.env)
        for injection in injections:
            env.update(injection.env)
        public = {k: v for k, v in target.public_env.items() if k not in env}
        return replace(config, target=replace(target, env=env, public_env=public))
    assert isinstance(target, HttpTarget)
    headers = dict(target.headers)
    for injection in injections:
        for name, value in injection.headers.items():
            for existing in [h for h in headers if h.lower() == name.lower()]:
                del headers[existing]
            headers[name] = value
    return replace(config, target=replace(target, headers=headers))


def _fingerprint(injections: Sequence[Injection]) -> bytes:
    mac = hmac.new(_FINGERPRINT_KEY, digestmod=hashlib.sha256)
    for injection in sorted(injections, key=lambda i: i.lease_id):
        for kind, values in (("h", injection.headers), ("e", injection.env)):
            for name in sorted(values):
                for part in (kind, injection.lease_id, name, values[name].reveal()):
                    data = part.encode("utf-8", "surrogatepass")
                    mac.update(len(data).to_bytes(4, "big") + data)
    return mac.digest()


Key = tuple[str, str, tuple[str, ...]]  # (upstream, task, lease ids)


@dataclass(slots=True)
class _Entry:
    key: Key
    upstream: Upstream
    fingerprint: bytes
    expires_at: float
    one_shot: bool = False  # a single-use lease: stopped after its one call
    busy: int = 0  # calls in flight

    @property
    def task_id(self) -> str:
        return self.key[1]

    @property
    def lease_ids(self) -> tuple[str, ...]:
        return self.key[2]


@dataclass(frozen=True, slots=True)
class LeasedInfo:
    """One live leased connection (no values): for status output and tests."""

    upstream: str
    task_id: str
    lease_ids: tuple[str, ...]
    expires_at: float
    connected: bool


class LeasedUpstreams:
    """The upstream connections started for leases, bounded, swept, stopped at exit."""

    def __init__(
        self,
        source: CredentialSource,
        redactor: Redactor,
        *,
        limit: int,
        stderr: TextIO | None = None,
    ) -> None:
        self._source = source
        self._redactor = redactor
        self._limit = limit
        self._stderr = stderr
        self._entries: dict[Key, _Entry] = {}
        self._lock = anyio.Lock()
        self._group: TaskGroup | None = None
        self.started = 0  # connections made for leases, ever

    def bind(self, task_group: TaskGroup) -> None:
        self._group = task_group

    def __len__(self) -> int:
        return len(self._entries)

    def live(self) -> list[LeasedInfo]:
        return [
            LeasedInfo(e.upstream.name, e.task_id, e.lease_ids, e.expires_at, e.upstream.connected)
            for e in self._entries.values()
        ]

    @asynccontextmanager
    async def use(
        self,
        base: Upstream,
        task_id: str,
        injections: Sequence[Injection],
        *,
        one_shot: bool = False,
    ) -> AsyncIterator[Upstream]:
        """The connection for this task's leases on ``base``'s server, for one call: not
        swept while the call runs; stopped after it when ``one_shot``."""
        entry = await self._entry(base, task_id, injections, one_shot)
        entry.busy += 1
        try:
            yield entry.upstream
        finally:
            entry.busy -= 1
            if entry.one_shot:
                await self._drop(lambda e: e is entry, "single-use lease used")

    async def _entry(
        self, base: Upstream, task_id: str, injections: Sequence[Injection], one_shot: bool
    ) -> _Entry:
        """The entry for this task's leases on ``base``'s server (connected on its first
        call), replacing one whose injected values changed or whose lease expired."""
        key: Key = (base.name, task_id, tuple(sorted({i.lease_id for i in injections})))
        fingerprint = _fingerprint(injections)
        expires_at = min((i.expires_at for i in injections), default=math.inf)
        stale: list[_Entry] = []
        try:
            async with self._lock:
                entry = self._entries.get(key)
                if entry is not None and (
                    entry.fingerprint != fingerprint or self._source.now() >= entry.expires_at
                ):
                    stale.append(self._entries.pop(key))
                    entry = None
                if entry is not None:
                    return entry
                if len(self._entries) >= self._limit:
                    now = self._source.now()
                    for old_key, old in list(self._entries.items()):
                        if now >= old.expires_at:
                            stale.append(self._entries.pop(old_key))
                if len(self._entries) >= self._limit:
                    raise UpstreamUnavailable(
                        f"the gateway runs {self._limit} upstream connections for leased "
                        "credentials already (gateway.max_leased_upstreams); try again when a "
                        "task has ended",
                        reason="too_many_leased_upstreams",
                    )
                if self._group is None:
                    raise UpstreamUnavailable(
                        f"upstream {base.name} is not running", reason="not_started"
                    )
                upstream = Upstream(
                    leased_config(base.config, injections),
                    self._redactor,
                    stderr=self._stderr,
                    label=f"{base.name} lease {','.join(key[2])}",
                    list_on_connect=False,
                )
                upstream.bind(self._group)
                entry = self._entries[key] = _Entry(
                    key, upstream, fingerprint, expires_at, one_shot
                )
                self.started += 1
                logger.info(
                    "upstream %s: connection for lease %s (task %s)",
                    base.name,
                    ",".join(key[2]),
                    task_id,
                )
                return entry
        finally:
            await self._stop_all(stale, "replaced or expired")

    async def drop_leases(self, lease_ids: Iterable[str], why: str) -> None:
        """Stop every connection that uses one of these leases."""
        ids = set(lease_ids)
        await self._drop(lambda e: bool(ids.intersection(e.lease_ids)), why)

    async def drop_task(self, task_id: str, why: str) -> None:
        """Stop every connection of this task."""
        await self._drop(lambda e: e.task_id == task_id, why)

    async def _drop(self, match: _Match, why: str) -> None:
        async with self._lock:
            gone = [self._entries.pop(k) for k, e in list(self._entries.items()) if match(e)]
        await self._stop_all(gone, why)

    async def sweep(self) -> int:
        """Stop the connections whose lease has expired or is no longer open in Remit.
        Remit unable to answer counts as ended (fail closed). Returns how many stopped."""
        entries = [e for e in self._entries.values() if not e.busy]
        if not entries:
            return 0
        ended = await anyio.to_thread.run_sync(self._ended, entries)
        async with self._lock:
            gone = [
                self._entries.pop(e.key)
                for e in ended
                if self._entries.get(e.key) is e and not e.busy
            ]
        await self._stop_all(gone, "lease ended")
        return len(gone)

    def _ended(self, entries: list[_Entry]) -> list[_Entry]:
        now = self._source.now()
        ended = []
        for entry in entries:
            try:
                live = now < entry.expires_at and all(
                    self._source.lease_usable(lease_id) for lease_id in entry.lease_ids
                )
            except Exception as exc:  # fail closed: a lease Remit cannot vouch for ends
                logger.warning("lease sweep: Remit did not answer (%s)", type(exc).__name__)
                live = False
            if not live:
                ended.append(entry)
        return ended

    async def run_sweeper(self, interval: float) -> None:
        """Sweep every ``interval`` seconds, for as long as the gateway runs."""
        while True:
            await anyio.sleep(interval)
            try:
                await self.sweep()
            except RemitError as exc:
                logger.warning("lease sweep failed (%s)", exc.code)

    async def close_all(self) -> None:
        async with self._lock:
            gone = list(self._entries.values())
            self._entries.clear()
        await self._stop_all(gone, "gateway stopping")

    async def _stop_all(self, entries: list[_Entry], why: str) -> None:
        if not entries:
            return
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as group:
                for entry in entries:
                    logger.info(
                        "upstream %s: connection for lease %s stopped (%s)",
                        entry.upstream.name,
                        ",".join(entry.lease_ids),
                        why,
                    )
                    group.start_soon(entry.upstream.stop, STOP_TIMEOUT)


class _Match(Protocol):
    def __call__(self, entry: _Entry, /) -> bool: ...
