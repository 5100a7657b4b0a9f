"""`--help` works for `turnout` and every one of its commands (argparse %-formats help strings, so a
stray '%' in one breaks the whole listing)."""

import argparse

import pytest

from controller.cli import build_parser


def commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def test_the_commands_are_all_there():
    assert {"serve", "deploy", "status", "history", "rollback", "promote", "abort", "pause", "resume",
            "rehearse"} <= set(commands())


@pytest.mark.parametrize("argv", [[], *([name] for name in commands())],
                         ids=lambda argv: " ".join(argv) or "turnout")
def test_help_prints_and_exits_0(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*argv, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and len(out.splitlines()) > 3, out
    assert "%%" not in out, out  # texts argparse does not %-format (descriptions) print as written


def test_reload_help_says_what_changes_live_what_needs_a_restart_and_the_exits(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reload", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for said in ("without a restart", "changes nothing", "names the key and the file", "needs a restart",
                 "listen addresses", "`turnout apply`", "SIGHUP", "Exits 0"):
        assert said in out, (said, out)
