"""The CLI's side of the admin API: HTTP over the daemon's unix socket."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from proxy.admin import CLIENT_HEADER

from .errors import TurnoutError


class DaemonUnreachable(TurnoutError, ConnectionError):
    def __init__(self, socket: Path, exc: Exception) -> None:
        super().__init__(f"cannot reach the Turnout daemon on {socket} ({exc}); "
                         "is `turnout serve` running with this --state-dir / --socket?")


class ApiFailed(TurnoutError):
    def __init__(self, status: int, body: Any) -> None:
        message = body.get("error") if isinstance(body, dict) else str(body)
        super().__init__(message or f"HTTP {status}")
        self.status, self.body = status, body


class AdminClient:
    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminClient:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.socket)),
            headers={CLIENT_HEADER: "cli"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    async def request(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        assert self._session is not None
        try:
            async with self._session.request(method, f"http://turnout{path}", json=body,
                                             params=params) as response:
                data = await response.json(content_type=None)
                if response.status >= 400:
                    raise ApiFailed(response.status, data)
                return data
        except aiohttp.ClientConnectionError as exc:
            raise DaemonUnreachable(self.socket, exc) from None

    async def stream(self, method: str, path: str, body: Any = None,
                     **params: str) -> AsyncIterator[dict[str, Any]]:
        """NDJSON events from a following endpoint."""
        assert self._session is not None
        try:
            async with self._session.request(method, f"http://turnout{path}", json=body,
                                             params=params) as response:
                if response.status >= 400:
                    raise ApiFailed(response.status, await response.json(content_type=None))
                async for line in response.content:
                    if line.strip():
                        yield json.loads(line)
        except aiohttp.ClientConnectionError as exc:
            raise DaemonUnreachable(self.socket, exc) from None
