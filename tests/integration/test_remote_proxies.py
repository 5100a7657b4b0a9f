"""Remote proxies following the controller, on real sockets: the controller's deployer and routing
listener in this process, two `turnout serve --role proxy` processes on 127.0.0.1, and each "container"
a real test upstream on loopback (named after its version, so an answer says which version served it).

Only the container engine is a stand-in (tests/helpers/fake_docker.py with real upstreams); routing,
acknowledgements, drains and counters all go over the wire. The real engine: tests/docker/
test_remote_proxies_live.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

import controller.operations as operations
from controller.config.model import CanaryOptions
from controller.config.overrides import service_from_flags
from controller.deployer import Deployer
from controller.engine.base import Container, ContainerSpec
from controller.fleet import Fleet
from controller.journal import Journal
from controller.proxy_control import ProxyControl
from controller.routing_api import create_routing_app
from helpers.fake_docker import FakeBackend
from helpers.upstreams import TestUpstream, wait_for
from proxy.router import Router
from proxy.specs import ServiceSpec

TOKEN = "t" * 40
TURNOUT = str(Path(sys.executable).parent / "turnout")


class UpstreamBackend(FakeBackend):
    """The fake engine, but each container is a real TestUpstream: stopping it aborts what it serves."""

    def __init__(self) -> None:
        super().__init__()
        self.servers: dict[str, TestUpstream] = {}

    async def start(self, spec: ContainerSpec) -> Container:
        container = await super().start(spec)
        server = await TestUpstream(spec.version).start()
        container = self.containers[container.id] = replace(container, address=server.address)
        self.servers[container.id] = server
        return container

    async def stop(self, container_id: str, timeout: float = 10) -> Container:
        server = self.servers.pop(container_id, None)
        if server is not None:
            await server.close()
        return await super().stop(container_id, timeout)

    async def remove(self, container_id: str) -> None:
        server = self.servers.pop(container_id, None)
        if server is not None:
            await server.close()
        await super().remove(container_id)

    async def close(self) -> None:
        for server in self.servers.values():
            await server.close()


@dataclass
class Cluster:
    router: Router
    fleet: Fleet
    control: ProxyControl
    deployer: Deployer
    backend: UpstreamBackend
    routing_port: int
    tmp: Path
    routing_runner: web.AppRunner
    routing_site: int  # the routing listener's port
    nodes: dict[str, tuple[subprocess.Popen[bytes], int]] = field(default_factory=dict)

    def start_node(self, proxy_id: str) -> None:
        port = _free_port()
        log = open(self.tmp / f"{proxy_id}.log", "wb")  # the process writes it; closed here once started
        process = subprocess.Popen(
            [TURNOUT, "serve", "--role", "proxy", "--loop", "asyncio", "--listen", f"127.0.0.1:{port}",
             "--controller", f"http://127.0.0.1:{self.routing_port}", "--token", TOKEN, "--id", proxy_id],
            stdout=log, stderr=log, cwd=self.tmp)
        log.close()
        self.nodes[proxy_id] = (process, port)

    def port(self, proxy_id: str) -> int:
        return self.nodes[proxy_id][1]

    def log(self, proxy_id: str) -> str:
        return (self.tmp / f"{proxy_id}.log").read_text()

    def stop_nodes(self) -> None:
        for process, _ in self.nodes.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        for process, _ in self.nodes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nodes: tuple[str, ...] = ("a", "b"),
                  unseen_timeout: float = 1.0) -> AsyncIterator[Cluster]:
    router = Router(drain_timeout=10.0)
    fleet = Fleet(ack_timeout=10.0, unseen_timeout=unseen_timeout)
    control = ProxyControl(router, fleet)
    router.subscribe(lambda table: fleet.published(router.generation))
    backend = UpstreamBackend()
    monkeypatch.setattr(operations, "wait_healthy", backend.wait_healthy)
    journal = Journal(tmp_path / "journal.db")
    deployer = Deployer(backend, control, journal)
    runner = web.AppRunner(create_routing_app(router, fleet, TOKEN, control.drain_timeouts),
                           access_log=None, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    world = Cluster(router, fleet, control, deployer, backend, port, tmp_path, runner, port)
    try:
        for proxy_id in nodes:
            world.start_node(proxy_id)
        await wait_for(lambda: set(fleet.proxies) == set(nodes), timeout=20)
        yield world
    finally:
        world.stop_nodes()
        await deployer.close()
        await runner.cleanup()
        await backend.close()
        journal.close()


def web_config(**canary: object):
    config = service_from_flags("web", "app:v1", port=8080, replicas=2)
    options = CanaryOptions(**{"steps": (30, 60, 100), "step_pause": 0.8, "min_requests": 5, **canary})
    return replace(config, canary=options, verify=0.0)


async def deploy(world: Cluster, image: str, strategy: str, **canary: object) -> str:
    active = world.deployer.deploy(web_config(**canary), image, strategy)
    await asyncio.wait_for(active.task, 60)
    return active.status


@dataclass
class Traffic:
    """Clients sending GET / back to back through one proxy until stopped; every answer kept."""

    port: int
    bodies: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, clients: int = 2) -> None:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(self._client(session) for _ in range(clients)))

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self.stopped.is_set():
            try:
                async with session.get(f"http://127.0.0.1:{self.port}/") as response:
                    body = await response.text()
                    if response.status == 200:
                        self.bodies[body] += 1
                    else:
                        self.failures.append(f"{response.status} {response.headers.get('X-Turnout-Error')}")
            except aiohttp.ClientError as exc:
                self.failures.append(repr(exc))

    @property
    def total(self) -> int:
        return sum(self.bodies.values()) + len(self.failures)


async def test_a_canary_reaches_both_proxies_with_no_failed_request(tmp_path, monkeypatch):
    async with cluster(tmp_path, monkeypatch) as world:
        assert await deploy(world, "app:v1", "canary") == "succeeded"
        await wait_for(lambda: all(p.acked == world.router.generation for p in world.fleet.proxies.values()))
        # Each canary step is judged only once both proxies route by it: at the step's record, how far
        # behind the controller's generation each proxy's acknowledgement was.
        acked_at_steps: list[dict[str, int]] = []
        step = operations.Operations.step

        def recording_step(ops: operations.Operations, name: str, **detail: object) -> None:
            if name == "weight":
                acked_at_steps.append({p.id: p.acked - world.router.generation
                                       for p in world.fleet.proxies.values()})
            step(ops, name, **detail)

        monkeypatch.setattr(operations.Operations, "step", recording_step)
        traffic = [Traffic(world.port("a")), Traffic(world.port("b"))]
        senders = [asyncio.ensure_future(t.run()) for t in traffic]
        await wait_for(lambda: all(t.bodies["v1"] > 20 for t in traffic))
        active = world.deployer.deploy(web_config(), "app:v2", "canary")
        await asyncio.wait_for(active.task, 60)
        for t in traffic:
            t.stopped.set()
        await asyncio.gather(*senders)
        assert active.status == "succeeded", active.message
        assert acked_at_steps == [{"a": 0, "b": 0}] * 2  # at 30 and 60: both had applied the step
        for t in traffic:  # each proxy sent requests to both versions during the steps, and lost none
            assert t.failures == []
            assert t.bodies["v1"] > 0 and t.bodies["v2"] > 0, t.bodies
        # After the switch both proxies send everything to v2.
        for proxy_id in ("a", "b"):
            async with aiohttp.ClientSession() as session, \
                    session.get(f"http://127.0.0.1:{world.port(proxy_id)}/") as response:
                assert await response.text() == "v2"
        # The controller's counters are the proxies' (this process proxied nothing itself).
        sent = sum(t.total for t in traffic) + 2

        def counted() -> int:
            return sum(c.requests for c in world.control.counters("web").values())

        await wait_for(lambda: counted() == sent, timeout=10)


async def test_the_drain_waits_for_a_request_in_flight_on_a_remote_proxy(tmp_path, monkeypatch):
    async with cluster(tmp_path, monkeypatch) as world:
        assert await deploy(world, "app:v1", "bluegreen") == "succeeded"
        v1 = [c.address for c in world.backend.running("v1")]
        await wait_for(lambda: all(p.acked == world.router.generation for p in world.fleet.proxies.values()))
        async with aiohttp.ClientSession() as session:
            slow = asyncio.ensure_future(session.get(f"http://127.0.0.1:{world.port('b')}/slow?s=2"))
            await wait_for(lambda: world.control.in_flight(v1) == 1, timeout=5)  # b reported it
            active = world.deployer.deploy(web_config(), "app:v2", "bluegreen")
            await asyncio.wait_for(active.task, 60)
            response = await slow
            assert response.status == 200 and await response.text() == "v1"  # it finished on v1
            response.release()
        assert active.status == "succeeded", active.message
        drained = [s for s in world.deployer.journal.steps(active.id) if s.name == "drained"]
        assert drained
        # blue-green stops the old set after its success, in the background (bluegreen.stop_old)
        await wait_for(lambda: world.backend.running("v1") == [], timeout=10)


async def test_a_proxy_killed_mid_deploy_is_dropped_and_the_deploy_goes_on(tmp_path, monkeypatch):
    async with cluster(tmp_path, monkeypatch) as world:
        assert await deploy(world, "app:v1", "canary") == "succeeded"
        traffic = Traffic(world.port("a"))
        sender = asyncio.ensure_future(traffic.run())
        await wait_for(lambda: traffic.bodies["v1"] > 20)
        active = world.deployer.deploy(web_config(step_pause=None), "app:v2", "canary")  # manual steps

        def at_step() -> bool:
            return any(s.name == "weight" for s in world.deployer.journal.steps(active.id))

        await wait_for(at_step, timeout=20)
        process, _ = world.nodes["b"]
        os.kill(process.pid, signal.SIGKILL)  # the node dies: no goodbye, its connections reset
        process.wait()
        active.signals.promote()
        await asyncio.wait_for(active.task, 60)
        traffic.stopped.set()
        await sender
        assert active.status == "succeeded", active.message
        assert set(world.fleet.proxies) == {"a"}  # b left the set (logged proxy.dropped)
        assert traffic.failures == []
        assert traffic.bodies["v2"] > 0


async def test_the_routing_listener_reads_only_and_only_with_its_token(tmp_path, monkeypatch):
    async with cluster(tmp_path, monkeypatch, nodes=()) as world:
        base = f"http://127.0.0.1:{world.routing_port}"
        good = {"Authorization": f"Bearer {TOKEN}", "X-Turnout-Client": "test"}
        body = {"id": "probe", "applied": -1}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/v1/routing", json=body) as response:
                assert response.status == 401
            async with session.post(f"{base}/v1/routing", json=body,
                                    headers={**good, "Origin": "http://evil.example"}) as response:
                assert response.status == 403
            for method, path in (("POST", "/v1/deploy"), ("PATCH", "/v1/services/web/weights"),
                                 ("GET", "/v1/table"), ("POST", "/v1/deployments/web/abort")):
                async with session.request(method, f"{base}{path}", json={}, headers=good) as response:
                    assert response.status in (404, 405), (method, path)
            async with session.post(f"{base}/v1/routing", json={"id": 5}, headers=good) as response:
                assert response.status == 400 and (await response.json())["field"] == "id"
            async with session.post(f"{base}/v1/routing", json=body, headers=good) as response:
                assert response.status == 200 and (await response.json())["generation"] == 0


async def test_a_proxy_with_a_wrong_token_exits_2_saying_why(tmp_path, monkeypatch):
    async with cluster(tmp_path, monkeypatch, nodes=()) as world:
        done = await asyncio.create_subprocess_exec(
            TURNOUT, "serve", "--role", "proxy", "--listen", "127.0.0.1:0", "--loop", "asyncio",
            "--controller", f"http://127.0.0.1:{world.routing_port}", "--token", "w" * 40,
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=tmp_path)
        _, stderr = await asyncio.wait_for(done.communicate(), 30)
        assert done.returncode == 2
        assert b"refused this proxy (HTTP 401): missing or wrong bearer token" in stderr


async def test_nodes_shows_each_proxy_with_its_acknowledged_generation(tmp_path, monkeypatch, capsys):
    from controller.cli import print_nodes
    from controller.routing_api import add_fleet_routes
    from proxy.admin import create_admin_app

    async with cluster(tmp_path, monkeypatch) as world:
        assert await deploy(world, "app:v1", "bluegreen") == "succeeded"
        await wait_for(lambda: all(p.acked == world.router.generation for p in world.fleet.proxies.values()))
        world.fleet.listen = f"127.0.0.1:{world.routing_port}"
        app = create_admin_app(world.router)
        add_fleet_routes(app, world.fleet)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.UnixSite(runner, str(tmp_path / "admin.sock")).start()
        try:
            async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(str(tmp_path / "admin.sock"))
                                             ) as session, session.get("http://turnout/v1/proxies") as got:
                data = await got.json()
        finally:
            await runner.cleanup()
        print_nodes(data)
        out = capsys.readouterr().out.splitlines()
        lines = out[next(i for i, line in enumerate(out) if line.startswith("proxies following")):]
        assert lines[0] == f"proxies following 127.0.0.1:{world.routing_port}: 2"
        for proxy_id, line in zip(("a", "b"), lines[2:], strict=True):
            fields = line.split()
            assert fields[0] == proxy_id and fields[1] == f"127.0.0.1:{world.port(proxy_id)}"
            assert int(fields[-2]) == world.router.generation and fields[-1] == "0"


async def test_a_proxy_following_a_restarted_controller_takes_its_table_at_once(tmp_path, monkeypatch):
    """Generations restart with the controller: a proxy that applied generation N of the previous run
    must get the new run's table at once (not when the new run passes N), and count as having applied
    nothing of it until then."""
    async with cluster(tmp_path, monkeypatch, nodes=("a",)) as world:
        assert await deploy(world, "app:v1", "canary") == "succeeded"
        for weight in range(5):  # the proxy applies a few generations of this run
            world.router.set_weights("web", {"v1": 100 + weight})
        await wait_for(lambda: world.fleet.proxies["a"].acked == world.router.generation)
        assert world.router.generation > 3
        # The controller restarts on the same port: a new router (generation 1) and a new fleet.
        server = world.routing_site
        await world.routing_runner.cleanup()
        fresh = await TestUpstream("fresh").start()
        router = Router()
        fleet = Fleet()
        router.subscribe(lambda table: fleet.published(router.generation))
        router.set_service(ServiceSpec.from_dict(
            {"name": "web", "pools": [{"name": "v9", "weight": 1, "upstreams": [fresh.address]}]}))
        runner = web.AppRunner(create_routing_app(router, fleet, TOKEN, {}), access_log=None,
                               handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", server).start()
        try:
            await wait_for(lambda: "a" in fleet.proxies and fleet.proxies["a"].acked == router.generation,
                           timeout=15)
            async with aiohttp.ClientSession() as session, \
                    session.get(f"http://127.0.0.1:{world.port('a')}/") as response:
                assert await response.text() == "fresh"
        finally:
            await runner.cleanup()
            await fresh.close()


async def test_a_proxy_that_pulls_but_never_applies_fails_the_deploy_naming_it(tmp_path, monkeypatch):
    """A live proxy that does not acknowledge (here a client that keeps pulling and reports the first
    generation it saw) fails the step after ack_timeout with an error naming it; the old version serves."""
    async with cluster(tmp_path, monkeypatch, nodes=("a",)) as world:
        assert await deploy(world, "app:v1", "canary") == "succeeded"
        world.fleet.ack_timeout = 1.0
        stuck_at = world.router.generation
        stop = asyncio.Event()

        async def stuck() -> None:
            headers = {"Authorization": f"Bearer {TOKEN}", "X-Turnout-Client": "test"}
            async with aiohttp.ClientSession(headers=headers) as session:
                while not stop.is_set():
                    async with session.post(
                            f"http://127.0.0.1:{world.routing_port}/v1/routing",
                            params={"after": str(stuck_at), "wait": "0.2"},
                            json={"id": "stuck", "address": "10.9.9.9:80", "applied": stuck_at,
                                  "epoch": world.fleet.epoch}) as response:
                        assert response.status == 200

        puller = asyncio.ensure_future(stuck())
        await wait_for(lambda: "stuck" in world.fleet.proxies)
        try:
            active = world.deployer.deploy(web_config(), "app:v2", "canary")
            await asyncio.wait_for(active.task, 60)
        finally:
            stop.set()
            await puller
        assert active.status == "failed"
        assert f"proxy stuck (10.9.9.9:80) acknowledged generation {stuck_at}, not" in active.message
        # The old version was put back, the new one's containers removed: the lagging proxy did not
        # stop that (it is named in the deploy's notes).
        assert [c.version for c in world.backend.running()] == ["v1", "v1"]
        steps = [s.name for s in world.deployer.journal.steps(active.id)]
        assert "restored" in steps and "restore_failed" not in steps
        record = world.deployer.journal.history("web", limit=1)[0]
        assert any("proxy stuck" in note for note in record.options["result"]["notes"]), record.options
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://127.0.0.1:{world.port('a')}/") as response:
            assert await response.text() == "v1"


async def test_an_upstream_the_remote_proxies_find_unhealthy_counts_as_ejected(tmp_path, monkeypatch):
    """Each proxy probes health itself; what it ejects reaches the controller's verification (this
    process runs no health checks of its own here)."""
    async with cluster(tmp_path, monkeypatch) as world:
        config = replace(web_config(), health=replace(web_config().health, interval=0.1, unhealthy=2))
        active = world.deployer.deploy(config, "app:v1", "bluegreen")
        await asyncio.wait_for(active.task, 60)
        assert active.status == "succeeded"
        container = world.backend.running("v1")[0]
        await world.backend.servers[container.id].close()  # it stops answering its probes
        assert world.control.ejected([container.address]) == []
        await wait_for(lambda: world.control.ejected([container.address]) == [container.address], timeout=10)
        await wait_for(lambda: all(container.address in p.unhealthy for p in world.fleet.proxies.values()),
                       timeout=10)  # each proxy found it itself
