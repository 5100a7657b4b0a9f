"""The example units in contrib/systemd/ fit what `turnout serve` takes: socket names it knows, one
listening socket per name handed to the daemon (Accept=no), and a service that reloads with
`turnout reload` and restarts after a crash."""

from __future__ import annotations

import configparser
from pathlib import Path

from controller.cli import build_parser
from proxy.socket_activation import NAMES

UNITS = Path(__file__).resolve().parents[2] / "contrib" / "systemd"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string((UNITS / name).read_text())
    return parser


def test_each_socket_unit_passes_one_named_listener_to_turnout_service():
    names = []
    for path in sorted(UNITS.glob("*.socket")):
        socket = unit(path.name)["Socket"]
        assert socket["Accept"] == "no" and socket["Service"] == "turnout.service", path.name
        assert socket["ListenStream"], path.name
        names.append(socket["FileDescriptorName"])
    assert sorted(names) == sorted(NAMES)


def test_the_service_reloads_with_turnout_reload_and_restarts_after_a_crash():
    service = unit("turnout.service")["Service"]
    assert service["Restart"] == "always"
    reload_args = service["ExecReload"].split()[1:]
    serve_args = service["ExecStart"].split()[1:]
    assert build_parser().parse_args(reload_args).command == "reload"
    assert build_parser().parse_args(serve_args).command == "serve"
    assert "turnout.socket" in unit("turnout.service")["Unit"]["Requires"]
