"""Settings, read once from the environment (``REMIT_*``) by the composition root."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from remit.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path("var/remit")
    database_url: str = ""  # empty: sqlite file in data_dir
    trust_domain: str = "remit.local"
    issuer: str = "https://remit.local"
    audience: str = "remit"
    catalog_path: Path | None = None  # YAML tool catalog
    policy_dir: Path | None = None  # operator Cedar policies (*.cedar)
    identity_ttl_seconds: int = 3600
    task_token_max_ttl_seconds: int = 900
    max_task_ttl_seconds: int = 3600
    join_token_ttl_seconds: int = 600
    audit_durable: bool = True  # a decision returns only after its audit record is committed
    sqlite_synchronous: str = "NORMAL"  # FULL: survive power loss too, at one fsync per group
    audit_checkpoint_every: int = 1000
    max_calls_per_minute: int = 600
    # How long a superseded signing key still verifies (and is in the JWKS). It must be at
    # least the longest token lifetime plus leeway; build_remit refuses a shorter one.
    key_overlap_seconds: int = 7200
    # The URL clients use to reach the HTTP API (e.g. ``https://remit.example.com``), used to
    # check the URL a proof names. Empty: taken from the request (scheme, Host header). Set it
    # behind a proxy, and in production so the check does not rest on the Host header.
    public_url: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "remit.db"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.sqlite_path}"

    @property
    def key_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def anchor_path(self) -> Path:
        return self.data_dir / "audit-anchor.json"

    def with_data_dir(self, data_dir: Path) -> Settings:
        return replace(self, data_dir=data_dir)


_INT_FIELDS = {
    "identity_ttl_seconds",
    "task_token_max_ttl_seconds",
    "max_task_ttl_seconds",
    "join_token_ttl_seconds",
    "audit_checkpoint_every",
    "max_calls_per_minute",
    "key_overlap_seconds",
}


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read ``REMIT_<FIELD>`` variables, e.g. ``REMIT_DATA_DIR``, ``REMIT_TRUST_DOMAIN``."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    for name in Settings.__dataclass_fields__:
        if name == "extra":
            continue
        raw = env.get("REMIT_" + name.upper())
        if raw is None:
            continue
        if name in _INT_FIELDS:
            try:
                values[name] = int(raw)
            except ValueError:
                raise InvalidRequest(
                    f"REMIT_{name.upper()} must be an integer", reason="bad_setting"
                ) from None
        elif name == "audit_durable":
            values[name] = raw.strip().lower() not in ("0", "false", "no", "off")
        elif name in ("data_dir", "catalog_path", "policy_dir"):
            values[name] = Path(raw)
        else:
            values[name] = raw
    return Settings(**values)  # type: ignore[arg-type]
