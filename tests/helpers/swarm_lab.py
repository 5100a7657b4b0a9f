"""The Swarm lab of scripts/swarm-lab.sh as the swarm tests see it: where its manager and nodes are."""

from __future__ import annotations

from pathlib import Path

from helpers.live import CONFIG

LAB = Path(__file__).resolve().parents[2] / "scripts" / "swarm-lab.sh"
MANAGER = "unix:///run/turnout-lab/n1.sock"
NODE_ADDRESSES = ("10.231.0.11", "10.231.0.12")
NODE_NAMESPACES = ("/var/run/netns/turnout-lab-n1", "/var/run/netns/turnout-lab-n2")
BRIDGE_ADDRESS = "10.231.0.1"  # the root namespace (the controller) as the nodes reach it
NODE_PROXY_PORT = 8000  # each node proxy's port in its node's namespace (below Docker's ephemeral range)

# The live tests' config (tests/helpers/live.py) on the lab's Swarm, 4 replicas.
SWARM_CONFIG = f'[engine]\nkind = "swarm"\nhost = "{MANAGER}"\n' + (
    CONFIG.replace("replicas = 2", "replicas = 4").replace('start_timeout = "4s"', 'start_timeout = "15s"'))


def lab_problem() -> str | None:
    """Why the lab is not usable, or None when the manager and both nodes are ready."""
    import docker

    # Checked first: a client failing to connect leaves its socket for the garbage collector (a warning).
    if not Path(MANAGER.removeprefix("unix://")).is_socket():
        return f"no Swarm manager socket at {MANAGER}"
    try:
        client = docker.DockerClient(base_url=MANAGER, timeout=10)
    except Exception as exc:
        return f"no Swarm manager at {MANAGER} ({exc})"
    try:
        ready = [n for n in client.nodes.list() if n.attrs["Status"]["State"] == "ready"]
        if len(ready) < len(NODE_ADDRESSES):
            return f"{len(ready)} of {len(NODE_ADDRESSES)} Swarm nodes ready"
        return None
    except Exception as exc:
        return f"the Swarm manager at {MANAGER} does not answer as one ({exc})"
    finally:
        client.close()




def engine_pid(node: str) -> int:
    """The PID of a lab node's dockerd, from the pidfile scripts/swarm-lab.sh gives it."""
    return int(Path(f"/run/turnout-lab/{node}/dockerd.pid").read_text().strip())
