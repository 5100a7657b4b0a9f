"""Test support shipped with Turnout: the pytest plugin and the fault hooks the fault tests arm."""
