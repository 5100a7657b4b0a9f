"""[proxy.tls] and [proxy.tls.acme] in turnout.toml: read into TlsConfig, errors naming key and file."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from controller.config.model import ConfigError
from controller.config.reader import load_config
from proxy.tls.listener import failure_reason


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "turnout.toml"
    path.write_text(text)
    return path


def test_tls_section_is_read_with_paths_relative_to_the_file(tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "ca.pem").write_text("x")
    config = load_config(write(tmp_path, """
[proxy]
state_dir = "state"
[proxy.tls]
listen = "127.0.0.1:8443"
certs_dir = "certs"
default = "app.test"
redirect_http = false
hsts = "24h"
min_version = "TLSv1.3"
handshake_timeout = "2s"
max_handshakes_per_client = 8
session_tickets = false
[proxy.tls.acme]
directory = "https://127.0.0.1:14000/dir"
email = "ops@example.com"
ca_bundle = "ca.pem"
hosts = ["App.test"]
retry_min = "1s"
"""))
    tls = config.proxy.tls
    assert tls is not None
    assert (tls.listen, tls.certs_dir, tls.default, tls.redirect_http) == (
        "127.0.0.1:8443", str(tmp_path / "certs"), "app.test", False)
    assert (tls.hsts, tls.min_version, tls.handshake_timeout, tls.max_handshakes_per_client) == (
        86400.0, "TLSv1.3", 2.0, 8)
    assert tls.session_tickets is False
    assert tls.hsts_line == b"Strict-Transport-Security: max-age=86400\r\n"
    assert tls.state_dir == str(tmp_path / "state")
    assert tls.acme is not None and tls.acme.hosts == ("app.test",) and tls.acme.retry_min == 1.0
    assert tls.acme.ca_bundle == str(tmp_path / "ca.pem")


def test_no_tls_section_means_no_https():
    assert load_config(None).proxy.tls is None


@pytest.mark.parametrize(("body", "key", "words"), [
    ('certs_dir = "nope"', "proxy.tls.certs_dir", "does not exist"),
    ('certs_dir = "file.txt"', "proxy.tls.certs_dir", "not a directory"),
    ('listen = "127.0.0.1:8443"', "proxy.tls.certs_dir", "required"),
    ('certs_dir = "certs"\nmin_version = "TLSv1.1"', "proxy.tls.min_version", "TLS 1.0 and 1.1"),
    ('certs_dir = "certs"\ndefault = "not a host"', "proxy.tls.default", "reject"),
    ('certs_dir = "certs"\nhsts = "soon"', "proxy.tls.hsts", ""),
    ('certs_dir = "certs"\nlisten = "nowhere"', "proxy.tls.listen", "host:port"),
    ('certs_dir = "certs"\nlisten = "127.0.0.1:8000"', "proxy.tls.listen", "plain listener"),
    ('certs_dir = "certs"\nport = 1', "proxy.tls.port", "unknown key"),
    ('certs_dir = "certs"\nmax_handshakes_per_client = 0', "proxy.tls.max_handshakes_per_client", "at least"),
    ('[proxy.tls.acme]\ndirectory = "ftp://x"', "proxy.tls.acme.directory", "URL"),
    ('[proxy.tls.acme]\nemail = "nobody"', "proxy.tls.acme.email", "e-mail"),
    ('[proxy.tls.acme]\nhosts = ["*.wild.test"]', "proxy.tls.acme.hosts", "wildcards"),
    ('[proxy.tls.acme]\nca_bundle = "missing.pem"', "proxy.tls.acme.ca_bundle", "readable file"),
    ('[proxy.tls.acme]\nsecret = 1', "proxy.tls.acme.secret", "unknown key"),
])
def test_bad_tls_values_name_key_and_file(tmp_path, body, key, words):
    (tmp_path / "certs").mkdir()
    (tmp_path / "file.txt").write_text("x")
    path = write(tmp_path, f'[proxy]\nlisten = "127.0.0.1:8000"\n[proxy.tls]\n{body}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key and info.value.source == path and words in info.value.problem, info.value


def test_handshake_failure_reasons():
    def error(reason: str) -> ssl.SSLError:
        exc = ssl.SSLError(1, reason)
        exc.reason = reason
        return exc

    assert failure_reason(error("HTTP_REQUEST")) == "plain-http"
    assert failure_reason(error("UNSUPPORTED_PROTOCOL")) == "protocol-version"
    assert failure_reason(error("WRONG_VERSION_NUMBER")) == "malformed"
    assert failure_reason(error("NO_SHARED_CIPHER")) == "no-shared-cipher"
    assert failure_reason(error("SOMETHING_ELSE")) == "tls-error"
    slow = ConnectionAbortedError("SSL handshake is taking longer than 1 seconds")
    assert failure_reason(slow) == "timeout"
    assert failure_reason(ConnectionResetError()) == "client-closed"
