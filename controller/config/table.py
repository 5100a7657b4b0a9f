"""`Table`: one TOML (or Compose, or command-line) table being read, with typed getters whose every
error is a `ConfigError` naming the key path and its origin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .duration import DurationError, parse_duration
from .model import ConfigError

Origin = tuple[str, "Path | str | None"]


class Table:
    """One table being read. Keys may carry their own origin (a Compose file) through `origins`; on
    the command line keys are named as flags (`--step-pause`)."""

    def __init__(self, data: Any, path: str, source: Path | str | None, *,
                 origins: dict[str, Origin] | None = None, flag_prefix: str | None = None) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, f"must be a table, got {data!r}", source)
        self.data = data
        self.path = path
        self.source = source
        self._origins = origins or {}
        self._flag_prefix = flag_prefix  # not None: the command line

    def where(self, key: str) -> Origin:
        if key in self._origins:
            return self._origins[key]
        if self._flag_prefix is not None:
            return "--" + "-".join(filter(None, (self._flag_prefix, key))).replace("_", "-"), self.source
        return (f"{self.path}.{key}" if self.path else key), self.source

    def error(self, key: str, problem: str) -> ConfigError:
        path, source = self.where(key)
        return ConfigError(path, problem, source)

    def has(self, key: str) -> bool:
        return key in self.data

    def reject_unknown(self, known: set[str] | frozenset[str]) -> None:
        for key in self.data:
            if key not in known:
                raise self.error(str(key), f"unknown key (known: {', '.join(sorted(known))})")

    def table(self, key: str) -> Table | None:
        if key not in self.data:
            return None
        path, source = self.where(key)
        prefix = None if self._flag_prefix is None else "-".join(filter(None, (self._flag_prefix, key)))
        return Table(self.data[key], path, source, flag_prefix=prefix)

    def string(self, key: str, default: Any = None, *, choices: tuple[str, ...] = ()) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a non-empty string, got {value!r}")
        if choices and value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def integer(self, key: str, default: Any = None, *, minimum: int | None = None,
                maximum: int | None = None) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be a whole number, got {value!r}")
        _check_range(self, key, value, minimum, maximum)
        return value

    def number(self, key: str, default: Any = None, *, minimum: float | None = None,
               maximum: float | None = None, positive: bool = False) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, got {value!r}")
        if positive and not value > 0:
            raise self.error(key, f"must be greater than 0, got {value!r}")
        _check_range(self, key, value, minimum, maximum)
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def duration(self, key: str, default: Any = None, *, positive: bool = False) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        path, source = self.where(key)
        try:
            seconds = parse_duration(value, path)
        except DurationError as exc:
            raise ConfigError(path, str(exc).removeprefix(f"{path}: "), source) from None
        if positive and seconds <= 0:
            raise self.error(key, f"must be longer than 0, got {value!r}")
        return seconds

    def strings(self, key: str, default: Any = ()) -> Any:
        """A string or a list of strings, as a tuple."""
        if key not in self.data:
            return default
        value = self.data[key]
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
            raise self.error(key, f"must be a string or a list of non-empty strings, got {value!r}")
        return tuple(items)

    def string_map(self, key: str) -> dict[str, str]:
        """A table of scalars, as strings (TOML `PORT = 8080` means the string "8080")."""
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table of key = value, got {value!r}")
        result = {}
        for name, item in value.items():
            if not name or "=" in name:
                raise self.error(key, f"bad name {name!r}")
            if isinstance(item, bool):
                item = "true" if item else "false"
            if not isinstance(item, str | int | float):
                raise ConfigError(f"{self.where(key)[0]}.{name}", f"must be a string or number, got {item!r}",
                                  self.where(key)[1])
            result[name] = str(item)
        return result


def _check_range(table: Table, key: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise table.error(key, f"must be at least {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise table.error(key, f"must be at most {maximum}, got {value!r}")
