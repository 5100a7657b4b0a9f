"""`turnout serve --role proxy`: its flags are checked before anything starts, each error naming the
flag (exit 2), and its help says what the role is."""

from __future__ import annotations

import pytest

from controller.cli import build_parser, main

TOKEN = "t" * 40


@pytest.mark.parametrize(("args", "says"), [
    (["--role", "proxy"], "--controller: required with --role proxy"),
    (["--role", "proxy", "--controller", "10.0.0.1:8002", "--token", TOKEN], "--controller: expected http://"),
    (["--role", "proxy", "--controller", "http://10.0.0.1:8002"], "--token: required with --role proxy"),
    (["--role", "proxy", "--controller", "http://10.0.0.1:8002", "--token", "short"],
     "--token: must be at least 32 characters"),
    (["--role", "proxy", "--controller", "http://h:1", "--token", TOKEN, "--advertise", "nohost"],
     "--advertise"),
    (["--role", "proxy", "--controller", "http://h:1", "--token", TOKEN, "--watch"],
     "--watch: not with --role proxy"),
    (["--role", "proxy", "--controller", "http://h:1", "--token", TOKEN, "--takeover"],
     "--takeover: not with --role proxy"),
    (["--controller", "http://10.0.0.1:8002"], "--controller: only with --role proxy"),
    (["--token", TOKEN], "--token: only with --role proxy"),
])
def test_bad_role_flags_exit_2_naming_the_flag(tmp_path, capsys, args, says):
    assert main(["--state-dir", str(tmp_path), "serve", *args]) == 2
    assert says in capsys.readouterr().err


def test_a_token_file_open_to_others_is_refused(tmp_path, capsys):
    token = tmp_path / "routing.token"
    token.write_text(TOKEN)
    token.chmod(0o644)
    code = main(["serve", "--role", "proxy", "--controller", "http://h:1", "--token-file", str(token)])
    assert code == 2
    assert "chmod 600" in capsys.readouterr().err


def test_the_help_says_what_the_proxy_role_is():
    text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    for words in ("--role {all,proxy}", "--controller URL", "--token-file", "routing_listen",
                  "turnout nodes"):
        assert words in text
