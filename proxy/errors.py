"""Exceptions of the proxy package. Each subclasses our base and the stdlib meaning it carries."""

from __future__ import annotations


class ProxyError(Exception):
    """Base of every error the proxy package raises on purpose."""


class ValidationError(ProxyError, ValueError):
    """A bad routing change: names the offending field; nothing was changed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownService(ProxyError, LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no service named {name!r}")
        self.name = name
