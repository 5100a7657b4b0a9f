"""What a container may be granted: its Linux capabilities, its security options, its PIDs limit, and
the defaults every service gets unless its config says otherwise (SECURITY.md, "Container limits").

The config reader checks a service's values against these, and `engine.base.ContainerSpec` checks
them again, so no path reaches `containers.create` with more than Docker's own defaults would grant.
"""

from __future__ import annotations

# Processes and threads one container may have: a fork bomb stops there, not at the host's limit.
# Web servers with a thread or process per connection stay far below it; `pids_limit = 0` lifts it.
DEFAULT_PIDS_LIMIT = 512
DEFAULT_CAP_DROP = ("ALL",)
# Given back after dropping all: what common images need to start as root and step down to their own
# user (nginx, entrypoints using gosu or su-exec), own and write their files, signal their workers and
# bind ports below 1024. The rest of Docker's default set is dropped: NET_RAW (raw packets, ARP and DNS
# spoofing on the bridge), MKNOD, SETFCAP, SETPCAP, SYS_CHROOT, AUDIT_WRITE, FSETID.
DEFAULT_CAP_ADD = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "NET_BIND_SERVICE", "SETGID", "SETUID")
# setuid binaries (sudo, su, ping) cannot raise a process's privileges.
DEFAULT_SECURITY_OPT = ("no-new-privileges",)

# What `docker run` grants by default: `cap_add` may give back any of these and nothing else (Turnout
# never grants more than a plain `docker run`, as it never sets `privileged`).
DOCKER_DEFAULT_CAPS = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})
# Every Linux capability (capabilities(7)): what `cap_drop` may name, besides ALL.
LINUX_CAPS = DOCKER_DEFAULT_CAPS | frozenset({
    "AUDIT_CONTROL", "AUDIT_READ", "BLOCK_SUSPEND", "BPF", "CHECKPOINT_RESTORE", "DAC_READ_SEARCH",
    "IPC_LOCK", "IPC_OWNER", "LEASE", "LINUX_IMMUTABLE", "MAC_ADMIN", "MAC_OVERRIDE", "NET_ADMIN",
    "NET_BROADCAST", "PERFMON", "SYS_ADMIN", "SYS_BOOT", "SYS_MODULE", "SYS_NICE", "SYS_PACCT",
    "SYS_PTRACE", "SYS_RAWIO", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "SYSLOG", "WAKE_ALARM",
})


def capability(name: str) -> str:
    """The canonical spelling Docker reports ("cap_chown" -> "CHOWN"); not checked against a set."""
    return name.strip().upper().removeprefix("CAP_")


def cap_add_problem(name: str) -> str | None:
    if capability(name) not in DOCKER_DEFAULT_CAPS:
        return (f"{name!r} cannot be added: only capabilities of Docker's default set can "
                f"({', '.join(sorted(DOCKER_DEFAULT_CAPS))})")
    return None


def cap_drop_problem(name: str) -> str | None:
    if capability(name) != "ALL" and capability(name) not in LINUX_CAPS:
        return f"{name!r} is not a Linux capability (e.g. NET_RAW, or ALL)"
    return None


def security_opt_problem(option: str) -> str | None:
    """Only options that keep or tighten Docker's defaults: `no-new-privileges` (`:true`/`:false`) and
    an AppArmor profile by name (not `unconfined`)."""
    if option in ("no-new-privileges", "no-new-privileges:true", "no-new-privileges:false"):
        return None
    name, _, profile = option.partition("=")
    if name == "apparmor" and profile and profile != "unconfined":
        return None
    return (f"{option!r} is not allowed (use no-new-privileges, no-new-privileges:false, or "
            "apparmor=<profile>)")
