"""`turnout rehearse` arguments: the in-flight bound of the open loop, validated and passed on."""

import resource
import subprocess
import sys

import pytest

from controller import cli
from controller.errors import UsageError
from controller.rehearsal import loadgen
from controller.rehearsal.rehearse import DEFAULT_MAX_IN_FLIGHT


def plan(*extra: str):
    return cli.rehearsal_plan(cli.build_parser().parse_args(["rehearse", "web", "--image", "app:v2", *extra]))


def test_max_in_flight_reaches_the_load_generator():
    made = plan("--rate", "1000", "--max-in-flight", "4096", "--strategy", "bigbang")
    assert made.max_in_flight == 4096
    load = made.load_config("http://127.0.0.1:8000")
    assert (load.rate, load.max_in_flight, load.connection_limit) == (1000.0, 4096, 4096)
    assert load.describe()["max_in_flight"] == 4096  # the report says which bound was used


def test_default_bound_leaves_room_for_a_hold():
    made = plan("--rate", "1000")
    assert made.max_in_flight == DEFAULT_MAX_IN_FLIGHT > loadgen.DEFAULT_MAX_IN_FLIGHT
    assert made.load_config("http://x").max_in_flight == DEFAULT_MAX_IN_FLIGHT
    closed = plan("--concurrency", "4").load_config("http://x")  # closed loop: the clients are the bound
    assert closed.concurrency == 4 and closed.connection_limit == 4
    assert "max_in_flight" not in closed.describe()


@pytest.mark.parametrize("bad", ["0", "-3", "65537", "many", "2.5"])
def test_bad_max_in_flight_is_a_usage_error_naming_the_option(bad, capsys):
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["rehearse", "web", "--image", "a:b", "--rate", "10",
                                       "--max-in-flight", bad])
    assert info.value.code == 2
    assert "--max-in-flight" in capsys.readouterr().err


def test_max_in_flight_needs_the_open_loop():
    with pytest.raises(UsageError, match=r"--max-in-flight.*--rate"):
        plan("--concurrency", "4", "--max-in-flight", "100")


def test_a_bound_the_open_files_limit_cannot_fit_is_refused(monkeypatch):
    monkeypatch.setattr(loadgen, "ensure_open_files", lambda n: 1024)
    with pytest.raises(UsageError, match=r"--max-in-flight 8000: needs 8064 open files.*only 1024"):
        plan("--rate", "1000", "--max-in-flight", "8000")


def test_the_default_bound_shrinks_to_what_the_open_files_limit_fits(monkeypatch):
    monkeypatch.setattr(loadgen, "ensure_open_files", lambda n: 1024)
    assert plan("--rate", "1000").max_in_flight == 1024 - loadgen.OPEN_FILES_MARGIN


def test_help_explains_the_bound(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["rehearse", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-in-flight N" in text and "not sent" in text and f"[{DEFAULT_MAX_IN_FLIGHT}]" in text


def test_ensure_open_files_lifts_a_low_soft_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 3000:
        pytest.fail(f"this machine's hard open-files limit ({hard}) is too low for rehearsals")
    code = "from controller.rehearsal.loadgen import ensure_open_files; print(ensure_open_files(2500))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
    ).stdout
    assert int(out) >= 2500 + loadgen.OPEN_FILES_MARGIN


def test_rehearse_over_https_takes_cacert_and_connect_to(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    made = plan("--url", "https://app.test:8443/", "--cacert", str(ca), "--connect-to", "127.0.0.1:8443")
    config = made.load_config(made.url)
    assert (config.cacert, config.connect_to) == (str(ca), "127.0.0.1:8443")


@pytest.mark.parametrize(("extra", "words"), [
    (["--url", "https://a:1/", "--cacert", "/nonexistent.pem"], "--cacert"),
    (["--url", "https://a:1/", "--connect-to", "nowhere"], "--connect-to"),
    (["--connect-to", "127.0.0.1:1"], "need --url"),
])
def test_rehearse_https_options_are_checked(extra, words):
    with pytest.raises(UsageError, match=words):
        plan(*extra)
