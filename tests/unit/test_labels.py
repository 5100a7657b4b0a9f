"""The turnout.* label namespace: what labels_for writes, what is_ours accepts, what list filters ask."""

from __future__ import annotations

import pytest

from controller import labels as lbl


def make(**overrides):
    args = dict(owner="daemon-a", service="web", version="v1", deployment="d-1", pool="blue", port=8080)
    args.update(overrides)
    return lbl.labels_for(**args)


def test_labels_for_sets_every_core_key_as_strings():
    labels = make()
    assert labels == {
        lbl.MANAGED: "true",
        lbl.OWNER: "daemon-a",
        lbl.SERVICE: "web",
        lbl.VERSION: "v1",
        lbl.DEPLOYMENT: "d-1",
        lbl.POOL: "blue",
        lbl.PORT: "8080",
    }
    assert all(key.startswith(lbl.PREFIX) for key in labels)


def test_extra_labels_are_added_including_our_namespace():
    labels = make(extra={"team": "payments", "turnout.test-run": "abc"})
    assert labels["team"] == "payments"
    assert labels["turnout.test-run"] == "abc"
    assert labels[lbl.OWNER] == "daemon-a"


@pytest.mark.parametrize("key", sorted(lbl.CORE_KEYS))
def test_extra_labels_cannot_override_core_keys(key):
    with pytest.raises(ValueError, match=key):
        make(extra={key: "hijack"})


def test_extra_label_values_must_be_strings():
    with pytest.raises(ValueError, match="team"):
        make(extra={"team": 3})


@pytest.mark.parametrize(
    ("field", "value"),
    [("owner", ""), ("service", ""), ("version", ""), ("pool", ""), ("deployment", None)],
)
def test_labels_for_rejects_missing_values(field, value):
    with pytest.raises(ValueError, match=field):
        make(**{field: value})


@pytest.mark.parametrize("port", [0, 65536, -1, "8080", True])
def test_labels_for_rejects_bad_ports(port):
    with pytest.raises(ValueError, match="port"):
        make(port=port)


def test_is_ours_needs_managed_and_same_owner():
    assert lbl.is_ours(make(), "daemon-a")
    assert not lbl.is_ours(make(), "daemon-b")
    assert not lbl.is_ours({lbl.OWNER: "daemon-a"}, "daemon-a")  # not marked managed
    assert not lbl.is_ours({**make(), lbl.MANAGED: "false"}, "daemon-a")
    assert not lbl.is_ours({}, "daemon-a")
    assert not lbl.is_ours(None, "daemon-a")


def test_list_filters_select_managed_and_owner():
    assert lbl.list_filters("daemon-a") == {"label": ["turnout.managed=true", "turnout.owner=daemon-a"]}


def test_list_filters_can_narrow_to_one_service():
    filters = lbl.list_filters("daemon-a", service="web")
    assert filters["label"][-1] == "turnout.service=web"
    assert len(filters["label"]) == 3


def test_every_label_a_container_gets_passes_its_own_filter():
    labels = make(service="web")
    for wanted in lbl.list_filters("daemon-a", service="web")["label"]:
        key, value = wanted.split("=", 1)
        assert labels[key] == value
