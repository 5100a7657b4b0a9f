"""Exceptions of the proxy package. Each subclasses our base and the stdlib meaning it carries."""

from __future__ import annotations


class ProxyError(Exception):
    """Base of every error the proxy package raises on purpose."""


class ValidationError(ProxyError, ValueError):
    """A bad value (a routing change, a proxy setting): `key` names it, relative to what was being read
    (`health.interval`, `admin_tcp`), so a caller can place it in its own vocabulary (a file's key path)
    without parsing the text. Nothing was changed."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message

    @property
    def field(self) -> str:
        """The admin API's JSON names the key `field`."""
        return self.key


class UnknownService(ProxyError, LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no service named {name!r}")
        self.name = name
