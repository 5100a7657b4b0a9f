"""Routing rules: which of a service's rules match a request head.

A rule matches on header, cookie and query values (exact, "prefix:", "regex:" — a full match) and on
stable buckets (`hash`: a cookie's or header's value hashed with the rule's name into one of 10,000
buckets, so the same value always lands in the same bucket, in every process; Python's own `hash()` is
randomised per process and is not used). Which pool a match sends the request to is the snapshot's
business (`Service.by_rules`): a rule whose pool is not routable falls through to the next.

The answer is a pure function of the head's bytes, so it is remembered per head, as the validated heads
are (`http.RequestHeads`): a client repeating a head costs one dict lookup. `Rules` objects are shared by
every snapshot with the same rules (`compiled`), so a weight change or a health transition keeps what
was learned.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from urllib.parse import parse_qsl

from .http import RequestHead
from .specs import RuleSpec

BUCKETS = 10_000
MAX_DECISIONS = 1024  # remembered heads per rule set (cleared when full, like the head store)
MAX_REMEMBERED_HEAD = 2048  # longer heads are matched every time, never remembered (as in the head store)
_COMPILED_MAX = 256

Test = Callable[["HeadView"], bool]


def bucket(salt: str, value: str) -> int:
    """The stable bucket (0..9999) of `value` for the rule named `salt`: the same in every process."""
    digest = hashlib.blake2b(value.encode("latin-1", "replace"), digest_size=8,
                             key=salt.encode()[:64]).digest()
    return int.from_bytes(digest, "big") % BUCKETS


class HeadView:
    """The parts of one request head a rule may look at, parsed on first use (only on a miss)."""

    __slots__ = ("_cookies", "_headers", "_query", "raw", "req")

    def __init__(self, raw: bytes, req: RequestHead) -> None:
        self.raw = raw
        self.req = req
        self._headers: dict[str, str | None] | None = None
        self._cookies: dict[str, str] | None = None
        self._query: dict[str, str] | None = None

    def header(self, name: str) -> str | None:
        """The header's value (several lines of it joined with ", ", as RFC 9110 5.3 allows). A validated
        head has no space before a colon, so one search per name finds its lines."""
        if self._headers is None:
            self._headers = {}
        elif name in self._headers:
            return self._headers[name]
        found = _header_re(name).findall(self.raw)
        value = ", ".join(v.rstrip(b" \t").decode("latin-1") for v in found) if found else None
        self._headers[name] = value
        return value

    def cookie(self, name: str) -> str | None:
        if self._cookies is None:
            cookies: dict[str, str] = {}
            line = self.header("cookie")
            for pair in (line or "").replace(",", ";").split(";"):
                key, eq, value = pair.partition("=")
                key = key.strip()
                if eq and key and key not in cookies:  # the first of a name wins, as browsers send it first
                    cookies[key] = value.strip().strip('"')
            self._cookies = cookies
        return self._cookies.get(name)

    def query(self, name: str) -> str | None:
        if self._query is None:
            target = self.req.origin if self.req.origin is not None else self.req.target
            self._query = {}
            if b"?" in target:
                query = target.partition(b"?")[2].partition(b"#")[0]
                for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True,
                                            encoding="latin-1"):
                    self._query.setdefault(key, value)
        return self._query.get(name)


_HEADER_RES: dict[str, re.Pattern[bytes]] = {}


def _header_re(name: str) -> re.Pattern[bytes]:
    """`\r\n<name>:[ \t]*(value)`, any case: the lines of one header in a raw head."""
    pattern = _HEADER_RES.get(name)
    if pattern is None:
        escaped = re.escape(name.encode("latin-1"))
        pattern = _HEADER_RES[name] = re.compile(rb"\r\n" + escaped + rb":[ \t]*([^\r]*)", re.IGNORECASE)
    return pattern


def _value_test(pattern: str) -> Callable[[str], bool]:
    if pattern.startswith("regex:"):
        fullmatch = re.compile(pattern[6:]).fullmatch
        return lambda value: fullmatch(value) is not None
    if pattern.startswith("prefix:"):
        prefix = pattern[7:]
        return lambda value: value.startswith(prefix)
    exact = pattern[6:] if pattern.startswith("exact:") else pattern
    return lambda value: value == exact


def _condition(source: str, name: str, pattern: str) -> Test:
    matches = _value_test(pattern)
    if source == "header":
        key = name.lower()
        return lambda view: (v := view.header(key)) is not None and matches(v)
    if source == "cookie":
        return lambda view: (v := view.cookie(name)) is not None and matches(v)
    return lambda view: (v := view.query(name)) is not None and matches(v)


def _compile(rule: RuleSpec) -> list[Test]:
    tests = [_condition(source, name, pattern)
             for source in ("header", "cookie", "query") for name, pattern in getattr(rule, source)]
    spec = rule.hash
    if spec is not None:
        threshold = round(spec.percent * 100)  # buckets 0..threshold-1 match
        salt = rule.name
        if spec.source == "header":
            key = spec.key.lower()
            tests.append(lambda view: (v := view.header(key)) is not None and bucket(salt, v) < threshold)
        else:
            key = spec.key
            tests.append(lambda view: (v := view.cookie(key)) is not None and bucket(salt, v) < threshold)
    return tests


class Rules:
    """One service's rules, compiled: `matching(req)` gives the indices of the rules a head matches."""

    __slots__ = ("_decisions", "_tests", "specs")

    def __init__(self, specs: tuple[RuleSpec, ...]) -> None:
        self.specs = specs
        self._tests = tuple(_compile(rule) for rule in specs)
        self._decisions: dict[bytes, tuple[int, ...]] = {}

    def matching(self, req: RequestHead) -> tuple[int, ...]:
        raw = req.raw
        found = self._decisions.get(raw)
        if found is None:
            view = HeadView(raw, req)
            matched = []
            for i, tests in enumerate(self._tests):
                for test in tests:
                    if not test(view):
                        break
                else:
                    matched.append(i)
            found = tuple(matched)
            if len(raw) <= MAX_REMEMBERED_HEAD:
                if len(self._decisions) >= MAX_DECISIONS:
                    self._decisions.clear()
                self._decisions[raw] = found
        return found


_COMPILED: dict[tuple[RuleSpec, ...], Rules] = {}


def compiled(specs: tuple[RuleSpec, ...]) -> Rules:
    """The one `Rules` for these rule specs (shared across snapshots, so their decisions are kept)."""
    rules = _COMPILED.get(specs)
    if rules is None:
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.clear()
        rules = _COMPILED[specs] = Rules(specs)
    return rules
