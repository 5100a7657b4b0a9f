"""Routing rules without sockets: what a rule matches (proxy/rules.py), how its spec is validated
(proxy/specs.py), and where it sends a request in a snapshot (proxy/service.py: precedence, fall-through)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.errors import ValidationError
from proxy.http import parse_request_head
from proxy.router import Router
from proxy.rules import BUCKETS, Rules, bucket
from proxy.specs import ServiceSpec, rules_from_list
from proxy.upstream import Health

ROOT = Path(__file__).resolve().parents[2]


def head(target: str = "/", *lines: str) -> bytes:
    return ("\r\n".join([f"GET {target} HTTP/1.1", "Host: app.test", *lines]) + "\r\n\r\n").encode("latin-1")


def matching(rules: list[dict], raw: bytes) -> list[str]:
    compiled = Rules(rules_from_list(rules))
    return [compiled.specs[i].name for i in compiled.matching(parse_request_head(raw))]


def rule(name: str = "r", to: str = "canary", **match: object) -> dict:
    return {"name": name, "match": match, "to": to}


@pytest.mark.parametrize(("pattern", "value", "matches"), [
    ("always", "always", True),
    ("always", "Always", False),
    ("always", "always-not", False),
    ("prefix:beta-", "beta-7", True),
    ("prefix:beta-", "alpha-beta-7", False),
    ("regex:v[0-9]+", "v42", True),
    ("regex:v[0-9]+", "v42x", False),  # a full match, not a search
    ("exact:prefix:x", "prefix:x", True),  # "exact:" says the rest is the value, whatever it starts with
    ("", "", True),
])
def test_header_values_exact_prefix_regex(pattern, value, matches):
    raw = head("/", f"X-Canary: {value}")
    assert matching([rule(header={"X-Canary": pattern})], raw) == (["r"] if matches else [])


def test_header_names_are_case_insensitive_and_repeated_lines_join():
    assert matching([rule(header={"x-CANARY": "on"})], head("/", "X-Canary: on")) == ["r"]
    raw = head("/", "X-Group: a", "X-Group: b")
    assert matching([rule(header={"X-Group": "a, b"})], raw) == ["r"]
    assert matching([rule(header={"X-Group": "a"})], head("/")) == []  # absent never matches


def test_cookies_and_query_parameters():
    raw = head("/items?beta=1&lang=fr%2Dbe", "Cookie: session=abc; plan=\"pro\"; plan=free")
    assert matching([rule(cookie={"plan": "pro"})], raw) == ["r"]  # quotes go; the first of a name wins
    assert matching([rule(cookie={"session": "prefix:a"})], raw) == ["r"]
    assert matching([rule(cookie={"missing": "regex:.*"})], raw) == []
    assert matching([rule(query={"beta": "1"})], raw) == ["r"]
    assert matching([rule(query={"lang": "fr-be"})], raw) == ["r"]  # percent-decoded
    assert matching([rule(query={"beta": "1"})], head("/items?beta=2")) == []
    absolute = b"GET http://app.test/x?beta=1 HTTP/1.1\r\nHost: other\r\n\r\n"
    assert matching([rule(query={"beta": "1"})], absolute) == ["r"]


def test_every_condition_of_a_rule_must_match_and_every_matching_rule_is_listed_in_order():
    rules = [rule("both", header={"X-A": "1"}, query={"b": "2"}), rule("a", header={"X-A": "1"}),
             rule("c", cookie={"c": "3"})]
    assert matching(rules, head("/?b=2", "X-A: 1")) == ["both", "a"]
    assert matching(rules, head("/?b=9", "X-A: 1", "Cookie: c=3")) == ["a", "c"]


def test_buckets_hold_ten_percent_of_ten_thousand_ids():
    rules = Rules(rules_from_list([rule("beta-10pct", hash={"cookie": "account_id", "percent": 10})]))
    inside = sum(bool(rules.matching(parse_request_head(head("/", f"Cookie: account_id=user-{i}"))))
                 for i in range(10_000))
    assert 900 <= inside <= 1100
    by_header = Rules(rules_from_list([rule("h", hash={"header": "X-User", "percent": 10})]))
    inside = sum(bool(by_header.matching(parse_request_head(head("/", f"X-User: {i}"))))
                 for i in range(10_000))
    assert 900 <= inside <= 1100


def test_raising_the_percent_keeps_who_was_in():
    ids = [f"acct-{i}" for i in range(2000)]
    ten = {i for i in ids if bucket("beta", i) < 10 * BUCKETS // 100}
    twenty = {i for i in ids if bucket("beta", i) < 20 * BUCKETS // 100}
    assert ten < twenty


def test_buckets_do_not_move_across_a_restart():
    """Another interpreter, with another hash seed, puts every id in the same bucket; and the function is
    pinned to known values, so a change of implementation (which would move users) fails here."""
    ids = [f"user-{i}" for i in range(300)]
    here = [bucket("beta-10pct", i) for i in ids]
    code = ("import sys; from proxy.rules import bucket; "
            "print(','.join(str(bucket('beta-10pct', f'user-{i}')) for i in range(300)))")
    for seed in ("1", "4242"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        assert [int(b) for b in out.strip().split(",")] == here
    assert [bucket("beta-10pct", "user-1"), bucket("beta-10pct", "user-2"), bucket("x", "user-1")] == \
        PINNED


PINNED = [1214, 3116, 5476]  # blake2b keyed with the rule name, mod 10,000


def test_missing_hash_value_never_matches():
    assert matching([rule(hash={"cookie": "account_id", "percent": 100})], head("/")) == []
    assert matching([rule(hash={"cookie": "account_id", "percent": 100})],
                    head("/", "Cookie: account_id=7")) == ["r"]


def test_decisions_are_remembered_per_head():
    rules = Rules(rules_from_list([rule(header={"X-Canary": "regex:al+ways"})]))
    raw = head("/", "X-Canary: always")
    req = parse_request_head(raw)
    assert rules.matching(req) == (0,)
    rules._tests = ()  # nothing could match any more: a remembered head is not matched again
    assert rules.matching(parse_request_head(raw)) == (0,)
    assert rules.matching(parse_request_head(head("/other"))) == ()


# ---------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(("rules", "key", "problem"), [
    ([rule(header={"X-Canary": "regex:a("})], "rules[0].match.header.X-Canary", "bad regex"),
    ([rule(body={"x": "1"})], "rules[0].match.body", "unknown match key"),
    ([{"name": "r", "match": {}, "to": "canary"}], "rules[0].match", "one or more of"),
    ([{"name": "r", "match": {"header": {"a": "1"}}}], "rules[0].to", "required"),
    ([{"name": "r", "match": {"header": {"a": "1"}}, "to": "canary", "when": 1}], "rules[0].when", "unknown"),
    ([rule(to="no pool!", header={"a": "1"})], "rules[0].to", "canary, stable or a version"),
    ([rule(header={"bad name": "1"})], "rules[0].match.header.bad name", "not a header name"),
    ([rule(header={"a": 1})], "rules[0].match.header.a", "must be a string"),
    ([rule(hash={"cookie": "id"})], "rules[0].match.hash.percent", "required"),
    ([rule(hash={"cookie": "id", "percent": 0})], "rules[0].match.hash.percent", "above 0"),
    ([rule(hash={"cookie": "id", "percent": 101})], "rules[0].match.hash.percent", "between 0 and 100"),
    ([rule(hash={"cookie": "id", "percent": 1.001})], "rules[0].match.hash.percent", "steps of 0.01"),
    ([rule(hash={"cookie": "id", "header": "x", "percent": 5})], "rules[0].match.hash", "exactly one"),
    ([rule(hash={"ip": "x", "percent": 5})], "rules[0].match.hash.ip", "unknown key"),
    ([rule("a", header={"x": "1"}), rule("a", header={"y": "1"})], "rules[1].name", "duplicate"),
    ([rule("a b", header={"x": "1"})], "rules[0].name", "letters, digits"),
])
def test_bad_rules_name_their_key(rules, key, problem):
    with pytest.raises(ValidationError) as caught:
        rules_from_list(rules)
    assert caught.value.key == key
    assert problem in caught.value.message


def test_rules_round_trip_through_the_spec():
    rules = [rule("insiders", header={"X-Canary": "always"}, cookie={"beta": "prefix:y"}),
             rule("beta", to="v2", hash={"header": "X-User", "percent": 12.5}),
             rule("q", "stable", query={"a": ""})]
    spec = ServiceSpec.from_dict({"name": "web", "pools": [], "rules": rules})
    assert [r.to_dict() for r in spec.rules] == rules
    assert ServiceSpec.from_dict(spec.to_dict()) == spec


# ---------------------------------------------------------------------------------------- in a snapshot
POOLS = [{"name": "v1", "weight": 100, "upstreams": ["127.0.0.1:9001"]},
         {"name": "v2", "weight": 0, "upstreams": ["127.0.0.1:9002"]}]
INSIDERS = rule("insiders", header={"X-Canary": "always"})


def routed(router: Router, raw: bytes, forced: str | None = None,
           sticky: str | None = None) -> tuple[str, bool]:
    svc = router.table.services["web"]
    pool, set_cookie = svc.select(svc.allowed_pool(forced, b"127.0.0.1"), sticky, parse_request_head(raw))
    assert pool is not None
    return pool.name, set_cookie


def web(router: Router, rules: list[dict], **extra: object) -> None:
    router.set_service(ServiceSpec.from_dict({"name": "web", "pools": POOLS, "rules": rules, **extra}))


def test_precedence_override_then_rules_then_sticky_then_weights():
    router = Router()
    web(router, [INSIDERS, rule("to-v1", to="v1", cookie={"turnout-web": "v2"})], sticky=True,
        override="trusted", override_networks=["127.0.0.0/8"], labels={"stable": "v1", "canary": "v2"})
    matched = head("/", "X-Canary: always")
    assert routed(router, matched) == ("v2", False)  # the rule reaches the weight-0 canary
    assert routed(router, matched, forced="v1") == ("v1", False)  # the override wins over the rules
    assert routed(router, head("/", "Cookie: turnout-web=v2"), sticky="v2") == ("v1", False)  # rule > sticky
    assert routed(router, head("/"), sticky="v1") == ("v1", False)  # no rule: the sticky cookie
    assert routed(router, head("/")) == ("v1", True)  # nothing: the weights (and a cookie to set)
    assert router.metrics.rules[("web", "insiders")].matches == 1
    assert router.metrics.rules[("web", "to-v1")].matches == 1


def test_a_rule_whose_pool_is_not_routable_falls_through():
    router = Router()
    web(router, [INSIDERS, rule("second", to="v1", header={"X-Canary": "prefix:al"})])
    raw = head("/", "X-Canary: always")
    assert routed(router, raw) == ("v2", False)
    router.set_health(router.upstreams["127.0.0.1:9002"], Health.UNHEALTHY)
    assert routed(router, raw) == ("v1", False)
    assert router.metrics.rules[("web", "second")].matches == 1
    assert router.metrics.rules[("web", "insiders")].matches == 1


def test_canary_and_stable_targets_follow_labels_or_weights():
    router = Router()
    web(router, [rule("c", "canary", header={"X-T": "c"}), rule("s", "stable", header={"X-T": "s"})])
    assert routed(router, head("/", "X-T: c"))[0] == "v2"  # no labels: stable is the heaviest pool
    assert routed(router, head("/", "X-T: s"))[0] == "v1"
    web(router, [rule("c", "canary", header={"X-T": "c"}), rule("s", "stable", header={"X-T": "s"})],
        labels={"stable": "v2", "canary": "v1"})
    assert routed(router, head("/", "X-T: c"))[0] == "v1"
    assert routed(router, head("/", "X-T: s"))[0] == "v2"
    # Labelled stable and no canary (the controller's kept-warm old set at weight 0): "canary" is nobody.
    web(router, [rule("c", "canary", header={"X-T": "c"})], labels={"stable": "v1"})
    assert router.table.services["web"].rules is None


def test_rules_without_a_routable_target_leave_the_service_as_if_it_had_none():
    router = Router()
    router.set_service(ServiceSpec.from_dict({"name": "web", "pools": POOLS[:1], "rules": [INSIDERS]}))
    svc = router.table.services["web"]
    assert svc.rules is None and svc.only is not None and svc.only.name == "v1"  # no canary: fast lane
    web(router, [INSIDERS])
    svc = router.table.services["web"]
    assert svc.rules is not None and svc.only is None


def test_rules_change_live_and_keep_their_counters():
    router = Router()
    web(router, [INSIDERS])
    routed(router, head("/", "X-Canary: always"))
    router.set_rules("web", rules_from_list([INSIDERS, rule("q", to="v1", query={"a": "1"})]))
    assert routed(router, head("/?a=1"))[0] == "v1"
    assert routed(router, head("/?a=1", "X-Canary: always"))[0] == "v2"
    assert router.metrics.rules[("web", "insiders")].matches == 2
    router.set_rules("web", ())
    assert router.table.services["web"].rules is None
    text = router.metrics.render([])
    assert 'turnout_rule_matches_total{service="web",rule="insiders"} 2' in text
    assert 'turnout_rule_matches_total{service="web",rule="q"} 1' in text
