"""The project's tests drive `turnout serve` the same way the pytest plugin does."""

from __future__ import annotations

from controller.testing.plugin import TurnoutDaemon, free_port


class Daemon(TurnoutDaemon):
    """TurnoutDaemon plus `extra_env` and `extra_args` for the next start: e.g. the test-only fault
    hooks of controller/testing/faults.py (`TURNOUT_FAULT_KILL_AT`), cleared by assigning `{}` before a
    restart, or `--prune-strays`."""

    extra_env: dict[str, str] = {}
    extra_args: tuple[str, ...] = ()  # more `turnout serve` options for the next start

    def serve_args(self) -> list[str]:
        return [*super().serve_args(), *self.extra_args]

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, **self.extra_env}


__all__ = ["Daemon", "free_port"]
