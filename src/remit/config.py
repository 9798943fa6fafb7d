"""Settings, read once from the environment (``REMIT_*``) by the composition root."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from remit.core.secrets import Secret
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
    # Approvals (issue 5): how long a request stays usable, where new requests are announced
    # (``REMIT_APPROVAL_WEBHOOK``, an http(s) URL; empty: no webhook), and whether the task's
    # own principal may approve (an operator token whose name is the principal id).
    approval_ttl_seconds: int = 600
    approval_webhook: str = ""
    allow_self_approval: bool = False
    # Delegation: the deepest a chain of delegated tasks may go (a root task is depth 0).
    max_delegation_depth: int = 3
    # Sealed secrets (issue 6): the master key that wraps every data key. From
    # ``REMIT_MASTER_KEY`` (base64url of 32 bytes; environment only, never the config file),
    # else from ``master_key_file`` (default ``<data_dir>/keys/master.key``, created 0600 on
    # first use). Superseded keys stay beside it as ``master-<kid>.key`` until no secret
    # needs them. ``REMIT_MASTER_KEY_PREVIOUS`` (environment only): comma-separated
    # base64url keys that may unwrap but never seal, for replacing an environment key
    # without downtime (docs/secrets.md).
    master_key: Secret | None = None
    master_key_file: Path | None = None
    master_key_previous: Secret | None = None
    # Leases (issue 6): the longest a downstream credential lease lives (always cut to its
    # task's expiry; a catalog entry's ttl_seconds may only shorten it), and the credential
    # providers, from the config file's [[credential_providers]] tables only (validated whole
    # by remit.providers.registry; secrets referenced by sealed-secret name, never inline).
    lease_ttl_seconds: int = 900
    credential_providers: tuple[Mapping[str, object], ...] = ()
    # Behaviour baselines and anomalies (issue 7; docs/alerts.md). The automatic response
    # when a call's anomaly score reaches the threshold: none, require_approval or suspend.
    # Alerts are POSTed to ``alert_webhook`` (REMIT_ALERT_WEBHOOK, http(s); empty: none).
    anomaly_response: str = "none"
    anomaly_threshold: int = 70
    anomaly_warmup: int = 50  # allowed decisions before new-tool/destination/sequence findings
    anomaly_history_days: int = 14  # decision records learned from at start
    anomaly_rate_min_calls: int = 30
    anomaly_denial_burst: int = 5
    anomaly_approval_flood: int = 5  # approval requests of one agent within 60 s
    anomaly_dedupe_seconds: int = 300
    alert_webhook: str = ""
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
    def master_key_path(self) -> Path:
        return self.master_key_file or self.key_dir / "master.key"

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
    "approval_ttl_seconds",
    "max_delegation_depth",
    "lease_ttl_seconds",
    "anomaly_threshold",
    "anomaly_warmup",
    "anomaly_history_days",
    "anomaly_rate_min_calls",
    "anomaly_denial_burst",
    "anomaly_approval_flood",
    "anomaly_dedupe_seconds",
}


_PATH_FIELDS = {"data_dir", "catalog_path", "policy_dir", "master_key_file"}
_SECRET_FIELDS = {"master_key", "master_key_previous"}  # environment only, never the file
_BOOL_FIELDS = {"audit_durable", "allow_self_approval"}


def _convert(name: str, raw: object, where: str) -> object:
    """One setting from the environment (a string) or the config file (TOML values)."""
    if name == "credential_providers":
        if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
            raise InvalidRequest(
                f"{where} must be [[credential_providers]] tables in the config file",
                reason="bad_setting",
            )
        return tuple(raw)
    if name in _INT_FIELDS:
        if isinstance(raw, bool):
            raise InvalidRequest(f"{where} must be an integer", reason="bad_setting")
        try:
            return int(raw)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise InvalidRequest(f"{where} must be an integer", reason="bad_setting") from None
    if name in _BOOL_FIELDS:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        raise InvalidRequest(f"{where} must be true or false", reason="bad_setting")
    if not isinstance(raw, str):
        raise InvalidRequest(f"{where} must be a string", reason="bad_setting")
    if name in _SECRET_FIELDS:
        return Secret(raw)
    return Path(raw) if name in _PATH_FIELDS else raw


def read_config_file(path: Path) -> dict[str, object]:
    """Settings from a TOML file, field names in lowercase: ``data_dir = "/var/lib/remit"``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise InvalidRequest(
            f"cannot read the config file {path.name}", reason="bad_config"
        ) from None
    except tomllib.TOMLDecodeError:
        raise InvalidRequest(
            f"config file {path.name} is not valid TOML", reason="bad_config"
        ) from None
    fields = set(Settings.__dataclass_fields__) - {"extra"}
    secret = sorted(set(data) & _SECRET_FIELDS)
    if secret:
        raise InvalidRequest(
            f"config file must not hold {secret[0]}: use REMIT_{secret[0].upper()} or a key file",
            reason="bad_config",
        )
    unknown = sorted(set(data) - fields)
    if unknown:
        # A typo must not silently leave a setting at its default.
        raise InvalidRequest(f"config file has unknown settings: {unknown}", reason="bad_config")
    return {name: _convert(name, value, f"{path.name}: {name}") for name, value in data.items()}


def load_settings(
    env: Mapping[str, str] | None = None, *, config_file: Path | None = None
) -> Settings:
    """Settings, read once: the config file (``config_file`` or ``REMIT_CONFIG``, TOML) first,
    then ``REMIT_<FIELD>`` environment variables, which win, e.g. ``REMIT_DATA_DIR``."""
    env = os.environ if env is None else env
    path = config_file or (Path(env["REMIT_CONFIG"]) if env.get("REMIT_CONFIG") else None)
    values: dict[str, object] = read_config_file(path) if path is not None else {}
    for name in Settings.__dataclass_fields__:
        if name == "extra":
            continue
        raw = env.get("REMIT_" + name.upper())
        if raw is not None:
            values[name] = _convert(name, raw, f"REMIT_{name.upper()}")
    return Settings(**values)  # type: ignore[arg-type]
