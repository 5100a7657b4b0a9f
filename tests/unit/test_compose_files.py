"""The Compose files we ship say what they claim: Turnout gets the socket and the host's loopback."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_turnout_compose_mounts_the_socket_and_uses_the_host_network():
    data = yaml.safe_load((ROOT / "compose" / "turnout.yml").read_text())
    service = data["services"]["turnout"]
    assert service["network_mode"] == "host"
    assert "/var/run/docker.sock:/var/run/docker.sock" in service["volumes"]
    assert any(v.startswith("turnout-state:") for v in service["volumes"])
    for mount in service["volumes"]:
        source = mount.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / "compose" / source).exists(), mount


def test_demo_stack_publishes_no_fixed_host_port():
    data = yaml.safe_load((ROOT / "compose" / "demo" / "compose.yml").read_text())
    for port in data["services"]["web"].get("ports", []):
        assert ":" not in str(port), "Turnout chooses host ports itself, on 127.0.0.1"
