"""Human durations ("500ms", "30s", "5m", "1h", "1m30s") to seconds, for config files and CLI flags."""

from __future__ import annotations

import math
import re

from ..errors import TurnoutError

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# One or more "<number><unit>" parts, largest unit first by convention (not enforced: "90s" is fine).
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")


class DurationError(TurnoutError, ValueError):
    """A value that is not a duration; the message names where it came from."""

    def __init__(self, where: str, value: object) -> None:
        self.where = where
        self.value = value
        super().__init__(
            f"{where}: {value!r} is not a duration (use e.g. \"500ms\", \"30s\", \"5m\", \"1h\", \"1m30s\" "
            "or a number of seconds)"
        )


def parse_duration(value: object, where: str) -> float:
    """Seconds as a float. Plain numbers (and numeric strings) are seconds; negatives are refused."""
    # bool is an int subclass; `true` as a timeout is a mistake, not one second.
    if isinstance(value, bool):
        raise DurationError(where, value)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif _WHOLE.fullmatch(text):
            seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(text))
        else:
            raise DurationError(where, value)
    else:
        raise DurationError(where, value)
    if not math.isfinite(seconds) or seconds < 0:
        raise DurationError(where, value)
    return seconds


def format_duration(seconds: float) -> str:
    """The inverse for display: 90.0 -> "1m30s", 0.5 -> "500ms"."""
    if 0 < seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "".join(parts) or "0s"
