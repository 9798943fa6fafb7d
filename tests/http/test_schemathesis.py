"""Property-based checks of the API against its own OpenAPI document (schemathesis).

Every operation is exercised with generated valid and invalid requests, as an
admin operator: no 5xx, every status, header and body as documented.

schemathesis needs the schema when tests are collected (its lazy fixture
loader does not work with pytest 9), so the app is built at import, on a
temporary directory removed at exit.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings

from remit.http.app import create_app
from tests.http.conftest import live_remit

_DATA = Path(tempfile.mkdtemp(prefix="remit-schemathesis-"))
_REMIT = live_remit(_DATA)
_, _SECRET = _REMIT.create_admin_token("schemathesis", scopes=["admin"])


@atexit.register
def _cleanup() -> None:
    _REMIT.close()
    shutil.rmtree(_DATA, ignore_errors=True)


# Operations whose bodies carry meaning JSON Schema cannot state, so that a schema-valid
# request is rightly refused (400 invalid_request / invalid_grant, 422 policy_invalid):
# positive_data_acceptance cannot hold for them, and only it is switched off, only there.
SEMANTIC_BODIES = {
    "POST /v1/attest": "needs a live join token and an ES256 signature over a fresh nonce",
    "POST /v1/tasks": "the intent is checked against the agent's ceiling and the catalog",
    "POST /v1/agents": "the ceiling must name catalog tools, privileges and destinations",
    "POST /v1/agents/{name}/join-tokens": "the TTL is bounded by a server setting",
    "POST /v1/principals": "identifiers follow the destination grammar (email, url, ...)",
    "PUT /v1/catalog": "act tools must declare destinations; labels follow the lattice",
    "POST /v1/policies": "the files must be Cedar that validates against the schema",
    "POST /v1/policies/explain": "the tool must be in the catalog or the action given",
    "POST /v1/admin-tokens": "names must be printable, which JSON Schema cannot say",
    "POST /v1/catalog/pins": "only a tool in the catalog can be admitted",
    "POST /v1/catalog/pins/check": "a free-form definition: integers beyond 2**53 are refused",
    "POST /v1/tasks/pins/check": "a free-form definition: integers beyond 2**53 are refused",
    "POST /oauth/token": "the narrowing is a free-form mandate: integers beyond 2**53 are refused",
    "PUT /v1/inventory": "rows are checked by the inventory parser: ISO dates, unique ids",
    # Bodies are I-JSON: an integer beyond +-2**53 is refused wherever it is (other parsers
    # would round it, and digests would differ). JSON Schema cannot bound the integers
    # nested in free-form arguments.
    "POST /v1/authorize": "free-form arguments: integers beyond 2**53 are refused",
}
CONFIG = schemathesis.Config.from_dict(
    {
        # Operator routes are called as an admin (schemathesis knows the scheme, so its
        # missing- and wrong-credential cases stay meaningful).
        "auth": {"openapi": {"OperatorToken": {"bearer": _SECRET.reveal()}}},
        "checks": {
            # A body over the 256 KiB transport limit is refused with 413 whatever it says;
            # JSON Schema has no byte limit, so 413 is a right answer to any generated body.
            "negative_data_rejection": {
                "expected-statuses": [400, 401, 403, 404, 405, 409, 413, 415, 422]
            },
            "positive_data_acceptance": {"expected-statuses": ["2xx", 401, 403, 404, 409, 413]},
        },
        "operations": [
            {"include-name": name, "checks": {"positive_data_acceptance": {"enabled": False}}}
            for name in SEMANTIC_BODIES
        ],
    }
)
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(_REMIT), config=CONFIG)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same examples on every run: CI must not flake
    database=None,
)
def test_api_conforms_to_its_schema(case: Any) -> None:
    case.call_and_validate()
