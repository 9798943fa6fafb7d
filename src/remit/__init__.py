"""Remit: narrow, short-lived authority for AI agents."""

from remit.errors import RemitError

__all__ = ["RemitError"]
__version__ = "0.1.0"
