"""Test-only fault hooks: make `turnout serve` die (SIGKILL) or freeze (SIGSTOP) exactly at one step of a
deploy, so the fault tests can cut a real deploy at every step it journals and check what recovery does.

    TURNOUT_FAULT_KILL_AT="[before:|after:]<step>[#<occurrence>][@<version>]"
    TURNOUT_FAULT_STOP_AT=...same grammar, SIGSTOP instead of SIGKILL (the test sends SIGCONT)

e.g. `healthy#2@v2`: right after the second `healthy` step of a deploy to v2 was journalled;
`before:switched`: just before the first `switched` step is journalled (the swap itself has happened:
strategies record a step after doing it). Occurrences count the steps this process journals for that
version (any version without `@`), from 1. Read once at daemon start (`install_from_env`);
`Operations.step` (and `.switched`) calls `reached`. Unset, which is the production case, `ARMED` is None
and a step costs one global lookup. Never set these in a deployment: they exist so tests can crash the
controller at a chosen point.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog

from ..errors import UsageError

ENV = {"TURNOUT_FAULT_KILL_AT": signal.SIGKILL, "TURNOUT_FAULT_STOP_AT": signal.SIGSTOP}
_GRAMMAR = re.compile(r"(?:(?P<when>before|after):)?(?P<step>[a-z_]+)(?:#(?P<n>[1-9][0-9]*))?"
                      r"(?:@(?P<version>[\w.-]+))?")

log = structlog.get_logger("turnout.faults")


@dataclass
class FaultPoint:
    """Send `sig` to this process at the `occurrence`th journalled `step` (of `version`, if given)."""

    step: str
    sig: int = signal.SIGKILL
    before: bool = False
    occurrence: int = 1
    version: str | None = None
    seen: int = field(default=0, init=False)

    @classmethod
    def parse(cls, text: str, sig: int = signal.SIGKILL) -> FaultPoint:
        match = _GRAMMAR.fullmatch(text.strip())
        if not match:
            raise UsageError(f"fault point {text!r}: expected [before:|after:]<step>[#<n>][@<version>], "
                             "e.g. healthy#2@v2")
        return cls(match["step"], sig, match["when"] == "before", int(match["n"] or 1), match["version"])

    def reached(self, name: str, version: str, before: bool) -> None:
        """Called twice per journalled step: before the write and after it."""
        if name != self.step or (self.version is not None and version != self.version):
            return
        if before:
            self.seen += 1  # counted once per step, on its way in
        if before != self.before or self.seen != self.occurrence:
            return
        log.warning("faults.signal", step=name, version=version, occurrence=self.seen,
                    signal=signal.Signals(self.sig).name, before=before)
        os.kill(os.getpid(), self.sig)


ARMED: FaultPoint | None = None


def install_from_env(environ: Mapping[str, str] = os.environ) -> FaultPoint | None:
    """Arm the hook from the environment (at most one variable may be set)."""
    global ARMED
    points = [FaultPoint.parse(environ[name], sig) for name, sig in ENV.items() if environ.get(name)]
    if len(points) > 1:
        raise UsageError(f"set at most one of {', '.join(ENV)}")
    ARMED = points[0] if points else None
    if ARMED is not None:
        log.warning("faults.armed", step=ARMED.step, occurrence=ARMED.occurrence, version=ARMED.version,
                    before=ARMED.before, signal=signal.Signals(ARMED.sig).name)
    return ARMED
