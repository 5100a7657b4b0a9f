"""The access log switch in config, and its small pure parts (no sockets)."""

from __future__ import annotations

import textwrap

import pytest

from controller.config.model import ConfigError
from controller.config.reader import load_config, parse_config
from proxy.__main__ import main
from proxy.access_log import FIELDS, format_time
from proxy.config import ProxyConfig


def test_the_access_log_is_on_by_default_for_the_daemon():
    assert ProxyConfig().access_log is True
    assert parse_config({}).proxy.access_log is True


@pytest.mark.parametrize("value", [True, False])
def test_turnout_toml_proxy_table_switches_the_access_log(tmp_path, value):
    path = tmp_path / "turnout.toml"
    path.write_text(textwrap.dedent(f"""
        [proxy]
        listen = "127.0.0.1:8000"
        access_log = {str(value).lower()}
    """))
    assert load_config(path).proxy.access_log is value


def test_a_non_boolean_access_log_is_an_error_naming_the_key(tmp_path):
    path = tmp_path / "turnout.toml"
    path.write_text('[proxy]\naccess_log = "yes"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "access_log" in str(err.value)


def test_standalone_proxy_help_documents_the_switch_default_off(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--access-log, --no-access-log" in out and "default: off" in out


def test_fields_are_fixed_and_ordered():
    assert FIELDS == ("time", "client", "method", "path", "host", "status", "bytes_sent", "duration_ms",
                      "service", "pool", "upstream", "request_id", "error")


def test_format_time_is_utc_iso_with_milliseconds():
    assert format_time(0.25) == "1970-01-01T00:00:00.250Z"
    assert format_time(86400 + 3661.75) == "1970-01-02T01:01:01.750Z"
    assert format_time(86400 + 3661.5) == "1970-01-02T01:01:01.500Z"  # the cached second is reused
    assert format_time(86400 + 3662.0) == "1970-01-02T01:01:02.000Z"
