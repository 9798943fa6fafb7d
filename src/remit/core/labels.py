"""Data labels: a sensitivity lattice plus flags, and the taint a task accumulates."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from remit.errors import InvalidRequest


class Sensitivity(IntEnum):
    PUBLIC = 0
    INTERNAL = 1
    CONFIDENTIAL = 2
    RESTRICTED = 3

    @classmethod
    def parse(cls, value: object) -> Sensitivity:
        if isinstance(value, Sensitivity):
            return value
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        raise InvalidRequest(
            "sensitivity must be one of public, internal, confidential, restricted",
            reason="bad_sensitivity",
        )

    @property
    def label(self) -> str:
        return self.name.lower()


FLAGS = frozenset({"pii", "untrusted"})


@dataclass(frozen=True, slots=True)
class Labels:
    """What a piece of data is: one sensitivity level and a set of flags.

    Used both for a tool's output labels and for a task's taint; ``join`` is
    the lattice join, so taint only ever grows.
    """

    sensitivity: Sensitivity = Sensitivity.PUBLIC
    flags: frozenset[str] = frozenset()

    def join(self, other: Labels) -> Labels:
        return Labels(max(self.sensitivity, other.sensitivity), self.flags | other.flags)

    @classmethod
    def parse(cls, items: Iterable[object]) -> Labels:
        """Parse ``["confidential", "pii"]``: at most one level, any known flags."""
        level: Sensitivity | None = None
        flags: set[str] = set()
        for item in items:
            if not isinstance(item, str):
                raise InvalidRequest("labels must be strings", reason="bad_label")
            if item in FLAGS:
                flags.add(item)
                continue
            parsed = Sensitivity.parse(item)
            if level is not None and parsed != level:
                raise InvalidRequest(
                    "labels name more than one sensitivity level", reason="bad_label"
                )
            level = parsed
        return cls(level if level is not None else Sensitivity.PUBLIC, frozenset(flags))

    def as_list(self) -> list[str]:
        return [self.sensitivity.label, *sorted(self.flags)]
