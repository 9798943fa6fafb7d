"""Canonical JSON and digests.

Canonical form (close to RFC 8785 for the values Remit accepts): object keys
sorted by code point, no insignificant whitespace, UTF-8, strings escaped the
way ``json.dumps(ensure_ascii=False)`` does. Floats must be finite; integers
beyond 2**53 are refused, since other JSON parsers would round them. The same
value always yields the same bytes, so digests bind approvals, proofs and audit
records to one exact value.

``check_json`` enforces the input limits every untrusted JSON value passes
before anything else looks at it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from remit.errors import InvalidRequest

JsonValue = Any  # str | int | float | bool | None | list[JsonValue] | dict[str, JsonValue]

MAX_SAFE_INTEGER = 2**53 - 1


@dataclass(frozen=True, slots=True)
class JsonLimits:
    max_depth: int = 16
    max_bytes: int = 64 * 1024
    max_string: int = 16 * 1024
    max_items: int = 1024  # per array or object


DEFAULT_LIMITS = JsonLimits()


def check_json(value: JsonValue, limits: JsonLimits = DEFAULT_LIMITS, what: str = "value") -> bytes:
    """Raise InvalidRequest unless ``value`` is plain JSON within ``limits``.

    Returns the canonical bytes of ``value`` (computed for the size check anyway),
    so a caller that needs them does not serialize twice. Iterative, so a hostile
    depth cannot blow the Python stack.
    """
    stack: list[tuple[JsonValue, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limits.max_depth:
            raise InvalidRequest(
                f"{what} is nested too deeply (max {limits.max_depth})", reason="too_deep"
            )
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if abs(item) > MAX_SAFE_INTEGER:
                raise InvalidRequest(f"{what} has an integer out of range", reason="bad_number")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidRequest(f"{what} has a non-finite number", reason="bad_number")
        elif isinstance(item, str):
            if len(item) > limits.max_string:
                raise InvalidRequest(f"{what} has a string that is too long", reason="too_large")
            _check_text(item, what)
        elif isinstance(item, list):
            if len(item) > limits.max_items:
                raise InvalidRequest(f"{what} has too many items", reason="too_large")
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, dict):
            if len(item) > limits.max_items:
                raise InvalidRequest(f"{what} has too many keys", reason="too_large")
            for key, child in item.items():
                if not isinstance(key, str):
                    raise InvalidRequest(f"{what} has a non-string key", reason="bad_key")
                _check_text(key, what)
                stack.append((child, depth + 1))
        else:
            raise InvalidRequest(f"{what} is not plain JSON", reason="not_json")
    data = canonical_bytes_unchecked(value)
    if len(data) > limits.max_bytes:
        raise InvalidRequest(
            f"{what} is too large (max {limits.max_bytes} bytes)", reason="too_large"
        )
    return data


def _check_text(text: str, what: str) -> None:
    # Lone surrogates cannot be encoded as UTF-8 and would make digests ambiguous.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"{what} has invalid unicode", reason="bad_unicode") from None


def canonical_bytes_unchecked(value: JsonValue) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def canonical_bytes(value: JsonValue, limits: JsonLimits = DEFAULT_LIMITS) -> bytes:
    return check_json(value, limits)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(value: JsonValue, limits: JsonLimits = DEFAULT_LIMITS, what: str = "value") -> str:
    """``sha256:<hex>`` of the canonical form of ``value``, which must pass ``check_json``
    (``what`` names it in the error). One walk and one serialization."""
    return "sha256:" + sha256_hex(check_json(value, limits, what))


def parse_json_strict(data: bytes | str, limits: JsonLimits = DEFAULT_LIMITS) -> JsonValue:
    """Parse untrusted JSON text: duplicate keys and NaN are refused, limits enforced."""
    if len(data) > limits.max_bytes * 4:
        raise InvalidRequest("JSON document is too large", reason="too_large")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, val in pairs:
            if key in out:
                raise InvalidRequest("JSON object has a duplicate key", reason="duplicate_key")
            out[key] = val
        return out

    def no_constant(name: str) -> Any:
        raise InvalidRequest("JSON has a non-finite number", reason="bad_number")

    try:
        value = json.loads(data, object_pairs_hook=no_duplicates, parse_constant=no_constant)
    except RecursionError:
        raise InvalidRequest("JSON is nested too deeply", reason="too_deep") from None
    except ValueError as exc:
        if isinstance(exc, InvalidRequest):  # pragma: no cover - InvalidRequest is not a ValueError
            raise
        raise InvalidRequest("malformed JSON", reason="malformed_json") from None
    check_json(value, limits)
    return value


class EncodedDict(dict[str, Any]):
    """A JSON object carrying its own canonical text, computed once.

    The audit log serializes a record's data to hash it; the store writes the same
    text instead of serializing again. The value must not be changed after
    ``encode`` (the audit log never does: a record is immutable once chained).
    """

    __slots__ = ("canonical",)

    canonical: str

    @classmethod
    def encode(cls, value: Mapping[str, Any]) -> EncodedDict:
        out = cls(value)
        out.canonical = canonical_bytes_unchecked(out).decode("utf-8")
        return out
