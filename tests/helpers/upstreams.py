"""Real test upstreams on 127.0.0.1 ephemeral ports, and a tiny raw-socket HTTP client.

`TestUpstream` is a raw asyncio server (not a framework) so it can misbehave on purpose. It records
every byte it receives and answers by path:

  /                 200, body = its name (header X-Upstream: name)
  /slow?s=0.5       the same after a delay
  /big?n=N          N bytes streamed with Content-Length (64 KiB writes, honouring back-pressure)
  /chunked          a chunked answer of several chunks
  /until-close      a body with no framing, ended by closing the connection
  /echo             echoes the request body
  /count            reads the body streaming (never keeps it) and answers with its length
  /headers          the request head it received, verbatim
  /status/N         status N with a small body (204/304: none)
  /hop              an answer carrying hop-by-hop headers (and one named in Connection)
  /close            answers, then closes its keep-alive connection
  /conflict         Content-Length and Transfer-Encoding both (bad framing)
  /dupcl            two differing Content-Length headers
  /truncate         promises 1000 bytes, sends 10, closes
  /die              closes without answering
  /ws               a minimal websocket handshake (101), then echoes raw bytes
  /json/...         JSON: {"item": last segment, "version": name without trailing digits, "token": random}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from helpers import loopback
from proxy.config import ProxyConfig
from proxy.log_writer import LogWriter
from proxy.router import Router
from proxy.server import ProxyServer
from proxy.specs import ServiceSpec

RAW_LIMIT = 1 << 20  # keep at most 1 MiB of received bytes (the counter counts everything)


class _Eof(Exception):
    pass


class _Reader:
    def __init__(self, upstream: TestUpstream, reader: asyncio.StreamReader) -> None:
        self.upstream = upstream
        self.reader = reader
        self.buf = b""

    async def fill(self) -> None:
        data = await self.reader.read(65536)
        if not data:
            raise _Eof
        self.upstream.record(data)
        self.buf += data

    async def until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            await self.fill()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    async def exact(self, n: int, keep: bool = True) -> bytes:
        parts = []
        while n:
            if not self.buf:
                await self.fill()
            piece, self.buf = self.buf[:n], self.buf[n:]
            n -= len(piece)
            if keep:
                parts.append(piece)
        return b"".join(parts)

    async def body(self, headers: dict[str, str], keep: bool = True) -> tuple[bytes, int]:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts, total = [], 0
            while True:
                size = int((await self.until(b"\r\n")).split(b";")[0].strip(), 16)
                if size == 0:
                    while (await self.until(b"\r\n")) != b"\r\n":
                        pass
                    return b"".join(parts), total
                piece = await self.exact(size, keep)
                total += size
                if keep:
                    parts.append(piece)
                await self.exact(2)
        n = int(headers.get("content-length", "0") or 0)
        return await self.exact(n, keep), n


@dataclass
class Received:
    method: str
    target: str
    head: bytes
    headers: dict[str, str]
    body: bytes


@dataclass
class TestUpstream:
    __test__ = False  # not a test class, whatever its name

    name: str
    raw: bytearray = field(default_factory=bytearray)
    bytes_received: int = 0
    requests: list[Received] = field(default_factory=list)
    connections: int = 0  # accepted so far
    open_connections: int = 0
    server: loopback.LoopbackServer | None = None
    _writers: set = field(default_factory=set)
    _tasks: set = field(default_factory=set)

    def record(self, data: bytes) -> None:
        self.bytes_received += len(data)
        if len(self.raw) < RAW_LIMIT:
            self.raw += data

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> TestUpstream:
        self.server = await loopback.start_server(self._serve, "127.0.0.1", port)
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            for task in list(self._tasks):  # e.g. one sleeping in /slow
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=5)
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        self._tasks.add(task)
        r = _Reader(self, reader)
        try:
            while True:
                head = await r.until(b"\r\n\r\n")
                lines = head[:-4].decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                url = urlsplit(target)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                keep = url.path != "/count"
                body, total = await r.body(headers, keep)
                self.requests.append(Received(method, target, head, headers, body))
                if not await self._answer(method, url.path, query, headers, head, body, total, r, writer):
                    break
        except (_Eof, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:  # close() ended it; finish quietly (streams log cancelled tasks)
            pass
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.transport.abort()

    async def _answer(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
                      head: bytes, body: bytes, total: int, r: _Reader, writer: asyncio.StreamWriter) -> bool:
        """Write the answer; False to close the connection afterwards."""
        name = self.name.encode()
        is_head = method == "HEAD"

        def simple(status: int, payload: bytes, extra: bytes = b"", reason: bytes = b"OK") -> bytes:
            out = b"HTTP/1.1 %d %s\r\nX-Upstream: %s\r\nContent-Length: %d\r\n%s\r\n" % (
                status, reason, name, len(payload), extra)
            return out if is_head else out + payload

        if path == "/slow":
            await asyncio.sleep(float(query.get("s", "0.5")))
            writer.write(simple(200, name))
        elif path == "/big":
            n = int(query["n"])
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Upstream: %s\r\n\r\n" % (n, name))
            if not is_head:
                block = b"x" * 65536
                while n:
                    piece = block[: min(n, len(block))]
                    writer.write(piece)
                    n -= len(piece)
                    await writer.drain()
        elif path == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Upstream: %s\r\n\r\n" % name)
            if not is_head:
                for part in (b"hello ", b"chunked ", b"world"):
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
        elif path == "/until-close":
            writer.write(b"HTTP/1.1 200 OK\r\nX-Upstream: %s\r\nConnection: close\r\n\r\nall of it" % name)
            await writer.drain()
            return False
        elif path == "/echo":
            writer.write(simple(200, body))
        elif path == "/count":
            writer.write(simple(200, str(total).encode()))
        elif path == "/headers":
            writer.write(simple(200, head))
        elif path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            if status in (204, 304):
                writer.write(b"HTTP/1.1 %d X\r\nX-Upstream: %s\r\n\r\n" % (status, name))
            else:
                writer.write(simple(status, b"status body", reason=b"X"))
        elif path == "/hop":
            writer.write(simple(200, name, b"Connection: X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\n"
                                b"Proxy-Authenticate: Basic\r\nX-Kept: k\r\n"))
        elif path == "/close":
            writer.write(simple(200, name, b"Connection: close\r\n"))
            await writer.drain()
            return False
        elif path == "/conflict":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n0\r\n\r\n")
        elif path == "/dupcl":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
        elif path == "/truncate":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
            await writer.drain()
            return False
        elif path == "/die":
            return False
        elif path.startswith("/json/"):
            payload = json.dumps({"item": path.rsplit("/", 1)[1], "version": self.name.rstrip("0123456789"),
                                  "token": os.urandom(8).hex()}).encode()
            writer.write(simple(200, payload, b"Content-Type: application/json\r\n"))
        elif path == "/ws":
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: dummy\r\n\r\n")
            if r.buf:
                writer.write(r.buf)
                r.buf = b""
            while True:
                data = await r.reader.read(65536)
                if not data:
                    return False
                self.record(data)
                writer.write(data)
                await writer.drain()
        else:
            writer.write(simple(200, name))
        await writer.drain()
        return headers.get("connection", "").lower() != "close"


async def start_upstreams(*names: str) -> list[TestUpstream]:
    return [await TestUpstream(n).start() for n in names]


# ---------------------------------------------------------------------------------------- client
@dataclass
class Response:
    status: int
    headers: dict[str, list[str]]
    body: bytes
    head: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


class RawClient:
    """One client connection speaking raw bytes; read_response() parses one answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> RawClient:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def request(self, method: str = "GET", path: str = "/", headers: dict[str, str] | None = None,
                      body: bytes = b"", host: str = "app.test", timeout: float = 10.0) -> Response:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return await self.read_response(head_request=method == "HEAD", timeout=timeout)

    async def read_response(self, head_request: bool = False, timeout: float = 10.0,
                            keep_body: bool = True) -> Response:
        return await asyncio.wait_for(self._read(head_request, keep_body), timeout)

    async def _read(self, head_request: bool, keep_body: bool) -> Response:
        while True:
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head[:-4].decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            if status >= 200 or status == 101:
                break
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.setdefault(k.strip().lower(), []).append(v.strip())
        if head_request or status in (101, 204, 304):
            return Response(status, headers, b"", head)
        parts: list[bytes] = []
        size = 0
        if headers.get("transfer-encoding", [""])[0].lower() == "chunked":
            while True:
                n = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if n == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                data = await self.reader.readexactly(n + 2)
                size += n
                if keep_body:
                    parts.append(data[:-2])
        elif "content-length" in headers:
            n = int(headers["content-length"][0])
            while n:
                data = await self.reader.read(min(n, 1 << 20))
                if not data:
                    raise asyncio.IncompleteReadError(b"", n)
                n -= len(data)
                size += len(data)
                if keep_body:
                    parts.append(data)
        else:
            while data := await self.reader.read(1 << 20):
                size += len(data)
                if keep_body:
                    parts.append(data)
        body = b"".join(parts) if keep_body else str(size).encode()
        return Response(status, headers, body, head)

    async def at_eof(self, timeout: float = 5.0) -> bool:
        """True when the server closed the connection (reads nothing more)."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), timeout)
        except ConnectionError:
            return True
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def fetch(port: int, method: str = "GET", path: str = "/", **kwargs: object) -> Response:
    client = await RawClient.connect(port)
    try:
        return await client.request(method, path, **kwargs)  # type: ignore[arg-type]
    finally:
        await client.close()


# ---------------------------------------------------------------------------------------- harness
def service(name: str = "app", pools: dict[str, tuple[int, list[str]]] | None = None,
            **fields: object) -> ServiceSpec:
    """A validated ServiceSpec: pools as {name: (weight, [addresses])}."""
    data: dict[str, object] = {"name": name, "hosts": ["app.test"], **fields}
    data["pools"] = [{"name": p, "weight": w, "upstreams": list(u)} for p, (w, u) in (pools or {}).items()]
    return ServiceSpec.from_dict(data)


@contextlib.asynccontextmanager
async def running_proxy(router: Router | None = None, log: LogCapture | None = None,
                        **config: object) -> AsyncIterator[ProxyServer]:
    """A ProxyServer on 127.0.0.1:<ephemeral> around `router`; stopped (timeout 2 s) at the end. Its
    access log (on unless `access_log=False`) goes to `log`, or to a LogCapture of its own (to the file
    when `access_log` names one)."""
    router = router or Router()
    if log is None and not isinstance(config.get("access_log"), str):
        log = LogCapture()
    server = ProxyServer(router, ProxyConfig(listen="127.0.0.1:0", **config),  # type: ignore[arg-type]
                         log_writer=log.writer if log is not None else None)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(2.0)
        if log is not None:
            log.writer.close()  # its thread ends; what it wrote stays readable


class LogCapture:
    """An access log's lines, kept in memory: a real `LogWriter` (its thread, its batches) onto a stream
    that keeps what it is given. Make it on the test's loop thread."""

    def __init__(self, **writer: object) -> None:
        self.data = bytearray()
        self.writer = LogWriter(stream=self, **writer)  # type: ignore[arg-type]

    def write(self, data: bytes) -> None:
        self.data += data

    def lines(self) -> list[str]:
        """Every line written so far, after handing over what the log gathered (and waiting for it)."""
        assert self.writer.sync(), "the log writer did not write within 10 s"
        return self.data.decode().splitlines()

    def events(self, event: str = "http.access") -> list[dict]:
        """The JSON lines, parsed (each must be valid JSON), of that event."""
        return [e for e in (json.loads(line) for line in self.lines()) if e["event"] == event]


async def wait_for(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.005) -> None:
    """Poll `predicate` until true; fail with a clear message at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        await asyncio.sleep(interval)


def dead_address() -> str:
    """host:port where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@contextlib.contextmanager
def stalled_address() -> Iterator[str]:
    """host:port where a connect neither succeeds nor fails: a listener that accepts nothing and whose
    accept queue (backlog 0) is already full, so the kernel drops new SYNs and the connect waits (as for
    a host that went away) until the connector's own timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(2):  # backlog 0 holds one connection; the second makes sure
                filler = socket.socket()
                fillers.append(filler)
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
            yield f"127.0.0.1:{port}"
        finally:
            for filler in fillers:
                filler.close()
