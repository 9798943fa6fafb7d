"""A proof made for one HTTP method and URL is refused anywhere else, and in-process."""

from __future__ import annotations

import pytest

from remit.core.keys import generate_instance_key
from remit.core.tokens import make_call_proof, verify_call_proof
from remit.errors import InvalidProof

KEY = generate_instance_key()
URL = "http://127.0.0.1:8750/v1/authorize"


def make(htm: str | None, htu: str | None) -> str:
    return make_call_proof(
        KEY, token="tok", tool="docs/read", args_digest="sha256:x", now=100.0, htm=htm, htu=htu
    )


def check(proof: str, htm: str | None, htu: str | None) -> None:
    verify_call_proof(
        proof,
        public_key=KEY.public_key(),
        token="tok",
        tool="docs/read",
        args_digest="sha256:x",
        now=100.0,
        htm=htm,
        htu=htu,
    )


def test_matching_binding_verifies() -> None:
    check(make("POST", URL), "POST", URL)
    check(make(None, None), None, None)


@pytest.mark.parametrize(
    ("made", "presented"),
    [
        (("POST", URL), ("GET", URL)),
        (("POST", URL), ("POST", URL.replace("authorize", "tasks"))),
        (("POST", URL), (None, None)),
        ((None, None), ("POST", URL)),
    ],
)
def test_other_binding_is_refused(
    made: tuple[str | None, str | None], presented: tuple[str | None, str | None]
) -> None:
    with pytest.raises(InvalidProof) as info:
        check(make(*made), *presented)
    assert info.value.reason == "binding_mismatch"
