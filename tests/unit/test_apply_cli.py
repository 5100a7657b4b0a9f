"""`turnout apply` refuses bad input before it asks the daemon anything: each error names the file and
the key (or says what is wrong with the file) and exits 2, also with --dry-run. The socket these runs are
given does not exist, so an error about anything else would say the daemon cannot be reached."""

from __future__ import annotations

import pytest

from controller.cli import main

SERVICE = '[services.web]\nimage = "app:v1"\nport = 8080\n'


@pytest.mark.parametrize(("text", "key", "problem"), [
    (SERVICE + '[services.web.hooks]\npre_deplyo = { oneoff = ["x"] }\n', "services.web.hooks.pre_deplyo",
     "unknown hook point"),
    (SERVICE + '[services.web.hooks]\nmigrate = { container = ["x"] }\n',
     "services.web.hooks.migrate.container", "unknown key"),
    (SERVICE + '[services.web.hooks]\nmigrate = { oneoff = "/app/migrate up" }\n',
     "services.web.hooks.migrate.oneoff", "must be a non-empty list of strings"),
    ('[services."web app"]\nimage = "app:v1"\nport = 8080\n', "services.web app", "not a valid service name"),
    (SERVICE + "replicas = 0\n", "services.web.replicas", "must be at least 1"),
    ("[services.web\nimage = 1\n", "", "not valid TOML"),
])
@pytest.mark.parametrize("dry_run", [False, True])
def test_bad_input_exits_2_naming_file_and_key(tmp_path, capsys, text, key, problem, dry_run):
    path = tmp_path / "turnout.toml"
    path.write_text(text)
    code = main(["--socket", str(tmp_path / "no.sock"), "apply", "-f", str(path),
                 *(["--dry-run"] if dry_run else [])])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"turnout: {path}: {key + ': ' if key else ''}"), err
    assert problem in err and "cannot reach the Turnout daemon" not in err


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_missing_file_exits_2_naming_it(tmp_path, capsys, dry_run):
    path = tmp_path / "nowhere.toml"
    code = main(["--socket", str(tmp_path / "no.sock"), "apply", "-f", str(path),
                 *(["--dry-run"] if dry_run else [])])
    assert code == 2
    assert capsys.readouterr().err == f"turnout: {path}: config file not found\n"


def test_an_unreachable_daemon_is_an_error_of_the_dry_run_too(tmp_path, capsys):
    path = tmp_path / "turnout.toml"
    path.write_text(SERVICE)
    assert main(["--socket", str(tmp_path / "no.sock"), "apply", "-f", str(path), "--dry-run"]) == 2
    assert "cannot reach the Turnout daemon" in capsys.readouterr().err


def test_wait_and_detach_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["apply", "--wait", "--detach"])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
