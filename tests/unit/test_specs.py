import pytest

from proxy.errors import ValidationError
from proxy.specs import NAME_RE, ServiceSpec, parse_address


def spec(**overrides):
    data = {"name": "web", "pools": [{"name": "blue", "weight": 100, "upstreams": ["127.0.0.1:9001"]}]}
    data.update(overrides)
    return data


def test_valid_spec_round_trips():
    parsed = ServiceSpec.from_dict(spec(hosts=["Web.Localhost"], sticky=True,
                                        health={"path": "/up", "healthy": 1}))
    assert parsed.hosts == ("web.localhost",)
    assert parsed.health.path == "/up" and parsed.health.healthy == 1 and parsed.health.unhealthy == 3
    assert ServiceSpec.from_dict(parsed.to_dict()) == parsed


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"pools": "x"}, "pools"),
        ({"pools": [{"name": "blue", "weight": -1, "upstreams": []}]}, "pools[0].weight"),
        ({"pools": [{"name": "blue", "weight": True, "upstreams": []}]}, "pools[0].weight"),
        ({"pools": [{"name": "b", "weight": 1, "upstreams": ["nohost"]}]}, "pools[0].upstreams[0]"),
        ({"pools": [{"name": "b", "weight": 1, "upstreams": ["h:70000"]}]}, "pools[0].upstreams[0]"),
        ({"pools": [{"name": "b", "weight": 1, "upstreams": ["h:1", "h:1"]}]}, "pools[0].upstreams"),
        ({"pools": [{"name": "b", "weight": 1}, {"name": "b", "weight": 1}]}, "pools[1].name"),
        ({"pools": [{"name": "b", "weight": 1, "colour": "x"}]}, "pools[0].colour"),
        ({"balance": "random"}, "balance"),
        ({"state": "sleeping"}, "state"),
        ({"path_prefix": "api"}, "path_prefix"),
        ({"health": {"interval": 0}}, "health.interval"),
        ({"health": {"healthy": 0}}, "health.healthy"),
        ({"health": {"rise": 2}}, "health.rise"),
        ({"bogus": 1}, "bogus"),
        ({"name": "has space"}, "name"),
        ({"name": "web\n"}, "name"),  # `$` matched before a trailing newline
        ({"pools": [{"name": "v2\n", "weight": 1}]}, "pools[0].name"),
        ({"override": "on"}, "override"),
        ({"override": "header-secret"}, "override_secret"),
        ({"override": "header-secret", "override_secret": "short"}, "override_secret"),
        ({"override": "header-secret", "override_secret": "0123456789abcdef;x"}, "override_secret"),
        ({"override": "header-secret", "override_secret": "0123456789abcdef\n"}, "override_secret"),
        ({"override_secret": "0123456789abcdef"}, "override_secret"),  # the mode is off
        ({"override": "trusted"}, "override_networks"),
        ({"override": "trusted", "override_networks": ["10.0.0.0/33"]}, "override_networks"),
        ({"override": "trusted", "override_networks": "10.0.0.0/8"}, "override_networks"),
        ({"override": "header-secret", "override_secret": "0123456789abcdef",
          "override_networks": ["10.0.0.0/8"]}, "override_networks"),
    ],
)
def test_bad_input_names_the_field(overrides, field):
    with pytest.raises(ValidationError) as info:
        ServiceSpec.from_dict(spec(**overrides))
    assert info.value.field == field


def test_parse_address_handles_ipv6():
    assert parse_address("x", "[::1]:8080") == ("::1", 8080)
    assert parse_address("x", "127.0.0.1:1") == ("127.0.0.1", 1)


def test_names_are_matched_whole():
    assert NAME_RE.fullmatch("v2.1_rc-3") and NAME_RE.fullmatch("a" * 63)
    for bad in ("v2\n", "v2\r\nX-Injected: 1", "a" * 64, "-v2", "", "v2 ", "v 2"):
        assert NAME_RE.fullmatch(bad) is None, bad


def test_override_settings_round_trip_and_default_off():
    assert ServiceSpec.from_dict(spec()).override == "off"
    secret = ServiceSpec.from_dict(spec(override="header-secret", override_secret="0123456789abcdef"))
    trusted = ServiceSpec.from_dict(spec(override="trusted", override_networks=["10.0.0.0/8", "::1"]))
    assert trusted.override_networks == ("10.0.0.0/8", "::1")
    for parsed in (secret, trusted):
        assert ServiceSpec.from_dict(parsed.to_dict()) == parsed
