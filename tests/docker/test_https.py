"""`turnout serve` with [proxy.tls] on the real engine: zero loss over HTTPS for the four strategies, and
the certificate commands (`turnout certs`, `certs reload`, SIGHUP, `status` warnings)."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import time

import pytest

from helpers.certs import CertAuthority, other_key_pem, serial_of
from helpers.daemon import Daemon, free_port
from helpers.live import CONFIG, owner_containers, wait_for_version

pytestmark = pytest.mark.docker


@pytest.fixture
def https_daemon(tmp_path, docker_client, test_run_labels):
    """`turnout serve` serving turnout-testapp:v1 on 2 replicas, on HTTP and on HTTPS (web.test)."""
    ca = CertAuthority.create(tmp_path / "ca")
    certs = tmp_path / "certs"
    ca.write(certs, "web", ["web.test"])
    ca.write(certs, "soon", ["soon.test"], days=5)
    port = free_port()
    config = CONFIG + f'\n[proxy.tls]\nlisten = "127.0.0.1:{port}"\ncerts_dir = "{certs}"\n'
    serve = Daemon(tmp_path, test_run_labels, config)
    serve.start()
    wait_for_version(serve, "v1")
    serve.tls_port = port  # type: ignore[attr-defined]
    serve.ca = ca  # type: ignore[attr-defined]
    serve.certs = certs  # type: ignore[attr-defined]
    yield serve
    serve.stop()
    owner_containers(docker_client, serve, remove=True)


async def test_zero_loss_over_https_for_every_strategy(https_daemon):
    port = https_daemon.tls_port
    code, out = await https_daemon.acli(
        "rehearse", "web", "--image", "turnout-testapp:v2", "--all-strategies", "--rate", "200",
        "--duration", "5s", "--new-connections", "0.1", "--url", f"https://web.test:{port}/",
        "--cacert", str(https_daemon.ca.path), "--connect-to", f"127.0.0.1:{port}", "--json",
        "--html", str(https_daemon.workdir / "r.html"))
    log = https_daemon.log_path.read_text()
    refused = [line for line in log.splitlines() if "tls.handshake_failed" in line]
    assert code == 0, (out, refused)
    reports = json.loads(out)
    assert [r["deploy"]["strategy"] for r in reports] == ["bigbang", "bluegreen", "rolling", "canary"]
    for report in reports:
        summary = report["load"]["summary"]
        assert summary["sent"] >= 900, (report["deploy"]["strategy"], summary)
        assert summary["failed_by_proxy"] == 0 and summary["truncated"] == 0, (report["deploy"], summary)
        assert summary["misrouted"] == 0 and summary["not_sent"] == 0, summary
        assert report["deploy"]["status"] == "succeeded", report["deploy"]
        assert report["load"]["config"]["url"].startswith("https://web.test:")


def served_serial(port: int, ca: CertAuthority, host: str = "web.test") -> int:
    import socket

    context = ssl.create_default_context(cafile=str(ca.path))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        return serial_of(tls.getpeercert(binary_form=True))


def certs_json(serve: Daemon) -> tuple[int, dict]:
    result = serve.cli("certs", "--json")
    return result.returncode, json.loads(result.stdout)


async def test_certs_list_reload_sighup_and_status_warning(https_daemon):
    serve, port, ca, certs = https_daemon, https_daemon.tls_port, https_daemon.ca, https_daemon.certs
    code, listed = certs_json(serve)
    assert code == 0 and listed["errors"] == []
    by_name = {c["name"]: c for c in listed["certificates"]}
    assert by_name["web"]["hosts"] == ["web.test"] and by_name["web"]["source"] == "static"
    assert by_name["soon"]["days_left"] < 5.1 and by_name["web"]["issuer"] == "Turnout Test CA"
    status = serve.cli("status")
    assert status.returncode == 0
    assert "warning: certificate soon (soon.test) expires in 5.0 days" in status.stdout
    text = serve.cli("certs")
    assert text.returncode == 0 and "web.test" in text.stdout and "static" in text.stdout

    before = served_serial(port, ca)
    crt = ca.write(certs, "web", ["web.test"])  # a renewed certificate: served once `certs reload` returns
    reloaded = serve.cli("certs", "reload", "--json")  # ("changed" is false when the 2 s pass came first)
    assert reloaded.returncode == 0 and "changed" in json.loads(reloaded.stdout)
    after = served_serial(port, ca)
    assert after != before and after == serial_of_pem(crt.read_bytes())

    assert serve.log_path.read_text().count("tls.reloaded") == 1
    (certs / "bad.crt").write_bytes(ca.leaf(["bad.test"])[0])  # its key is another's: refused
    (certs / "bad.key").write_bytes(other_key_pem())
    serve.process.send_signal(signal.SIGHUP)  # re-read now (logged as tls.reloaded, unlike the 2 s pass)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and serve.log_path.read_text().count("tls.reloaded") < 2:
        await asyncio.sleep(0.05)
    code, listed = certs_json(serve)
    assert code == 1, listed  # `turnout certs` exits 1 while a file is refused
    (error,) = listed["errors"]
    assert error["file"] == str(certs / "bad.key") and "does not match" in error["error"]
    assert served_serial(port, ca) == after  # nothing else changed
    assert "tls.cert_refused" in serve.log_path.read_text()


def serial_of_pem(pem: bytes) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificates(pem)[0].serial_number
