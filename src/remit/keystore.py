"""Remit's own private keys on disk: token signing keys (rotating) and the audit key.

Files are created 0600 in a 0700 directory. A signing key's file name holds
its creation time, so the key set can be rebuilt without a database.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from remit.clock import Clock
from remit.core.keys import KeySet, SigningKey, sign_es256, verify_es256
from remit.core.secrets import Secret
from remit.errors import StoreUnavailable


class FileKeyStore:
    def __init__(self, key_dir: Path, clock: Clock) -> None:
        self.key_dir = key_dir
        self.clock = clock
        self._lock = threading.Lock()
        self._keyset: KeySet | None = None
        self._audit_key: SigningKey | None = None

    def _ensure_dir(self) -> None:
        self.key_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.key_dir, 0o700)

    def _write(self, path: Path, pem: Secret) -> None:
        self._ensure_dir()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(pem.reveal())

    def _read(self, path: Path, created_at: float) -> SigningKey:
        try:
            return SigningKey.from_pem(Secret(path.read_text()), created_at)
        except OSError as exc:
            raise StoreUnavailable("a key file could not be read", reason="key_unreadable") from exc

    def keyset(self) -> KeySet:
        with self._lock:
            if self._keyset is None:
                self._keyset = self._load_or_create()
            return self._keyset

    def _load_or_create(self) -> KeySet:
        self._ensure_dir()
        keys = []
        for path in sorted(self.key_dir.glob("signing-*.pem")):
            created = float(path.stem.split("-", 1)[1])
            keys.append(self._read(path, created))
        if not keys:
            key = SigningKey.generate(self.clock.now())
            self._write(self.key_dir / f"signing-{int(key.created_at)}.pem", key.to_pem())
            keys.append(key)
        return KeySet(keys)

    def rotate(self, overlap_seconds: float) -> KeySet:
        """Add a new active key; keep older keys only while tokens they signed may live."""
        with self._lock:
            current = self._keyset or self._load_or_create()
            now = self.clock.now()
            created = max(now, max(k.created_at for k in current) + 1)
            new_key = SigningKey.generate(created)
            self._write(self.key_dir / f"signing-{int(created)}.pem", new_key.to_pem())
            rotated = current.rotated(new_key, retain_after=overlap_seconds, now=now)
            kept = {key.kid for key in rotated}
            for key in current:
                if key.kid not in kept:
                    (self.key_dir / f"signing-{int(key.created_at)}.pem").unlink(missing_ok=True)
            self._keyset = rotated
            return rotated

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
