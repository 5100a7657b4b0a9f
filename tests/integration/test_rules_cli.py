"""`turnout rules list|set|clear` against the controller's admin API over a real unix socket: the rules land
in the router and in the service's config, bad ones are refused naming the flag or the key."""

from __future__ import annotations

import asyncio
import json

from test_deploy_api import controller_api

from controller import cli
from proxy.specs import PoolSpec


async def turnout(socket, *argv: str) -> int:
    """The CLI, as a user runs it (its own event loop, in a thread beside the test's server)."""
    return await asyncio.to_thread(cli.main, ["--socket", str(socket), *argv])


async def test_rules_set_list_and_clear_through_the_cli(tmp_path, capsys):
    async with controller_api(tmp_path) as (_, deployer):
        socket = tmp_path / "admin.sock"
        config = deployer.configs["web"]
        deployer.proxy.install(config, [PoolSpec("v1", 100, ("127.0.0.1:9001",)),
                                        PoolSpec("v2", 0, ("127.0.0.1:9002",))],
                               labels={"stable": "v1", "canary": "v2"})
        assert await turnout(socket, "rules", "set", "web", "--rule", "insiders", "header:X-Canary=always",
                             "canary", "--rule", "beta", "hash:cookie:account_id=10", "v9") == 0
        assert [r.name for r in deployer.proxy.router.specs["web"].rules] == ["insiders", "beta"]
        assert deployer.configs["web"].rules == deployer.proxy.router.specs["web"].rules
        capsys.readouterr()
        assert await turnout(socket, "rules", "list", "web") == 0
        listed = capsys.readouterr().out
        assert "1. insiders" in listed and "header:X-Canary=always" in listed and "-> canary (v2)" in listed
        assert "2. beta" in listed and "hash:cookie:account_id=10%" in listed and "falls through" in listed
        assert await turnout(socket, "rules", "list", "web", "--json") == 0
        assert [r["pool"] for r in json.loads(capsys.readouterr().out)["rules"]] == ["v2", None]

        rules_file = tmp_path / "rules.toml"
        rules_file.write_text('[[rules]]\nname = "q"\nmatch = { query = { beta = "1" } }\nto = "stable"\n')
        assert await turnout(socket, "rules", "set", "web", "--file", str(rules_file)) == 0
        assert [r.name for r in deployer.proxy.router.specs["web"].rules] == ["q"]

        bad_file = tmp_path / "bad.toml"
        bad_file.write_text('[[rules]]\nname = "q"\nmatch = { header = { X = "regex:[" } }\nto = "stable"\n')
        assert await turnout(socket, "rules", "set", "web", "--file", str(bad_file)) == 2
        assert f"{bad_file}: rules[0].match.header.X: bad regex" in capsys.readouterr().err
        assert await turnout(socket, "rules", "set", "web", "--rule", "x", "header:X=regex:(", "canary") == 2
        assert "--rule x: match.header.X: bad regex" in capsys.readouterr().err
        assert await turnout(socket, "rules", "set", "nope", "--rule", "x", "header:X=1", "canary") == 2
        assert [r.name for r in deployer.proxy.router.specs["web"].rules] == ["q"]  # nothing changed

        assert await turnout(socket, "rules", "clear", "web") == 0
        assert deployer.proxy.router.specs["web"].rules == () == deployer.configs["web"].rules
