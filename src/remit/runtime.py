"""The composition root: the one place that builds everything."""

from __future__ import annotations

from pathlib import Path

import yaml

from remit.clock import Clock, SystemClock
from remit.config import Settings
from remit.core.catalog import Catalog, catalog_from_data
from remit.core.policy import PolicyEngine, PolicySource
from remit.errors import InvalidRequest
from remit.keystore import AuditSigner, FileKeyStore, check_settings_overlap
from remit.providers.registry import build_registry
from remit.service import Remit
from remit.store.audit_log import AuditLog
from remit.store.sql import SqlStore

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_POLICY_FILES = 1000


def read_catalog_file(path: Path) -> Catalog:
    """Read a YAML tool catalog. Safe loader only; anchors and tags are plain data."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidRequest(f"cannot read catalog file {path.name}", reason="bad_catalog") from exc
    return catalog_from_yaml(text)


def catalog_from_yaml(text: str) -> Catalog:
    if len(text) > MAX_MANIFEST_BYTES:
        raise InvalidRequest("catalog manifest is too large", reason="bad_catalog")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise InvalidRequest("catalog manifest is not valid YAML", reason="bad_catalog") from None
    return catalog_from_data(data)


def read_policy_dir(path: Path) -> list[PolicySource]:
    """Every ``*.cedar`` file under ``path``, in a stable order."""
    if not path.is_dir():
        raise InvalidRequest(f"policy directory {path} does not exist", reason="bad_policy_dir")
    files = sorted(p for p in path.rglob("*.cedar") if p.is_file())
    if len(files) > MAX_POLICY_FILES:
        raise InvalidRequest("too many policy files", reason="bad_policy_dir")
    return [PolicySource(str(p.relative_to(path)), p.read_text(encoding="utf-8")) for p in files]


def build_remit(
    settings: Settings, *, clock: Clock | None = None, catalog: Catalog | None = None
) -> Remit:
    clock = clock or SystemClock()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqlStore(settings.effective_database_url, synchronous=settings.sqlite_synchronous)
    store.migrate()
    # Old signing keys must outlive every token they signed; refuse settings that break that.
    overlap = check_settings_overlap(settings)
    keys = FileKeyStore(settings.key_dir, clock, default_overlap_seconds=overlap)
    keys.keyset()
    signer = AuditSigner(keys.audit_key())
    audit = AuditLog(
        store,
        clock,
        signer=signer,
        check_signature=signer.check,
        durable=settings.audit_durable,
        checkpoint_every=settings.audit_checkpoint_every,
        anchor_path=settings.anchor_path,
    )
    audit.start()
    policy = PolicyEngine()
    if catalog is None:
        catalog = read_catalog_file(settings.catalog_path) if settings.catalog_path else Catalog({})
    remit = Remit(
        settings=settings,
        store=store,
        keys=keys,
        clock=clock,
        policy=policy,
        audit=audit,
        catalog=catalog,
    )
    try:
        remit.use_providers(
            build_registry(
                settings.credential_providers,
                key_dir=settings.key_dir,
                issuer=settings.issuer,
                lookup_secret=remit._secret_value,
                reveal_secret=remit.reveal_secret,
            )
        )
        # Reactivate the last good operator policy set; a policy dir in the settings replaces it.
        if settings.policy_dir is not None:
            remit.load_policies(read_policy_dir(settings.policy_dir))
        else:
            stored = store.active_policy_version()
            if stored is not None:
                policy.load(
                    [PolicySource(name, text) for name, text in sorted(stored.sources.items())]
                )
    except BaseException:
        remit.close()
        raise
    return remit
