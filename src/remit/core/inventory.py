"""Non-human identity inventory: existing service accounts and credentials, and their sprawl.

Pure: parses text handed to it and reports over values; no I/O, no clock (``now`` is
passed in). Nothing here is a secret: an inventory lists credentials by id, never values.

Input, CSV (a header row, then one row per credential) or JSON (a list of objects), with
the columns / keys

=============  ========  ==========================================================
``id``         required  the credential or service account id (unique, printable)
``owner``      optional  the accountable human or team; empty means *no owner*
``systems``    optional  the systems it grants access to
``created``    required  ISO 8601 date or date-time (UTC if no offset is given)
``last_rotated``  optional  ISO 8601; empty means *never rotated*
``used_by``    optional  the agents (Remit agent names or SPIFFE IDs) that use it
``remit_secret``  optional  the name of the Remit sealed secret that brokers it
=============  ========  ==========================================================

List cells in CSV are separated by ``;`` (``crm;billing``); in JSON they are lists of
strings (a string is read like a CSV cell). Any problem raises ``InvalidRequest``
(code ``invalid_request``, reason ``bad_inventory``) naming the row: "row N" counts the
data records from 1; for CSV the file line is given too.

The report (``inventory_report``) finds the sprawl that destroys attribution:

* **shared**: credentials used by two or more distinct agents (after resolving names
  and SPIFFE IDs of Remit agents to one agent);
* **stale**: credentials whose last rotation (or creation, if never rotated) is more
  than ``max_age_days`` before ``now``;
* **missing owner**: credentials with an empty owner;
* **unbrokered use**: a Remit agent uses a credential that is not a Remit sealed
  secret (neither its ``remit_secret`` nor its ``id`` names a stored secret): the
  agent holds it directly, so its use is outside Remit's leases and audit;
* **unknown users**: ``used_by`` entries that are no registered Remit agent: use that
  cannot be attributed to an identity Remit governs;
* **unused**: credentials with no ``used_by`` at all (offboarding candidates).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final

from remit.errors import InvalidRequest

__all__ = [
    "COLUMNS",
    "AgentRef",
    "InventoryImport",
    "InventoryItem",
    "InventoryReport",
    "check_import",
    "inventory_report",
    "parse_inventory",
]

REQUIRED: Final[tuple[str, ...]] = ("id", "created")
COLUMNS: Final[tuple[str, ...]] = (
    "id",
    "owner",
    "systems",
    "created",
    "last_rotated",
    "used_by",
    "remit_secret",
)
MAX_BYTES: Final = 16 * 1024 * 1024
MAX_ROWS: Final = 100_000
MAX_FIELD: Final = 1024
MAX_LIST: Final = 256
DAY: Final = 86_400.0
REASON: Final = "bad_inventory"


@dataclass(frozen=True, slots=True)
class InventoryItem:
    """One credential or service account. Times are seconds since the epoch (UTC)."""

    id: str
    owner: str | None
    systems: tuple[str, ...]
    created: float
    last_rotated: float | None
    used_by: tuple[str, ...]
    remit_secret: str | None = None

    @property
    def rotated_or_created(self) -> float:
        return self.last_rotated if self.last_rotated is not None else self.created

    def to_data(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "owner": self.owner,
            "systems": list(self.systems),
            "created": _iso(self.created),
            "last_rotated": _iso(self.last_rotated) if self.last_rotated is not None else None,
            "used_by": list(self.used_by),
            "remit_secret": self.remit_secret,
        }


@dataclass(frozen=True, slots=True)
class AgentRef:
    """A registered Remit agent, as inventory ``used_by`` entries may name it."""

    name: str
    agent_id: str  # its SPIFFE ID


@dataclass(frozen=True, slots=True)
class InventoryImport:
    """The stored inventory's provenance: one import replaces the previous one whole."""

    import_id: str
    source_sha256: str  # of the file (or request body) the items were parsed from
    imported_by: str  # the operator token's name, or "local" for the data directory
    imported_at: float
    credentials: int

    def to_data(self) -> dict[str, Any]:
        return {
            "import_id": self.import_id,
            "source_sha256": self.source_sha256,
            "imported_by": self.imported_by,
            "imported_at": _iso(self.imported_at),
            "credentials": self.credentials,
        }


_SHA256: Final = re.compile(r"[0-9a-f]{64}")


def check_import(items: object, source_digest: object) -> tuple[InventoryItem, ...]:
    """The items of an import, checked as a whole: a non-empty sequence of at most
    ``MAX_ROWS`` ``InventoryItem`` with unique ids, and a lowercase hex SHA-256."""
    if not isinstance(source_digest, str) or not _SHA256.fullmatch(source_digest):
        raise InvalidRequest("the source digest must be a lowercase hex SHA-256", reason=REASON)
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        raise InvalidRequest("an inventory import is a list of items", reason=REASON)
    if not items:
        raise InvalidRequest("the inventory has no rows", reason=REASON)
    if len(items) > MAX_ROWS:
        raise InvalidRequest(f"the inventory has more than {MAX_ROWS} rows", reason=REASON)
    seen: set[str] = set()
    for index, item in enumerate(items, start=1):
        if not isinstance(item, InventoryItem):
            raise InvalidRequest(f"row {index}: not an inventory item", reason=REASON)
        if item.id in seen:
            raise InvalidRequest(f"row {index}: id {item.id!r} was already given", reason=REASON)
        seen.add(item.id)
    return tuple(items)


# ----------------------------------------------------------------------------- parsing


def parse_inventory(text: str, fmt: str) -> tuple[InventoryItem, ...]:
    """Parse and validate a whole inventory (``fmt`` is ``"csv"`` or ``"json"``)."""
    if not isinstance(text, str):
        raise InvalidRequest("an inventory must be text", reason=REASON)
    if len(text.encode("utf-8")) > MAX_BYTES:
        raise InvalidRequest(f"the inventory is larger than {MAX_BYTES} bytes", reason=REASON)
    if fmt == "csv":
        rows = list(_csv_rows(text))
    elif fmt == "json":
        rows = list(_json_rows(text))
    else:
        raise InvalidRequest("inventory format must be csv or json", reason=REASON)
    if not rows:
        raise InvalidRequest("the inventory has no rows", reason=REASON)
    items: list[InventoryItem] = []
    seen: dict[str, str] = {}
    for where, row in rows:
        item = _item(row, where)
        if item.id in seen:
            raise InvalidRequest(
                f"{where}: id {item.id!r} was already given in {seen[item.id]}", reason=REASON
            )
        seen[item.id] = where
        items.append(item)
    return tuple(items)


def _csv_rows(text: str) -> Iterable[tuple[str, Mapping[str, object]]]:
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise InvalidRequest("the inventory is empty", reason=REASON)
        names = [h.strip().lower() for h in header]
        _check_columns(names, "the CSV header")
        count = 0
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue  # a blank line
            count += 1
            where = f"row {count} (line {reader.line_num})"
            if count > MAX_ROWS:
                raise InvalidRequest(f"the inventory has more than {MAX_ROWS} rows", reason=REASON)
            if len(cells) != len(names):
                raise InvalidRequest(
                    f"{where}: {len(cells)} cells where the header has {len(names)}",
                    reason=REASON,
                )
            yield where, dict(zip(names, cells, strict=True))
    except csv.Error as exc:
        raise InvalidRequest(
            f"the inventory is not valid CSV (line {reader.line_num}): {exc}", reason=REASON
        ) from None


def _json_rows(text: str) -> Iterable[tuple[str, Mapping[str, object]]]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidRequest("the inventory is not valid JSON", reason=REASON) from None
    if isinstance(data, Mapping) and set(data) == {"credentials"}:
        data = data["credentials"]
    if not isinstance(data, list):
        raise InvalidRequest(
            'a JSON inventory is a list of objects (or {"credentials": [...]})', reason=REASON
        )
    if len(data) > MAX_ROWS:
        raise InvalidRequest(f"the inventory has more than {MAX_ROWS} rows", reason=REASON)
    for index, row in enumerate(data, start=1):
        where = f"row {index}"
        if not isinstance(row, Mapping):
            raise InvalidRequest(f"{where}: must be an object", reason=REASON)
        _check_columns([str(k) for k in row], where)
        yield where, row


def _check_columns(names: Sequence[str], where: str) -> None:
    unknown = sorted(set(names) - set(COLUMNS))
    if unknown:
        # A typo must not silently drop a column (e.g. an owner that is never read).
        raise InvalidRequest(
            f"{where} has unknown columns {unknown}; known: {list(COLUMNS)}", reason=REASON
        )
    if len(set(names)) != len(names):
        raise InvalidRequest(f"{where} names a column twice", reason=REASON)
    missing = [c for c in REQUIRED if c not in names]
    if missing and where == "the CSV header":
        raise InvalidRequest(f"{where} lacks the columns {missing}", reason=REASON)


def _item(row: Mapping[str, object], where: str) -> InventoryItem:
    ident = _text(row.get("id"), where, "id")
    if ident is None:
        raise InvalidRequest(f"{where}: id is required", reason=REASON)
    owner = _text(row.get("owner"), where, "owner")
    created_raw = _text(row.get("created"), where, "created")
    if created_raw is None:
        raise InvalidRequest(f"{where}: created is required", reason=REASON)
    created = _time(created_raw, where, "created")
    rotated_raw = _text(row.get("last_rotated"), where, "last_rotated")
    rotated = _time(rotated_raw, where, "last_rotated") if rotated_raw is not None else None
    if rotated is not None and rotated < created:
        raise InvalidRequest(f"{where}: last_rotated is before created", reason=REASON)
    return InventoryItem(
        id=ident,
        owner=owner,
        systems=_list(row.get("systems"), where, "systems"),
        created=created,
        last_rotated=rotated,
        used_by=_list(row.get("used_by"), where, "used_by"),
        remit_secret=_text(row.get("remit_secret"), where, "remit_secret"),
    )


def _text(value: object, where: str, column: str) -> str | None:
    """A stripped, printable, bounded string; None when empty or absent."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{where}: {column} must be a string", reason=REASON)
    value = value.strip()
    if not value:
        return None
    if len(value) > MAX_FIELD or not value.isprintable():
        raise InvalidRequest(
            f"{where}: {column} must be printable and at most {MAX_FIELD} characters",
            reason=REASON,
        )
    return value


def _list(value: object, where: str, column: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        parts: list[object] = list(value.split(";"))
    elif isinstance(value, list):
        parts = list(value)
    else:
        raise InvalidRequest(f"{where}: {column} must be a list of strings", reason=REASON)
    found: list[str] = []
    for part in parts:
        text = _text(part, where, column)
        if text is not None:
            found.append(text)
    if len(found) > MAX_LIST:
        raise InvalidRequest(f"{where}: {column} has more than {MAX_LIST} entries", reason=REASON)
    return tuple(dict.fromkeys(found))


def _time(text: str, where: str, column: str) -> float:
    try:
        if len(text) == 10:
            parsed = datetime.combine(date.fromisoformat(text), datetime.min.time())
        else:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"{where}: {column} must be an ISO 8601 date (2025-01-31) or date-time",
            reason=REASON,
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------- the report


@dataclass(frozen=True, slots=True)
class SharedCredential:
    id: str
    agents: tuple[str, ...]  # distinct users, Remit agents by SPIFFE ID, others as written


@dataclass(frozen=True, slots=True)
class StaleCredential:
    id: str
    age_days: int  # whole days since last rotation (or creation)
    basis: str  # "last_rotated" or "created"


@dataclass(frozen=True, slots=True)
class UnbrokeredUse:
    id: str
    agent_id: str


@dataclass(frozen=True, slots=True)
class UnknownUse:
    id: str
    user: str


@dataclass(frozen=True, slots=True)
class InventoryReport:
    generated_at: float
    max_age_days: int
    credentials: int
    brokered: tuple[str, ...]  # ids of credentials that are Remit sealed secrets
    shared: tuple[SharedCredential, ...]
    stale: tuple[StaleCredential, ...]
    missing_owner: tuple[str, ...]
    unbrokered_use: tuple[UnbrokeredUse, ...]
    unknown_users: tuple[UnknownUse, ...]
    unused: tuple[str, ...]
    future_dated: tuple[str, ...]  # created or rotated after ``generated_at``: suspect data

    @property
    def unbrokered_credentials(self) -> tuple[str, ...]:
        """Distinct credentials that a Remit agent uses outside Remit."""
        return tuple(sorted({u.id for u in self.unbrokered_use}))

    def finding_count(self) -> int:
        return (
            len(self.shared)
            + len(self.stale)
            + len(self.missing_owner)
            + len(self.unbrokered_credentials)
            + len({u.id for u in self.unknown_users})
        )

    def to_data(self) -> dict[str, Any]:
        return {
            "generated_at": _iso(self.generated_at),
            "max_age_days": self.max_age_days,
            "credentials": self.credentials,
            "brokered": list(self.brokered),
            "shared": [{"id": s.id, "agents": list(s.agents)} for s in self.shared],
            "stale": [{"id": s.id, "age_days": s.age_days, "basis": s.basis} for s in self.stale],
            "missing_owner": list(self.missing_owner),
            "unbrokered_use": [{"id": u.id, "agent": u.agent_id} for u in self.unbrokered_use],
            "unbrokered_credentials": list(self.unbrokered_credentials),
            "unknown_users": [{"id": u.id, "user": u.user} for u in self.unknown_users],
            "unused": list(self.unused),
            "future_dated": list(self.future_dated),
            "findings": self.finding_count(),
        }


def inventory_report(
    items: Sequence[InventoryItem],
    *,
    agents: Sequence[AgentRef],
    secrets: Iterable[str],
    now: float,
    max_age_days: int = 90,
) -> InventoryReport:
    """The sprawl report over ``items``; see the module docstring for each finding.

    ``agents`` are the registered Remit agents, ``secrets`` the names of Remit's sealed
    secrets. Results are sorted by credential id, so the report is reproducible for
    the same inventory, agents, secrets and ``now``.
    """
    if isinstance(max_age_days, bool) or not isinstance(max_age_days, int):
        raise InvalidRequest("max age must be a whole number of days", reason=REASON)
    if not 1 <= max_age_days <= 36_500:
        raise InvalidRequest("max age must be from 1 to 36500 days", reason=REASON)
    resolve: dict[str, str] = {}
    for agent in agents:
        resolve[agent.name] = agent.agent_id
        resolve[agent.agent_id] = agent.agent_id
    stored = frozenset(secrets)
    limit = max_age_days * DAY
    brokered: list[str] = []
    shared: list[SharedCredential] = []
    stale: list[StaleCredential] = []
    missing_owner: list[str] = []
    unbrokered: list[UnbrokeredUse] = []
    unknown: list[UnknownUse] = []
    unused: list[str] = []
    future: list[str] = []
    for item in sorted(items, key=lambda i: i.id):
        is_brokered = (item.remit_secret or item.id) in stored
        if is_brokered:
            brokered.append(item.id)
        users = tuple(sorted({resolve.get(u, u) for u in item.used_by}))
        if len(users) >= 2:
            shared.append(SharedCredential(item.id, users))
        if not users:
            unused.append(item.id)
        basis = "last_rotated" if item.last_rotated is not None else "created"
        age = now - item.rotated_or_created
        if age > limit:
            stale.append(StaleCredential(item.id, int(age // DAY), basis))
        if item.created > now or (item.last_rotated is not None and item.last_rotated > now):
            future.append(item.id)
        if item.owner is None:
            missing_owner.append(item.id)
        for user in sorted(set(item.used_by)):
            agent_id = resolve.get(user)
            if agent_id is None:
                unknown.append(UnknownUse(item.id, user))
            elif not is_brokered:
                unbrokered.append(UnbrokeredUse(item.id, agent_id))
    return InventoryReport(
        generated_at=now,
        max_age_days=max_age_days,
        credentials=len(items),
        brokered=tuple(brokered),
        shared=tuple(shared),
        stale=tuple(stale),
        missing_owner=tuple(missing_owner),
        unbrokered_use=tuple(dict.fromkeys(unbrokered)),
        unknown_users=tuple(unknown),
        unused=tuple(unused),
        future_dated=tuple(future),
    )
