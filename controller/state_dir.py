"""The state dir and the files in it stay private to the user running Turnout.

The journal holds service `env` values (often secrets) and the admin socket takes commands, so the
directory must be a real directory of ours (a symlink could point anywhere, another user's directory
could be read or swapped by them), mode 0700, and every file in it 0600. Modes are fixed through a file
descriptor opened with O_NOFOLLOW: a symlink planted where a file should be is refused, never followed.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import UsageError

DIR_MODE = 0o700
FILE_MODE = 0o600


class StateDirError(UsageError):
    """The state dir, or a file in it, is not safe to use; the message names the path."""


def prepare_state_dir(path: Path) -> None:
    """Create `path` (0700) or check it: a directory, not a symlink, owned by us; then make it 0700."""
    try:
        if not os.path.lexists(path):
            path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise StateDirError(f"state dir {path}: cannot create or read it ({exc.strerror})") from exc
    if stat.S_ISLNK(info.st_mode):
        raise StateDirError(f"state dir {path}: is a symlink (to {os.readlink(path)}); refusing to follow "
                            "it: give the real directory")
    if not stat.S_ISDIR(info.st_mode):
        raise StateDirError(f"state dir {path}: exists and is not a directory")
    _check_owner(path, info, "state dir ")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:  # swapped for a symlink since the lstat
        raise StateDirError(f"state dir {path}: cannot open it without following links ({exc.strerror})"
                            ) from exc
    try:
        _fix_mode(fd, path, DIR_MODE, "state dir ")
    finally:
        os.close(fd)


def private_file(path: Path, create: bool = True) -> None:
    """Make `path` a regular file of ours with mode 0600, creating it (0600 from birth) if `create`.
    A symlink, another user's file or anything but a regular file is refused."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, FILE_MODE)
    except FileNotFoundError:
        if create:
            raise StateDirError(f"{path}: cannot create it (its directory is missing)") from None
        return
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateDirError(f"{path}: is a symlink; refusing to follow it") from exc
        raise StateDirError(f"{path}: cannot open it ({exc.strerror})") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StateDirError(f"{path}: is not a regular file")
        _fix_mode(fd, path, FILE_MODE, "")
    finally:
        os.close(fd)


def _fix_mode(fd: int, path: Path, mode: int, what: str) -> None:
    info = os.fstat(fd)
    _check_owner(path, info, what)
    if stat.S_IMODE(info.st_mode) != mode:
        os.fchmod(fd, mode)


def _check_owner(path: Path, info: os.stat_result, what: str) -> None:
    if info.st_uid != os.geteuid():
        raise StateDirError(f"{what}{path}: owned by uid {info.st_uid}, not by the user running Turnout "
                            f"(uid {os.geteuid()}); use a directory of your own")
