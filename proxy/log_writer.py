"""Where log lines go: a file descriptor (stderr) or a file, written by a thread of its own, in batches.

The event loop never writes to the log itself. Lines are gathered in a list (`lines`, which the access
log appends to directly) and handed over as one chunk every `interval` seconds, or sooner once
`batch_lines` are waiting; the writer thread writes each chunk with blocking `os.write` calls. A reader
that stalls (a full stderr pipe nobody reads, a disk that hangs) stalls only that thread: once
`max_backlog` bytes wait for it, further chunks are dropped, their lines counted in `dropped` (and in
`/metrics`), and said at exit. So at most `interval` seconds of lines wait in the loop's list and at most
`max_backlog` bytes (about a second of lines at tens of thousands of requests a second) wait for the
thread.

`close()` (at a graceful stop, and at exit) hands over what is left and waits while the thread makes
progress: no line is lost while someone reads. A file is opened with O_APPEND and reopened on `reopen()`
(SIGHUP, `turnout logs reopen`), in order: lines handed over before the reopen go to the old file.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import os
import sys
import threading
from typing import Any

INTERVAL = 0.5  # seconds a line may wait in the loop's list (nginx's access_log flush= is 1 s)
BATCH_LINES = 256  # lines gathered before a chunk goes to the thread at once (~80 KiB of access lines)
MAX_BACKLOG = 8 * 1024 * 1024  # bytes waiting for the thread before chunks are dropped
BACKLOG_ENV = "TURNOUT_LOG_BACKLOG"  # bytes: another bound for the writers of a daemon
STALL = 2.0  # seconds `close()` waits without any progress of the thread before it gives up
FILE_MODE = 0o640


class _Marker:
    """A point in the backlog: `done` is set once every line handed over before it is written (and, for a
    reopen, the file reopened there: lines before it go to the old file; `error` says why it failed)."""

    __slots__ = ("done", "error", "reopen")

    def __init__(self, reopen: bool) -> None:
        self.reopen = reopen
        self.done = threading.Event()
        self.error = ""


class LogWriter:
    """One destination: `LogWriter(fd=2)` (stderr) or `LogWriter(path=...)` (a file, reopenable)."""

    def __init__(self, *, fd: int | None = None, path: str | None = None, stream: Any = None,
                 interval: float = INTERVAL, batch_lines: int = BATCH_LINES,
                 max_backlog: int | None = None) -> None:
        self.path = path
        self.name = path if path is not None else "stream" if stream is not None else f"fd{fd}"
        self.users = 1  # servers sharing a file's writer (`open_file`); closed when the last one leaves
        self.stream = stream  # an object with write(bytes) instead of a descriptor (tests, a captured stderr)
        self.fd = -1 if fd is None else fd
        if path is not None:
            self.fd = _open(path)  # raises OSError: the caller names the setting
        self.interval = interval
        self.batch_lines = batch_lines
        self.max_backlog = max_backlog if max_backlog is not None else _backlog_from_env()
        # The loop's side: lines not handed over yet (touched by the owner thread only; one list object
        # for the writer's life, so that an appender may keep it).
        self.lines: list[str] = []
        self.owner = threading.get_ident()
        self._timer: asyncio.TimerHandle | None = None
        # Shared with the thread, under `_cond`.
        self._cond = threading.Condition(threading.Lock())
        self._backlog: collections.deque[tuple[bytes, int] | _Marker] = collections.deque()
        self._backlog_size = 0
        self._closing = False
        self.written = 0  # bytes the thread wrote (progress, for close)
        self.dropped = 0  # lines dropped: the backlog was full, the destination failed, or close gave up
        self.failed = ""  # the destination's last write error, once it failed
        self._thread = threading.Thread(target=self._run, name="turnout-log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)
        _live.append(self)

    # ------------------------------------------------------------------ the loop's side
    def add(self, line: str) -> None:
        """One line (ending in a newline) for the next chunk. (The access log inlines this.)"""
        lines = self.lines
        lines.append(line)
        if len(lines) == 1:
            self.started_batch()
        elif len(lines) >= self.batch_lines:
            self.flush()

    def started_batch(self) -> None:
        """The first line of a chunk was added: it goes out within `interval`."""
        if self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.interval, self.flush)
            except RuntimeError:  # no loop running here: at once
                self.flush()

    def write_now(self, line: str) -> None:
        """A line that should not wait (a structlog event): after the lines gathered before it, when
        called from the owner thread; from another thread, on its own."""
        if threading.get_ident() == self.owner:
            self.lines.append(line)
            self.flush()
        else:
            self._submit(line.encode("utf-8", "backslashreplace"), 1)

    def flush(self) -> None:
        """Hand the gathered lines to the thread (never blocks)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines = self.lines
        if lines:
            data = "".join(lines).encode("utf-8", "backslashreplace")
            count = len(lines)
            lines.clear()
            self._submit(data, count)

    def _submit(self, data: bytes, lines: int) -> None:
        with self._cond:
            full = self._backlog_size + len(data) > self.max_backlog
            if full or (self._closing and not self._thread.is_alive()):
                self.dropped += lines
                return
            self._backlog.append((data, lines))
            self._backlog_size += len(data)
            self._cond.notify()

    def reopen(self) -> _Marker | None:
        """Reopen the file after the lines handed over so far (logrotate moved it); None for a descriptor.
        The returned marker's `done` is set once the thread did it (`error` says why it failed)."""
        return self._mark(reopen=True) if self.path is not None else None

    def sync(self, timeout: float = 10.0) -> bool:
        """Hand the gathered lines over and wait until the thread wrote them (tests; a reopen's reply)."""
        return self._mark(reopen=False).done.wait(timeout)

    def _mark(self, reopen: bool) -> _Marker:
        self.flush()
        marker = _Marker(reopen)
        with self._cond:
            if not self._thread.is_alive():
                marker.done.set()
                return marker
            self._backlog.append(marker)
            self._cond.notify()
        return marker

    def close(self, stall: float = STALL) -> int:
        """Hand over the rest and wait until it is written, giving up after `stall` seconds without
        progress (the reader is gone or stuck); returns the lines dropped in all. Idempotent."""
        atexit.unregister(self.close)
        if self in _live:
            _live.remove(self)
        if _files.get(self.path or "") is self:
            del _files[self.path]  # type: ignore[arg-type]
        if threading.get_ident() == self.owner:
            self.flush()
        with self._cond:
            self._closing = True
            self._cond.notify()
        while self._thread.is_alive():
            before = self.written
            self._thread.join(stall)
            if self.written == before:
                break
        with self._cond:
            if self._thread.is_alive():  # stuck: what is still waiting is lost
                self.dropped += sum(item[1] for item in self._backlog if not isinstance(item, _Marker))
                self._backlog.clear()
                self._backlog_size = 0
        if self.path is not None and not self._thread.is_alive() and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        return self.dropped

    @property
    def running(self) -> bool:
        """The thread is still there (it ends at `close`, or once a write stuck at close fails)."""
        return self._thread.is_alive()

    @property
    def waiting(self) -> int:
        """Bytes handed to the thread and not written yet."""
        return self._backlog_size

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        cond = self._cond
        backlog = self._backlog
        while True:
            with cond:
                while not backlog and not self._closing:
                    cond.wait()
                if not backlog:  # closing, and everything is written
                    return
                item = backlog.popleft()
            if isinstance(item, _Marker):
                if item.reopen:
                    self._reopen(item)
                item.done.set()
                continue
            data, lines = item
            self._write(data, lines)
            with cond:
                self._backlog_size -= len(data)

    def _write(self, data: bytes, lines: int) -> None:
        if self.failed:
            self._lost(lines)
            return
        try:
            if self.stream is not None:
                self.stream.write(data)
                self.written += len(data)
                return
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                self.written += n
                view = view[n:]
        except (OSError, ValueError) as exc:  # EPIPE, EBADF, ENOSPC, a closed stream: keep the proxy going
            self.failed = str(exc) or type(exc).__name__
            self._lost(lines)
            _say(f"turnout: log writes failed ({self.failed}); further lines are dropped and counted\n")

    def _lost(self, lines: int) -> None:
        with self._cond:  # `dropped` is counted by both threads
            self.dropped += lines

    def _reopen(self, marker: _Marker) -> None:
        try:
            fd = _open(self.path)  # type: ignore[arg-type]
        except OSError as exc:
            marker.error = f"cannot open {self.path}: {exc.strerror or exc}"
        else:
            old, self.fd = self.fd, fd
            self.failed = ""
            if old >= 0:
                os.close(old)


def _backlog_from_env() -> int:
    raw = os.environ.get(BACKLOG_ENV, "")
    try:
        value = int(raw)
    except ValueError:
        if raw:
            _say(f"turnout: {BACKLOG_ENV}={raw!r} is not a number of bytes; using {MAX_BACKLOG}\n")
        return MAX_BACKLOG
    return max(value, 4096)


def _open(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)


def _say(text: str) -> None:
    """Last resort when the log itself cannot be written: try the original stderr, never block on it."""
    try:
        sys.__stderr__.write(text)  # type: ignore[union-attr]
    except (OSError, ValueError, AttributeError):
        pass


_stderr: LogWriter | None = None
_live: list[LogWriter] = []  # every writer not closed yet, for /metrics
_files: dict[str, LogWriter] = {}  # file writers by path: the plain and HTTPS listeners share one


def open_file(path: str) -> LogWriter:
    """The writer of the file at `path`, shared by whoever logs there (`users` counts them)."""
    writer = _files.get(path)
    if writer is not None and writer.running:
        writer.users += 1
        return writer
    writer = _files[path] = LogWriter(path=path)
    return writer


def metrics_lines() -> list[str]:
    """Prometheus lines of the live writers' drops (a `Metrics.sources` entry)."""
    out = ["# HELP turnout_log_lines_dropped_total Log lines not written: their reader stalled (the backlog "
           "was full) or writing failed.",
           "# TYPE turnout_log_lines_dropped_total counter"]
    for writer in _live:
        to = writer.name.replace("\\", "\\\\").replace('"', '\\"')
        out.append(f'turnout_log_lines_dropped_total{{to="{to}"}} {writer.dropped}')
    return out


def current_stderr_writer() -> LogWriter | None:
    """The stderr writer, when something made it (proxy.log.configure does)."""
    return _stderr


def stderr_writer() -> LogWriter:
    """The process's stderr as a LogWriter (one per process: structlog's events and the access log share
    it, so their lines never interleave mid-line)."""
    global _stderr
    if _stderr is None:
        _stderr = LogWriter(fd=2)  # the descriptor, not sys.stderr (a test's capture may replace that)
        _stderr.name = "stderr"
    return _stderr
