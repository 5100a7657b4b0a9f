"""The project's tests drive `turnout serve` the same way the pytest plugin does."""

from controller.testing import TurnoutDaemon as Daemon
from controller.testing import free_port

__all__ = ["Daemon", "free_port"]
