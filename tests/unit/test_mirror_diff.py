"""Shadow traffic's diff and report (proxy/mirror_diff.py) and its spec (proxy/specs.py), without sockets."""

from __future__ import annotations

import json

import pytest

from proxy.errors import ValidationError
from proxy.mirror_diff import MAX_ENDPOINTS, OTHER, Answer, DiffReport, differences, endpoint
from proxy.specs import MirrorSpec, ServiceSpec, mirror_from_dict

HEADERS = ("content-type", "location")


def js(payload: object, status: int = 200, **headers: str) -> Answer:
    return Answer(status, {"content-type": "application/json", **headers}, json.dumps(payload).encode())


@pytest.mark.parametrize(("method", "path", "template"), [
    ("GET", "/items/42", "GET /items/{id}"),
    ("GET", "/items/42?x=1", "GET /items/{id}"),
    ("POST", "/users/3f2a1c9e-8b7d-4c6e-9f10-123456789abc/orders/7", "POST /users/{id}/orders/{id}"),
    ("GET", "/blobs/9f86d081884c7d659a2feaa0", "GET /blobs/{id}"),
    ("GET", "/items/latest", "GET /items/latest"),
    ("GET", "/v2/items", "GET /v2/items"),
    ("GET", "/", "GET /"),
])
def test_endpoint_templates(method, path, template):
    assert endpoint(method, path) == template


def test_json_bodies_are_compared_structurally():
    a = js({"id": 1, "price": 10, "tags": ["x", "y"], "items": [{"n": 1}, {"n": 2}], "gone": True})
    b = js({"price": 12, "id": 1, "tags": ["x", "y"], "items": [{"n": 1}, {"n": 3}], "new": None})
    assert differences(a, b, HEADERS) == {
        "$.price": ("10", "12"), "$.items[*].n": ("2", "3"), "$.gone": ("true", "(missing)"),
        "$.new": ("(missing)", "null")}
    assert differences(a, js({"id": 1, "price": 10, "tags": ["x"], "items": [{"n": 1}, {"n": 2}],
                              "gone": True}), HEADERS) == {"$.tags": ("2 items", "1 items")}
    assert differences(js({"n": 1}), js({"n": 1.0}), HEADERS) == {"$.n": ("1", "1.0")}  # types count


def test_status_headers_and_other_bodies():
    a = Answer(200, {"content-type": "text/html", "date": "x"}, b"<p>hello</p>")
    b = Answer(404, {"content-type": "text/plain", "date": "y"}, b"<p>hello!</p>")
    found = differences(a, b, HEADERS)
    assert found["status"] == ("200", "404")
    assert found["header:content-type"] == ("text/html", "text/plain")
    assert "header:date" not in found  # not among the compared headers
    assert found["body"][0].startswith("12 bytes ") and found["body"][1].startswith("13 bytes ")
    assert differences(a, Answer(200, dict(a.headers), a.body), HEADERS) == {}


def test_ignore_entries_cover_a_path_and_what_is_under_it():
    a = js({"meta": {"at": 1, "by": "x"}, "items": [{"id": 1, "ts": 5}], "price": 1}, location="/a")
    b = js({"meta": {"at": 2, "by": "y"}, "items": [{"id": 1, "ts": 6}], "price": 2}, location="/b")
    found = differences(a, b, HEADERS, ("json:$.meta", "json:$.items[0].ts", "header:Location"))
    assert found == {"$.price": ("1", "2")}


def test_noise_learned_later_leaves_the_report_retroactively():
    report = DiffReport()
    report.record("GET /items/{id}", {"$.generated_at": ("1", "2"), "$.price": ("10", "12")})
    report.record("GET /items/{id}", {"$.generated_at": ("3", "4")})
    report.record("GET /items/{id}", {})
    [entry] = report.describe()
    assert (entry["compared"], entry["differing"]) == (3, 2)
    report.learn_noise("GET /items/{id}", {"$.generated_at": ("5", "6")})
    [entry] = report.describe()
    assert (entry["compared"], entry["differing"]) == (3, 1)
    assert [f["field"] for f in entry["fields"]] == ["$.price"] and entry["noise"] == ["$.generated_at"]
    assert report.totals() == (3, 1)


def test_the_report_is_bounded():
    report = DiffReport()
    for i in range(MAX_ENDPOINTS + 50):
        report.record(f"GET /e{i}", {f"$.f{j}": ("a", "b") for j in range(100)})
    assert len(report.endpoints) == MAX_ENDPOINTS + 1 and report.endpoints[OTHER].compared == 50
    assert all(len(e.fields) <= 50 for e in report.endpoints.values())


@pytest.mark.parametrize(("raw", "key", "problem"), [
    ({"percent": 0}, "mirror.percent", "above 0"),
    ({"percent": 101}, "mirror.percent", "between 0 and 100"),
    ({"to": "a b"}, "mirror.to", "canary, stable or a version"),
    ({"methods": ["get"]}, "mirror.methods", "upper-case"),
    ({"methods": "GET"}, "mirror.methods", "list of non-empty strings"),
    ({"ignore": ["json:generated_at"]}, "mirror.ignore", "neither json:$.path"),
    ({"ignore": ["cookie:x"]}, "mirror.ignore", "neither json:$.path"),
    ({"max_body": -1}, "mirror.max_body", "bytes"),
    ({"max_per_second": 0}, "mirror.max_per_second", "1-100000"),
    ({"compare": "yes"}, "mirror.compare", "true or false"),
    ({"sample": 1}, "mirror.sample", "unknown key"),
])
def test_bad_mirror_settings_name_their_key(raw, key, problem):
    with pytest.raises(ValidationError) as caught:
        mirror_from_dict(raw)
    assert caught.value.key == key and problem in caught.value.message


def test_mirror_settings_round_trip_through_the_spec():
    mirror = mirror_from_dict({"to": "v2", "percent": 2.5, "methods": ["GET", "POST"], "headers": ["ETag"],
                               "ignore": ["json:$.items[*].ts", "header:Date"], "max_body": 1024})
    assert mirror.headers == ("etag",) and mirror.percent == 2.5
    spec = ServiceSpec.from_dict({"name": "web", "pools": [], "mirror": mirror.to_dict()})
    assert spec.mirror == mirror and ServiceSpec.from_dict(spec.to_dict()) == spec
    assert mirror_from_dict({}) == MirrorSpec()
