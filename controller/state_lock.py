"""One daemon owns a state dir (its journal, its admin socket, its containers) at a time.

The owner holds an exclusive `flock` on `<state_dir>/lock` for its whole life and writes its pid there;
the kernel drops the lock when the process dies, however it dies. A second `turnout serve` on the same
state dir is refused, naming the owner. A hand-over (`turnout serve --takeover`) passes the lock's open
file description itself to the new process with the listening sockets: an flock belongs to the open file
description, so the lock is never free in between and the old process simply closes its descriptor.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .state_dir import StateDirError, private_file

LOCK_NAME = "lock"


class StateDirInUse(StateDirError):
    def __init__(self, path: Path, pid: str) -> None:
        self.pid = pid
        super().__init__(f"state dir {path.parent} is in use by a running turnout serve (pid {pid or '?'}); "
                         "stop it first, or replace it without dropping a connection: "
                         "turnout serve --takeover (same options)")


class StateLock:
    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def acquire(cls, state_dir: Path) -> StateLock:
        """Take the lock or raise StateDirInUse; the pid written is ours."""
        path = state_dir / LOCK_NAME
        private_file(path)  # a regular file of ours, 0600 (a symlink is refused, never followed)
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise StateDirInUse(path, pid) from None
        lock = cls(fd, path)
        lock.write_pid()
        return lock

    @classmethod
    def inherited(cls, fd: int, state_dir: Path) -> StateLock:
        """The lock the previous owner passed over (same open file description: still held)."""
        return cls(fd, state_dir / LOCK_NAME)

    @staticmethod
    def held(state_dir: Path) -> str | None:
        """The pid of the daemon holding the lock, "" when unknown; None when nobody holds it."""
        path = state_dir / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd)
        else:
            return None
        finally:
            os.close(fd)  # also drops the shared lock taken to test

    def write_pid(self) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Close our descriptor: the lock goes with it, unless another process holds the same one."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""
