"""Keep the gateway's credentials out of everything an agent can read.

The gateway injects credentials into upstream connections: the ones in its
configuration, and the ones Remit leases per task (``add``). A leaky or
hostile upstream can echo them back (in a result, an error message, its
stderr), so every string that leaves the gateway towards the agent passes
through here and any exact occurrence of a credential is replaced. The same
redactor filters the gateway's own log records (``LogFilter``), as a second
line behind the rule that no value is ever logged.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Final, TypeVar

from pydantic import BaseModel

from remit.core.secrets import Secret

REDACTED: Final = "[redacted by remit]"
# Leased values are remembered up to this many (oldest forgotten first); configured ones
# always. A value forgotten here belongs to a lease long ended.
MAX_LEASED_VALUES: Final = 4096
# The credential part of an ``Authorization``-style value (``Bearer <token>``) is redacted on
# its own too, so an upstream that echoes only the token is caught; shorter parts are not
# (a short common word would be redacted everywhere).
MIN_PART_LENGTH: Final = 8
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]* +(\S.*)$")

M = TypeVar("M", bound=BaseModel)


def _forms(value: str) -> list[str]:
    """A value and the parts of it an upstream may echo on their own."""
    forms = [value]
    match = _SCHEME.match(value)
    if match and len(match.group(1).strip()) >= MIN_PART_LENGTH:
        forms.append(match.group(1).strip())
    return forms


class Redactor:
    def __init__(self, secrets: Iterable[Secret]) -> None:
        self._lock = threading.Lock()
        self._fixed = {f for s in secrets if s.reveal() for f in _forms(s.reveal())}
        self._leased: OrderedDict[str, None] = OrderedDict()
        self._values: tuple[str, ...] = ()
        self._rebuild()

    def _rebuild(self) -> None:
        # Longest first, so a secret that contains another is replaced whole. Readers take
        # the tuple as it is (one reference read): never a half-built set.
        values = self._fixed | set(self._leased)
        self._values = tuple(sorted(values, key=len, reverse=True))

    def add(self, secrets: Iterable[Secret]) -> None:
        """Redact these values too from now on (a leased credential, before it is used)."""
        with self._lock:
            changed = False
            for secret in secrets:
                for form in _forms(secret.reveal()) if secret.reveal() else ():
                    if form in self._fixed:
                        continue
                    if form in self._leased:
                        self._leased.move_to_end(form)
                        continue
                    self._leased[form] = None
                    changed = True
            while len(self._leased) > MAX_LEASED_VALUES:
                self._leased.popitem(last=False)
                changed = True
            if changed:
                self._rebuild()

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


class LogFilter(logging.Filter):
    """Redacts every credential from a log record's message (rendered with its args)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__("remit.gateway")
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if self._redactor:
            message = record.getMessage()
            cleaned = self._redactor.text(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True
