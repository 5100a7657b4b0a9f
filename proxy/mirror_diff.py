"""Shadow traffic's response diff: what differs between two answers to the same request, and the report of
those differences per endpoint template.

Two answers differ in their status, in a chosen set of headers, and in their body: JSON bodies are
compared structurally (the paths of the fields that differ, array indices written `[*]`), other bodies by
length and hash. Fields that also differ between two upstreams of the *stable* pool answering the same
request are noise (a timestamp, a request id), learned per endpoint as Diffy does, and left out of the
report, as are the operator's `ignore` entries. Everything kept is bounded (endpoints, fields, examples).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_ENDPOINTS = 200  # more distinct templates are counted under "(other)"
MAX_FIELDS = 50  # per endpoint
MAX_SHAPES = 64  # distinct sets of differing fields kept per endpoint
MAX_EXAMPLE = 120  # characters of an example value
OTHER = "(other)"

# A path segment that names one thing among many: a number, a UUID, a long hex or base-64-ish token.
_ID_SEGMENT = re.compile(
    r"[0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|(?=[^/]*[0-9])[0-9a-fA-F]{12,}|(?=[^/]*[0-9])(?=[^/]*[A-Za-z])[A-Za-z0-9_-]{20,}")


def endpoint(method: str, path: str) -> str:
    """`GET /items/{id}` for `GET /items/42?x=1`: identifiers in the path become `{id}`."""
    path = path.partition("?")[0]
    segments = ["{id}" if _ID_SEGMENT.fullmatch(s) else s for s in path.split("/")]
    return f"{method} {'/'.join(segments) or '/'}"


@dataclass(slots=True)
class Answer:
    """One answer as compared: status, headers (lower-case names, repeated ones joined by ", "), and the
    body up to the limit (`truncated` when more came)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    truncated: bool = False


def differences(primary: Answer, other: Answer, headers: tuple[str, ...],
                ignore: tuple[str, ...] = ()) -> dict[str, tuple[str, str]]:
    """The fields in which `other` differs from `primary`: {field: (primary's value, other's value)}.
    Fields are `status`, `header:<name>`, `body` (length and hash) or JSON paths (`$.items[*].price`)."""
    found: dict[str, tuple[str, str]] = {}
    if primary.status != other.status:
        found["status"] = (str(primary.status), str(other.status))
    for name in headers:
        a, b = primary.headers.get(name), other.headers.get(name)
        if a != b:
            found[f"header:{name}"] = (_show(a), _show(b))
    a, b = _json(primary), _json(other)
    if a is not _NOT_JSON and b is not _NOT_JSON:
        _json_diff(a, b, "$", found)
    elif primary.body != other.body:
        found["body"] = (_digest(primary), _digest(other))
    return {k: v for k, v in found.items() if not ignored(k, ignore)}


def ignored(name: str, ignore: tuple[str, ...]) -> bool:
    """`ignore` entries: "header:Date" (any case) or "json:$.path", which also covers what is under it."""
    for entry in ignore:
        kind, _, what = entry.partition(":")
        if kind == "header" and name.lower() == f"header:{what.lower()}":
            return True
        if kind == "json":
            pattern = re.sub(r"\[[0-9]+\]", "[*]", what)
            if name == pattern or name.startswith(pattern + ".") or name.startswith(pattern + "["):
                return True
    return False


_NOT_JSON = object()


def _json(answer: Answer) -> Any:
    if answer.truncated or not answer.body:
        return _NOT_JSON
    kind = answer.headers.get("content-type", "")
    if "json" not in kind and answer.body.lstrip()[:1] not in (b"{", b"["):
        return _NOT_JSON
    try:
        return json.loads(answer.body)
    except (ValueError, UnicodeDecodeError):
        return _NOT_JSON


def _json_diff(a: Any, b: Any, path: str, found: dict[str, tuple[str, str]]) -> None:
    if len(found) >= MAX_FIELDS:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            child = f"{path}.{key}"
            if key not in a or key not in b:
                found.setdefault(child, (_show_json(a, key), _show_json(b, key)))
            else:
                _json_diff(a[key], b[key], child, found)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            found.setdefault(path, (f"{len(a)} items", f"{len(b)} items"))
        for x, y in zip(a, b, strict=False):
            _json_diff(x, y, f"{path}[*]", found)
    elif a != b or type(a) is not type(b):
        found.setdefault(path, (_show(json.dumps(a)), _show(json.dumps(b))))


def _show_json(container: dict[str, Any], key: str) -> str:
    return _show(json.dumps(container[key])) if key in container else "(missing)"


def _show(value: str | None) -> str:
    if value is None:
        return "(none)"
    return value if len(value) <= MAX_EXAMPLE else value[:MAX_EXAMPLE] + "..."


def _digest(answer: Answer) -> str:
    size = f"{len(answer.body)}{'+' if answer.truncated else ''} bytes"
    return f"{size} {hashlib.blake2b(answer.body, digest_size=6).hexdigest()}"


@dataclass(slots=True)
class _Field:
    count: int = 0
    primary: str = ""  # the first example seen
    other: str = ""


@dataclass(slots=True)
class EndpointDiffs:
    compared: int = 0
    fields: dict[str, _Field] = field(default_factory=dict)
    shapes: Counter[frozenset[str]] = field(default_factory=Counter)  # requests by their set of fields
    noise: set[str] = field(default_factory=set)

    def differing(self) -> int:
        """Requests that differed in a field that is not noise (as learned so far)."""
        return sum(n for shape, n in self.shapes.items() if shape - self.noise)


class DiffReport:
    """The differences seen so far, per endpoint template; noise is applied when the report is read, so
    a field learned as noise later leaves the report retroactively."""

    def __init__(self) -> None:
        self.endpoints: dict[str, EndpointDiffs] = {}

    def _of(self, name: str) -> EndpointDiffs:
        found = self.endpoints.get(name)
        if found is None:
            if len(self.endpoints) >= MAX_ENDPOINTS:
                name = OTHER
                found = self.endpoints.get(name)
            if found is None:
                found = self.endpoints[name] = EndpointDiffs()
        return found

    def record(self, name: str, diffs: dict[str, tuple[str, str]]) -> None:
        """One comparison of the client's answer with the mirror's."""
        entry = self._of(name)
        entry.compared += 1
        shape = frozenset(diffs)
        if shape in entry.shapes or len(entry.shapes) < MAX_SHAPES:
            entry.shapes[shape] += 1
        for key, (a, b) in diffs.items():
            found = entry.fields.get(key)
            if found is None:
                if len(entry.fields) >= MAX_FIELDS:
                    continue
                found = entry.fields[key] = _Field(0, a, b)
            found.count += 1

    def learn_noise(self, name: str, diffs: dict[str, tuple[str, str]]) -> None:
        """Fields in which two stable upstreams answered the same request differently."""
        entry = self._of(name)
        if len(entry.noise) < MAX_FIELDS:
            entry.noise.update(list(diffs)[: MAX_FIELDS - len(entry.noise)])

    def totals(self) -> tuple[int, int]:
        """(compared, differing) over every endpoint."""
        return (sum(e.compared for e in self.endpoints.values()),
                sum(e.differing() for e in self.endpoints.values()))

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for name, entry in sorted(self.endpoints.items()):
            fields = [{"field": key, "count": f.count, "primary": f.primary, "mirror": f.other}
                      for key, f in sorted(entry.fields.items(), key=lambda kv: (-kv[1].count, kv[0]))
                      if key not in entry.noise]
            out.append({"endpoint": name, "compared": entry.compared, "differing": entry.differing(),
                        "fields": fields, "noise": sorted(entry.noise)})
        return out
