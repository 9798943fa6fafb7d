"""Keep the gateway's credentials out of everything an agent can read.

The gateway injects credentials into upstream connections. A leaky or hostile
upstream can echo them back (in a result, an error message, its stderr), so
every string that leaves the gateway towards the agent passes through here and
any exact occurrence of a configured credential is replaced.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, TypeVar

from pydantic import BaseModel

from remit.core.secrets import Secret

REDACTED: Final = "[redacted by remit]"

M = TypeVar("M", bound=BaseModel)


class Redactor:
    def __init__(self, secrets: Iterable[Secret]) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        values = {s.reveal() for s in secrets if s.reveal()}
        self._values: tuple[str, ...] = tuple(sorted(values, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self._values)

    def __repr__(self) -> str:
        return f"Redactor({len(self._values)} secrets)"

    def text(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, REDACTED)
        return text

    def value(self, value: Any) -> Any:
        """A copy of a JSON-like value with every string (keys too) redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value

    def model(self, model: M) -> M:
        """``model`` itself when it carries no credential, else a redacted copy."""
        if not self._values:
            return model
        data = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
        cleaned = self.value(data)
        if cleaned == data:
            return model
        return type(model).model_validate(cleaned)
