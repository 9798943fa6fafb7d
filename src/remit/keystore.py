"""Remit's own private keys on disk: token signing keys (rotating) and the audit key.

Files are created 0600 in a 0700 directory. The key set is rebuilt from the
file names alone, without a database:

- ``signing-<created>.pem``: the active key (the newest), created at
  ``<created>`` (whole seconds since the epoch).
- ``signing-<created>-<retire>.pem``: a superseded key. It still verifies the
  tokens it signed, and stays in the JWKS, until ``<retire>`` (the time it was
  superseded plus the overlap); after that it is dropped from the key set on
  the next read and its file is deleted.

Rotation with overlap: ``rotate(overlap)`` writes a new key (which signs every
token from then on) and renames the old active key's file to record when it
retires. Retirement is by time, not by the next rotation: ``keyset()`` prunes
on read against the injected clock, so the ``TokenService`` (which reads the
key set through ``keyset`` on every issue and verify) stops accepting tokens
signed by a retired key at once, even from its verified-token cache.

The overlap must be at least the longest lifetime of a token Remit signs (the
identity token TTL, the task token maximum TTL) plus the verification leeway,
or tokens would be refused before they expire: see ``check_key_overlap``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from remit.clock import Clock
from remit.config import Settings
from remit.core.keys import KeySet, SigningKey, sign_es256, verify_es256
from remit.core.sealing import MasterKey, parse_master_keys
from remit.core.secrets import Secret
from remit.errors import InvalidRequest, SealError, StoreUnavailable

DEFAULT_KEY_OVERLAP: Final = float(Settings().key_overlap_seconds)
VERIFY_LEEWAY: Final = 5.0  # the TokenService's clock-skew leeway on ``exp``
_SIGNING_FILE = re.compile(r"signing-([0-9]{1,12})(?:-([0-9]{1,12}))?\.pem")


def _check_seconds(value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidRequest(
            "key overlap must be a non-negative number of seconds", reason="bad_key_overlap"
        )
    return float(value)


def check_key_overlap(
    overlap_seconds: float,
    *,
    identity_ttl_seconds: float,
    task_token_max_ttl_seconds: float,
    leeway: float = VERIFY_LEEWAY,
) -> float:
    """The overlap, or raise ``InvalidRequest`` if it cannot cover the longest token.

    A key superseded at time T signed tokens up to T; the last of them is valid
    until T + its lifetime (+ the leeway), so the key must stay that long.
    """
    _check_seconds(overlap_seconds)
    longest = max(identity_ttl_seconds, task_token_max_ttl_seconds) + leeway
    if overlap_seconds < longest:
        raise InvalidRequest(
            f"key overlap ({overlap_seconds:g}s) must be at least the longest token lifetime "
            f"plus leeway ({longest:g}s)",
            reason="bad_key_overlap",
        )
    return float(overlap_seconds)


def check_settings_overlap(settings: Settings) -> float:
    """``check_key_overlap`` for ``Settings.key_overlap_seconds`` and the token TTLs there."""
    return check_key_overlap(
        settings.key_overlap_seconds,
        identity_ttl_seconds=settings.identity_ttl_seconds,
        task_token_max_ttl_seconds=settings.task_token_max_ttl_seconds,
    )


@dataclass(frozen=True, slots=True)
class _KeyFile:
    key: SigningKey
    path: Path
    retire_at: float | None  # None for the active key


@dataclass(frozen=True, slots=True)
class _Loaded:
    files: tuple[_KeyFile, ...]  # oldest first; the last one is active
    keyset: KeySet
    next_retire: float  # the earliest retire_at, or +inf


def _loaded(files: list[_KeyFile]) -> _Loaded:
    retire = [f.retire_at for f in files if f.retire_at is not None]
    return _Loaded(tuple(files), KeySet([f.key for f in files]), min(retire, default=math.inf))


class FileKeyStore:
    """Signing keys and the audit key, in files under ``key_dir``.

    ``default_overlap_seconds`` only matters for a superseded key whose file
    does not record when it retires (a crash between writing a new key and
    renaming the old one): it then retires that long after the next key was
    created.
    """

    def __init__(
        self,
        key_dir: Path,
        clock: Clock,
        *,
        default_overlap_seconds: float = DEFAULT_KEY_OVERLAP,
    ) -> None:
        _check_seconds(default_overlap_seconds)
        self.key_dir = key_dir
        self.clock = clock
        self.default_overlap_seconds = float(default_overlap_seconds)
        self._lock = threading.Lock()
        self._state: _Loaded | None = None
        self._audit_key: SigningKey | None = None

    # ------------------------------------------------------------------ files

    def _ensure_dir(self) -> None:
        self.key_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.key_dir, 0o700)

    def _write(self, path: Path, pem: Secret) -> None:
        self._ensure_dir()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(pem.reveal())
            handle.flush()
            os.fsync(handle.fileno())

    def _read(self, path: Path, created_at: float) -> SigningKey:
        try:
            return SigningKey.from_pem(Secret(path.read_text()), created_at)
        except OSError as exc:
            raise StoreUnavailable("a key file could not be read", reason="key_unreadable") from exc

    def _signing_path(self, created: int, retire_at: float | None = None) -> Path:
        if retire_at is None:
            return self.key_dir / f"signing-{created}.pem"
        return self.key_dir / f"signing-{created}-{math.ceil(retire_at)}.pem"

    def _mark_retiring(self, entry: _KeyFile, retire_at: float) -> _KeyFile:
        """Record the retire time in the file name (best effort: memory is authoritative)."""
        target = self._signing_path(int(entry.key.created_at), retire_at)
        try:
            os.replace(entry.path, target)
        except OSError:
            target = entry.path
        return _KeyFile(entry.key, target, float(math.ceil(retire_at)))

    @staticmethod
    def _delete(path: Path) -> None:
        # Best effort: a file left behind is pruned again at the next load, by its name.
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ signing keys

    def keyset(self) -> KeySet:
        """The live signing keys: the active one and those still inside their overlap."""
        with self._lock:
            state = self._state
            if state is None:
                state = self._state = self._load_or_create()
            now = self.clock.now()
            if now >= state.next_retire:
                state = self._state = self._prune(state, now)
            return state.keyset

    def retire_times(self) -> dict[str, float]:
        """When each superseded key leaves the key set, by kid (for operators and tests)."""
        self.keyset()
        with self._lock:
            assert self._state is not None
            return {f.key.kid: f.retire_at for f in self._state.files if f.retire_at is not None}

    def _prune(self, state: _Loaded, now: float) -> _Loaded:
        kept: list[_KeyFile] = []
        for entry in state.files:
            if entry.retire_at is not None and now >= entry.retire_at:
                self._delete(entry.path)
            else:
                kept.append(entry)
        return _loaded(kept)

    def _scan(self) -> list[tuple[int, int | None, Path]]:
        found: list[tuple[int, int | None, Path]] = []
        for path in self.key_dir.glob("signing-*.pem"):
            match = _SIGNING_FILE.fullmatch(path.name)
            if match is None:
                raise StoreUnavailable(
                    "a signing key file name is not understood", reason="key_unreadable"
                )
            retire = int(match.group(2)) if match.group(2) is not None else None
            found.append((int(match.group(1)), retire, path))
        found.sort(key=lambda item: (item[0], item[2].name))
        return found

    def _load_or_create(self) -> _Loaded:
        self._ensure_dir()
        now = self.clock.now()
        found = self._scan()
        if not found:
            created = math.floor(now)
            key = SigningKey.generate(float(created))
            path = self._signing_path(created)
            self._write(path, key.to_pem())
            return _loaded([_KeyFile(key, path, None)])
        files: list[_KeyFile] = []
        for index, (created, retire, path) in enumerate(found):
            is_active = index == len(found) - 1
            if not is_active and retire is None:
                # Superseded, but the rename that records it never happened.
                superseded_at = float(found[index + 1][0])
                entry = _KeyFile(self._read(path, float(created)), path, None)
                files.append(
                    self._mark_retiring(entry, superseded_at + self.default_overlap_seconds)
                )
                continue
            if not is_active and retire is not None and now >= retire:
                self._delete(path)  # retired while Remit was down: never loaded again
                continue
            # The newest key is active even if its name says otherwise (its successor is gone).
            retire_at = None if is_active or retire is None else float(retire)
            files.append(_KeyFile(self._read(path, float(created)), path, retire_at))
        return self._prune(_loaded(files), now)

    def rotate(self, overlap_seconds: float) -> KeySet:
        """Make a new key active; the old one verifies for ``overlap_seconds`` more.

        The old key (and any still overlapping older one) stays in the key set
        and the JWKS until its retire time, then leaves it by itself. The caller
        checks ``overlap_seconds`` against token lifetimes (``check_key_overlap``).
        """
        _check_seconds(overlap_seconds)
        with self._lock:
            now = self.clock.now()
            state = self._prune(self._state or self._load_or_create(), now)
            *older, active = state.files
            created = max(math.floor(now), int(active.key.created_at) + 1)
            new_key = SigningKey.generate(float(created))
            new_path = self._signing_path(created)
            self._write(new_path, new_key.to_pem())
            # Superseded now; its last tokens live at most the overlap longer.
            superseded = self._mark_retiring(active, max(now, float(created)) + overlap_seconds)
            self._state = _loaded([*older, superseded, _KeyFile(new_key, new_path, None)])
            return self._state.keyset

    # ------------------------------------------------------------------ audit key

    def audit_key(self) -> SigningKey:
        with self._lock:
            if self._audit_key is None:
                path = self.key_dir / "audit.pem"
                if path.exists():
                    self._audit_key = self._read(path, 0.0)
                else:
                    key = SigningKey.generate(self.clock.now())
                    self._write(path, key.to_pem())
                    self._audit_key = key
            return self._audit_key


class AuditSigner:
    """Signs audit checkpoints with the audit key; verifies them by kid."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.kid = key.kid

    def sign(self, payload: bytes) -> bytes:
        return sign_es256(self.key.private_key, payload)

    def check(self, kid: str, payload: bytes, signature: bytes) -> bool:
        if kid != self.kid:
            return False
        return verify_es256(self.key.private_key.public_key(), payload, signature)


_RETAINED_MASTER = re.compile(r"master-([0-9a-f]{16})\.key")


class MasterKeyStore:
    """The master keys that wrap sealed secrets' data keys.

    The active key comes from ``REMIT_MASTER_KEY`` when set, else from the key
    file (``Settings.master_key_path``), created 0600 (in a 0700 directory) on
    first use. A superseded key is kept beside it as ``master-<kid>.key`` until
    no stored secret is wrapped by it any more (``retire_unused``).
    ``REMIT_MASTER_KEY_PREVIOUS`` (environment only) adds keys that may unwrap
    but never seal: the rolling replacement of an environment key (docs/secrets.md).

    The key file is re-read when it changes (another process rotated it), and
    the directory is re-scanned when a secret names a key not in memory. Every
    key this process has held stays in memory (``find``) even after its file is
    retired: a row sealed with it just before another process retired it can
    still be re-wrapped to the active key (``durable`` tells when that is needed).
    Every file is written to a temporary name first and moved into place, so
    another process never reads a half-written key.
    """

    def __init__(
        self,
        path: Path,
        env_key: Secret | None = None,
        previous: Secret | None = None,
    ) -> None:
        self.path = path
        self.env_key = env_key
        self._lock = threading.Lock()
        self._active: MasterKey | None = None
        self._stamp: tuple[int, int] | None = None  # (inode, mtime_ns) of the key file read
        self._known: dict[str, MasterKey] = {}
        # Unwrap-only keys (never seal), parsed eagerly: a bad one is refused at start.
        self._previous: dict[str, MasterKey] = {
            k.kid: k for k in (parse_master_keys(previous) if previous is not None else ())
        }
        self._known.update(self._previous)

    @classmethod
    def from_settings(cls, settings: Settings) -> MasterKeyStore:
        return cls(settings.master_key_path, settings.master_key, settings.master_key_previous)

    @property
    def from_env(self) -> bool:
        return self.env_key is not None

    @property
    def previous_kids(self) -> tuple[str, ...]:
        """The ids of the unwrap-only keys from ``REMIT_MASTER_KEY_PREVIOUS``."""
        return tuple(sorted(self._previous))

    # ------------------------------------------------------------------ files
    def _ensure_dir(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path.parent, 0o700)

    def _write_tmp(self, key: MasterKey) -> Path:
        """``key`` in a new 0600 file under a temporary name (fsynced)."""
        self._ensure_dir()
        tmp = self.path.parent / f".master-{key.kid}-{os.getpid()}-{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key.to_b64().reveal() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return tmp

    def _write_new(self, path: Path, key: MasterKey) -> None:
        """Write ``key`` to a new file, 0600, atomically; FileExistsError if it is there."""
        tmp = self._write_tmp(key)
        try:
            os.link(tmp, path)  # atomic, and fails if ``path`` exists
        finally:
            tmp.unlink(missing_ok=True)

    def _read(self, path: Path) -> MasterKey:
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreUnavailable(
                "a master key file could not be read", reason="key_unreadable"
            ) from exc
        return MasterKey.from_b64(Secret(text))

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def _retained_path(self, kid: str) -> Path:
        return self.path.parent / f"master-{kid}.key"

    # ------------------------------------------------------------------ keys
    def active(self) -> MasterKey:
        """The key that seals new secrets (created in the key file on first use)."""
        with self._lock:
            return self._active_locked()

    def _active_locked(self) -> MasterKey:
        if self.env_key is not None:
            if self._active is None:
                self._active = MasterKey.from_b64(self.env_key)
                self._known[self._active.kid] = self._active
            return self._active
        stamp = self._stat()
        if self._active is not None and stamp == self._stamp:
            return self._active
        if stamp is None:
            # Another process may have made it first: then use theirs.
            with contextlib.suppress(FileExistsError):
                self._write_new(self.path, MasterKey.generate())
            stamp = self._stat()
        key = self._read(self.path)
        self._active, self._stamp = key, stamp
        self._known[key.kid] = key
        return key

    def find(self, kid: str) -> MasterKey | None:
        """The master key with id ``kid``: the active one, a retained or previous one, or one
        this process held before it was retired; None if there is none."""
        with self._lock:
            active = self._active_locked()
            if kid == active.kid:
                return active
            if kid not in self._known:
                self._scan()
            return self._known.get(kid)

    def durable(self, kid: str) -> bool:
        """Whether a fresh process could open what ``kid`` wraps: it is the active key (the
        key file is re-checked now), a previous key from the environment, or a retained key
        file still on disk. False means only memory still holds it (it was retired while
        something was being sealed with it): re-wrap that to the active key at once."""
        with self._lock:
            if kid == self._active_locked().kid or kid in self._previous:
                return True
            if self._retained_path(kid).exists():
                return True
            if self.env_key is not None and self.path.exists():
                return self._read(self.path).kid == kid
            return False

    def _scan(self) -> None:
        for path in self._retained_paths():
            key = self._read(path)
            self._known[key.kid] = key
        if self.env_key is not None and self.path.exists():
            # Moved from the file to the environment: the file's key still opens old secrets.
            key = self._read(self.path)
            self._known[key.kid] = key

    def _retained_paths(self) -> list[Path]:
        if not self.path.parent.is_dir():
            return []
        return sorted(
            p for p in self.path.parent.glob("master-*.key") if _RETAINED_MASTER.fullmatch(p.name)
        )

    def retained_kids(self) -> list[str]:
        """The ids of superseded keys still kept on disk."""
        with self._lock:
            self._scan()
            active = self._active_locked().kid
            return sorted(
                kid
                for kid in (
                    m.group(1)
                    for m in (_RETAINED_MASTER.fullmatch(p.name) for p in self._retained_paths())
                    if m
                )
                if kid != active
            )

    # ------------------------------------------------------------------ rotation
    def rotate(self) -> tuple[MasterKey, MasterKey]:
        """Make a new key active; keep the old one as ``master-<kid>.key``. (old, new).

        Crash-safe in order: the old key is copied aside before the new one replaces the
        key file, so every stored secret stays openable at every step.
        """
        if self.env_key is not None:
            raise InvalidRequest(
                "the master key comes from REMIT_MASTER_KEY; it cannot be rotated from here: "
                "set a new REMIT_MASTER_KEY with the old one in REMIT_MASTER_KEY_PREVIOUS, "
                "then run `remit secrets rewrap`",
                reason="master_key_from_env",
            )
        with self._lock:
            old = self._active_locked()
            with contextlib.suppress(FileExistsError):
                self._write_new(self._retained_path(old.kid), old)
            new = MasterKey.generate()
            tmp = self._write_tmp(new)
            os.replace(tmp, self.path)
            self._active, self._stamp = new, self._stat()
            self._known[new.kid] = new
            return old, new

    def retire_unused(self, in_use: set[str]) -> list[str]:
        """Delete retained key files no stored secret is wrapped by. The ids deleted.

        The keys stay in this process's memory, so whatever another process sealed with
        one of them meanwhile can still be re-wrapped (see ``Remit._retire_master_keys``).
        """
        retired: list[str] = []
        with self._lock:
            active = self._active_locked().kid
            for path in self._retained_paths():
                match = _RETAINED_MASTER.fullmatch(path.name)
                if match is None or match.group(1) in in_use or match.group(1) == active:
                    continue
                if match.group(1) not in self._known:
                    with contextlib.suppress(StoreUnavailable, SealError):
                        key = self._read(path)
                        self._known[key.kid] = key
                if match.group(1) not in self._known:
                    # Never delete a key this process could not read and hold in memory:
                    # whatever it wraps would be lost with it.
                    continue
                path.unlink(missing_ok=True)
                retired.append(match.group(1))
        return retired
