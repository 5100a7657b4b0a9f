"""Listening sockets passed by systemd (socket activation, as `sd_listen_fds(3)` reads them).

Under a `turnout.socket` unit systemd owns the listening sockets: they stay open while `turnout serve`
restarts or crashes, the kernel queues new connections meanwhile, and the next process accepts them. The
protocol: descriptors 3, 4, ... (`LISTEN_FDS` of them) are for the process whose id is `LISTEN_PID`,
named by `LISTEN_FDNAMES` (colon-separated, from `FileDescriptorName=`). Debian's
`systemd-socket-activate` passes sockets the same way.

Names: `http` is the plain listener ([proxy] listen), `https` the HTTPS one ([proxy.tls] listen).
Descriptors without a name (no `LISTEN_FDNAMES`, or systemd's `unknown`) take the names not given
otherwise, in that order: the first `http`, the second `https`. The admin API is not taken: it is a
unix socket in the state dir that the daemon makes private itself, and while it is missing no client
request is lost. Once sockets were passed, every listener of the config must get one (a listener the
daemon bound itself would refuse connections while it restarts: the reason for the unit).

The variables are unset whatever they held (systemd's `unset_environment`), so that processes the
daemon starts (hooks) do not take the descriptors for theirs; the sockets are close-on-exec.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Mapping, MutableMapping
from dataclasses import replace

import structlog

from .config import ProxyConfig

log = structlog.get_logger("turnout.proxy.activation")

FIRST_FD = 3  # SD_LISTEN_FDS_START
NAMES = ("http", "https")  # FileDescriptorName= of each listener's socket; unnamed ones in this order
UNNAMED = ("", "unknown")  # what systemd puts in LISTEN_FDNAMES for a socket without a name
VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class SocketActivationError(ValueError):
    """The passed descriptors cannot serve: the message names the descriptor and what is wrong."""


def from_environment(environ: MutableMapping[str, str] | None = None,
                     pid: int | None = None) -> dict[str, socket.socket]:
    """The listening sockets systemd passed to this process, by name ({} when none were); unsets the
    variables. Raises SocketActivationError for descriptors that are not listening TCP sockets, or
    names Turnout does not know."""
    env = os.environ if environ is None else environ
    pid_text, count_text, names_text = (env.pop(name, None) for name in VARIABLES)
    if count_text is None:
        return {}
    if pid_text is None or pid_text.strip() != str(os.getpid() if pid is None else pid):
        # For another process (a wrapper that did not exec): sd_listen_fds ignores them too.
        log.warning("proxy.socket_activation_ignored", listen_pid=pid_text, reason="LISTEN_PID is not "
                    "this process: a wrapper between systemd and turnout must exec it")
        return {}
    try:
        count = int(count_text)
    except ValueError:
        raise SocketActivationError(f"LISTEN_FDS={count_text!r}: not a number of descriptors") from None
    if count <= 0:
        return {}
    names = _names(count, names_text)
    return {name: _listening_socket(FIRST_FD + i, name) for i, name in enumerate(names)}


def _names(count: int, names_text: str | None) -> list[str]:
    given = names_text.split(":") if names_text is not None else [""] * count
    if len(given) != count:
        raise SocketActivationError(f"LISTEN_FDNAMES={names_text!r} names {len(given)} descriptor(s) but "
                                    f"LISTEN_FDS={count}")
    for i, name in enumerate(given):
        if name not in UNNAMED and name not in NAMES:
            raise SocketActivationError(
                f"descriptor {FIRST_FD + i} is named {name!r} (LISTEN_FDNAMES); Turnout takes "
                f"{' and '.join(repr(n) for n in NAMES)} (FileDescriptorName= in the .socket unit)")
        if name in NAMES and given.index(name) != i:
            raise SocketActivationError(f"descriptors {FIRST_FD + given.index(name)} and {FIRST_FD + i} "
                                        f"are both named {name!r} (LISTEN_FDNAMES={names_text!r})")
    free = iter(n for n in NAMES if n not in given)
    names = []
    for i, name in enumerate(given):
        if name in UNNAMED:
            name = next(free, "")
            if not name:
                raise SocketActivationError(f"descriptor {FIRST_FD + i} has no name and "
                                            f"{' and '.join(NAMES)} are taken: Turnout listens on at most "
                                            f"{len(NAMES)} sockets")
        names.append(name)
    return names


def _listening_socket(fd: int, name: str) -> socket.socket:
    what = f"descriptor {fd} ({name})"
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        raise SocketActivationError(f"{what}: not open, though LISTEN_FDS counts it") from None
    if not stat.S_ISSOCK(mode):
        raise SocketActivationError(f"{what}: not a socket")
    sock = socket.socket(fileno=fd)
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        sock.detach()
        raise SocketActivationError(f"{what}: a {_family(sock.family)} socket; the {name} listener needs "
                                    "a TCP address (ListenStream=127.0.0.1:8000 or [::]:443)")
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise SocketActivationError(f"{what}: not a stream socket (ListenDatagram= or "
                                    "ListenSequentialPacket=?); the listener needs ListenStream=")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise SocketActivationError(f"{what}: a TCP socket that is not listening (Accept=yes in the "
                                    "socket unit passes connections, not the listener: use Accept=no)")
    sock.set_inheritable(False)  # close-on-exec: hooks and their children do not hold the port
    sock.setblocking(False)
    return sock


def _family(family: int) -> str:
    return {socket.AF_UNIX: "unix"}.get(family, f"address family {family}")


def address_of(sock: socket.socket) -> str:
    """`host:port` as bound (`[::1]:443` for IPv6)."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


def listening_config(config: ProxyConfig, sockets: Mapping[str, socket.socket]) -> ProxyConfig:
    """`config` with the listen addresses of the passed sockets (what is bound is what serves: the
    socket unit decides the address). Raises SocketActivationError when the sockets do not match the
    config's listeners."""
    if not sockets:
        return config
    fds = {name: sock.fileno() for name, sock in sockets.items()}
    if "http" not in sockets:
        raise SocketActivationError(f"systemd passed {_listing(fds)} but none named 'http' for the plain "
                                    "listener: name it (FileDescriptorName=http)")
    if "https" in sockets and config.tls is None:
        raise SocketActivationError(f"systemd passed descriptor {fds['https']} named 'https', but the "
                                    "config has no [proxy.tls]: add it, or remove the socket")
    if config.tls is not None and "https" not in sockets:
        raise SocketActivationError(f"the config has [proxy.tls] but systemd passed only {_listing(fds)}: "
                                    "add a socket named 'https' (FileDescriptorName=https) for "
                                    f"{config.tls.listen}")
    listen = address_of(sockets["http"])
    tls = config.tls
    if tls is not None:
        tls = replace(tls, listen=address_of(sockets["https"]))
    for name, sock in sockets.items():
        configured = config.listen if name == "http" else config.tls.listen  # type: ignore[union-attr]
        log.info("proxy.socket_activated", name=name, fd=sock.fileno(), listen=address_of(sock),
                 **({"configured": configured} if configured != address_of(sock) else {}))
    return replace(config, listen=listen, tls=tls)


def _listing(fds: Mapping[str, int]) -> str:
    return ", ".join(f"descriptor {fd} ({name})" for name, fd in fds.items())
