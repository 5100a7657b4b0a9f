"""`[dashboard]` in turnout.toml and `turnout serve --dashboard`: read by one reader, errors naming the
key and the file (or the flag)."""

from __future__ import annotations

import pytest

from controller.cli import _dashboard_flag
from controller.config.model import ConfigError, DashboardConfig
from controller.config.reader import load_config, parse_config

TOKEN = "k" * 32


def test_absent_section_means_no_dashboard(tmp_path):
    path = tmp_path / "turnout.toml"
    path.write_text("[proxy]\n")
    assert load_config(path).dashboard is None


@pytest.mark.parametrize(("section", "expected"), [
    ('listen = "127.0.0.1:8081"', DashboardConfig("127.0.0.1:8081")),
    ('listen = "127.0.0.1:8081"\ntoken = ""', DashboardConfig("127.0.0.1:8081")),
    ('listen = "[::1]:0"', DashboardConfig("[::1]:0")),
    ('listen = "localhost:8081"', DashboardConfig("localhost:8081")),
    (f'listen = "0.0.0.0:8081"\ntoken = "{TOKEN}"', DashboardConfig("0.0.0.0:8081", TOKEN)),
    (f'listen = "127.0.0.1:8081"\ntoken = "{TOKEN}"\nallow_actions = true',
     DashboardConfig("127.0.0.1:8081", TOKEN, allow_actions=True)),
])
def test_good_sections(tmp_path, section, expected):
    path = tmp_path / "turnout.toml"
    path.write_text(f"[dashboard]\n{section}\n")
    assert load_config(path).dashboard == expected


@pytest.mark.parametrize(("section", "key", "problem"), [
    ("", "dashboard.listen", "required"),
    ('listen = "nowhere"', "dashboard.listen", "host:port"),
    ('listen = "127.0.0.1:99999"', "dashboard.listen", "host:port"),
    ('listen = 8081', "dashboard.listen", "string"),
    ('listen = "127.0.0.1:8081"\nlisten_on = "x"', "dashboard.listen_on", "unknown key"),
    ('listen = "0.0.0.0:8081"', "dashboard.token", "required when the dashboard listens beyond loopback"),
    ('listen = "192.168.1.5:8081"\ntoken = ""', "dashboard.token", "required"),
    ('listen = "127.0.0.1:8081"\ntoken = "short"', "dashboard.token", "at least 32"),
    (f'listen = "127.0.0.1:8081"\ntoken = "{"x" * 31} "', "dashboard.token", "at least 32"),
    ('listen = "127.0.0.1:8081"\ntoken = 5', "dashboard.token", "string"),
    ('listen = "127.0.0.1:8081"\nallow_actions = "yes"', "dashboard.allow_actions", "true or false"),
    ('listen = "127.0.0.1:8081"\nallow_actions = true', "dashboard.allow_actions", "needs dashboard.token"),
])
def test_bad_sections_name_the_key_and_the_file(tmp_path, section, key, problem):
    path = tmp_path / "turnout.toml"
    path.write_text(f"[dashboard]\n{section}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key, str(info.value)
    assert problem in info.value.problem, str(info.value)
    assert str(info.value).startswith(f"{path}: {key}: ")


def test_serve_flag_enables_it_and_keeps_the_files_token():
    assert _dashboard_flag("127.0.0.1:9", parse_config({})) == DashboardConfig("127.0.0.1:9")
    config = parse_config({"dashboard": {"listen": "127.0.0.1:8081", "token": TOKEN, "allow_actions": True}})
    assert _dashboard_flag("0.0.0.0:9", config) == DashboardConfig("0.0.0.0:9", TOKEN, allow_actions=True)


def test_serve_flag_errors_name_the_flag():
    with pytest.raises(ConfigError) as info:
        _dashboard_flag("0.0.0.0:9", parse_config({}))
    assert str(info.value).startswith("command-line options: dashboard.token: required")
    with pytest.raises(ConfigError) as info:
        _dashboard_flag("nowhere", parse_config({}))
    assert str(info.value).startswith("command-line options: --dashboard: ")
