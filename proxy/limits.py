"""The process's open-files limit: every connection is a descriptor, and the usual soft default of
1024 is far below what thousands of connections need. One helper for the proxy and the load generator."""

from __future__ import annotations

import resource


def files_for_proxy(max_connections: int) -> int:
    """Descriptors a proxy holding `max_connections` needs: a client and an upstream socket each, and
    room for listeners, logs, the journal and the admin socket."""
    return 2 * max_connections + 256


def raise_open_files_limit(wanted: int) -> int:
    """Lift this process's soft open-files limit to `wanted`, up to the hard limit (never lowers it);
    returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft
