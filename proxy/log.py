"""Structured logging: JSON lines when stderr is not a terminal, readable key=value when it is.

Events are written by the stderr `LogWriter`'s thread (proxy/log_writer.py), which the access log shares:
a stalled stderr reader never blocks the event loop, and lines never interleave mid-line."""

from __future__ import annotations

import logging
import sys

import structlog

from .log_writer import LogWriter, stderr_writer


def configure(level: str = "info", json: bool | None = None) -> None:
    """Set up structlog once per process. `json=None` chooses by whether stderr is a TTY."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer = (structlog.processors.JSONRenderer() if json
                else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=_Events(stderr_writer())),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )


class _Events:
    """structlog's output file: each event goes to the writer at once (after access lines before it)."""

    def __init__(self, writer: LogWriter) -> None:
        self.writer = writer

    def write(self, text: str) -> None:
        self.writer.write_now(text)

    def flush(self) -> None:
        pass
