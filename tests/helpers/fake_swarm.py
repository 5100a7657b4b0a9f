"""A fake `docker.DockerClient` talking to a Swarm manager, for unit tests of controller/engine/swarm.py:
no engine, no sockets. It keeps services and their tasks in dicts; the test moves tasks along
(`run`, `fail`, `reject`) as the Swarm agents would, and sees every call made (`calls`)."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import docker.errors

NODES = {"node-a": "10.0.0.11", "node-b": "10.0.0.12"}


class FakeService:
    def __init__(self, swarm: FakeSwarm, service_id: str) -> None:
        self.swarm = swarm
        self.id = service_id
        self.attrs = copy.deepcopy(swarm.specs[service_id])  # as read, like the SDK's objects

    def reload(self) -> None:
        self.swarm.calls.append(("reload", self.id))
        self.attrs = copy.deepcopy(self.swarm.specs[self.id])

    def tasks(self, filters: Any = None) -> list[dict[str, Any]]:
        if self.id not in self.swarm.specs:
            raise docker.errors.NotFound(f"service {self.id} not found")
        if self.swarm.lagging.get(self.id):  # the orchestrator adds the scaled-up task a little later
            self.swarm.lagging[self.id] -= 1
            if not self.swarm.lagging[self.id]:
                self.swarm.new_task(self.id)
        return copy.deepcopy(self.swarm.tasks.get(self.id, []))

    def scale(self, replicas: int) -> bool:
        self.swarm.calls.append(("scale", self.id, replicas))
        self.swarm.specs[self.id]["Spec"]["Mode"]["Replicated"]["Replicas"] = replicas
        tasks = self.swarm.tasks.setdefault(self.id, [])
        if replicas == 0 and self.swarm.reap_at_once:  # the task ended and the reaper deleted it
            tasks.clear()
        elif replicas == 0:
            for task in tasks:
                if task["NodeID"] in self.swarm.lost:  # no agent to stop it: it still reads "running"
                    task["DesiredState"] = "shutdown"
                elif task["Status"]["State"] == "running":  # the agent stops it: SIGTERM, exit 0
                    task["DesiredState"] = "shutdown"
                    task["Status"] = {"State": "shutdown",
                                      "ContainerStatus": {"ExitCode": self.swarm.stop_exit}}
        elif self.swarm.orchestrator_lag:
            self.swarm.lagging[self.id] = self.swarm.orchestrator_lag
        else:
            self.swarm.new_task(self.id)
        return True

    def update(self, **kwargs: Any) -> None:
        self.swarm.calls.append(("update", self.id, kwargs))

    def remove(self) -> bool:
        self.swarm.calls.append(("remove", self.id))
        if self.id not in self.swarm.specs:
            raise docker.errors.NotFound(f"service {self.id} not found")
        del self.swarm.specs[self.id]
        self.swarm.tasks.pop(self.id, None)
        return True

    def logs(self, **kwargs: Any) -> Any:
        self.swarm.calls.append(("logs", self.id, kwargs))
        return iter([line.encode() + b"\n" for line in self.swarm.logs.get(self.id, [])])


class FakeServices:
    def __init__(self, swarm: FakeSwarm) -> None:
        self.swarm = swarm

    def create(self, image: str, **kwargs: Any) -> FakeService:
        self.swarm.calls.append(("create", image, kwargs))
        service_id = f"svc{next(self.swarm.ids):022d}"
        self.swarm.created[service_id] = kwargs
        self.swarm.specs[service_id] = {
            "ID": service_id,
            "Spec": {"Name": kwargs["name"], "Labels": dict(kwargs.get("labels") or {}),
                     "Mode": {"Replicated": {"Replicas": 1}},
                     "TaskTemplate": {"ContainerSpec": {"Image": image}}},
        }
        self.swarm.new_task(service_id)
        return FakeService(self.swarm, service_id)

    def get(self, service_id: str) -> FakeService:
        if service_id not in self.swarm.specs:
            raise docker.errors.NotFound(f"service {service_id} not found")
        return FakeService(self.swarm, service_id)

    def list(self, filters: dict[str, list[str]] | None = None) -> list[FakeService]:
        self.swarm.calls.append(("list", filters))
        wanted = [f.split("=", 1) for f in (filters or {}).get("label", [])]
        return [FakeService(self.swarm, sid) for sid, svc in self.swarm.specs.items()
                if all(svc["Spec"]["Labels"].get(k) == v for k, v in wanted)]


class FakeNode:
    def __init__(self, node_id: str, address: str, ready: bool) -> None:
        self.id = node_id
        self.attrs = {"Status": {"State": "ready" if ready else "down", "Addr": address}}


class FakeNodes:
    def __init__(self, swarm: FakeSwarm) -> None:
        self.swarm = swarm

    def get(self, node_id: str) -> FakeNode:
        self.swarm.calls.append(("node", node_id))
        return FakeNode(node_id, NODES[node_id], node_id not in self.swarm.lost)

    def list(self) -> list[FakeNode]:
        self.swarm.calls.append(("nodes",))
        return [FakeNode(node_id, address, node_id not in self.swarm.lost)
                for node_id, address in NODES.items()]


class FakeImage:
    def __init__(self, image_id: str, labels: dict[str, str]) -> None:
        self.id = image_id
        self.labels = labels


class FakeImages:
    def __init__(self, swarm: FakeSwarm) -> None:
        self.swarm = swarm

    def get(self, name: str) -> FakeImage:
        if name not in self.swarm.image_labels:
            raise docker.errors.ImageNotFound(f"No such image: {name}")
        return FakeImage(f"sha256:{abs(hash(name)):064x}"[:71], self.swarm.image_labels[name])


class FakeSwarm:
    """The client. `image_labels`: the images the manager has (name -> labels)."""

    def __init__(self) -> None:
        self.specs: dict[str, dict[str, Any]] = {}  # service id -> its attrs
        self.tasks: dict[str, list[dict[str, Any]]] = {}
        self.created: dict[str, dict[str, Any]] = {}  # service id -> the create kwargs
        self.logs: dict[str, list[str]] = {}
        self.image_labels: dict[str, dict[str, str]] = {"app:v1": {}, "app:v2": {"turnout.schema": "1-2"}}
        self.calls: list[tuple[Any, ...]] = []
        self.stop_exit = 0
        self.reap_at_once = False  # a scaled-down task is deleted before anyone sees it end
        self.orchestrator_lag = 0  # task listings after a scale-up before its new task shows
        self.lagging: dict[str, int] = {}
        self.lost: set[str] = set()  # nodes whose engine stopped: down, their tasks frozen as last reported
        self.ids = itertools.count(1)
        self._ports = itertools.count(30000)
        self._clock = itertools.count(1)
        self._nodes = itertools.cycle(NODES)
        self.services = FakeServices(self)
        self.nodes = FakeNodes(self)
        self.images = FakeImages(self)
        self.closed = False

    def new_task(self, service_id: str) -> dict[str, Any]:
        # Go trims trailing zeros from the nanoseconds: ".5Z" is later than ".123Z".
        tick = next(self._clock)
        node = next(self._nodes)
        while node in self.lost:  # the scheduler places tasks on ready nodes only
            node = next(self._nodes)
        task = {"ID": f"task{tick}", "NodeID": node, "DesiredState": "running",
                "CreatedAt": f"2026-01-01T00:00:{tick:02d}.{'5' if tick % 2 else '123456789'}Z",
                "Status": {"State": "pending"}}
        self.tasks.setdefault(service_id, []).append(task)
        return task

    def current(self, service_id: str) -> dict[str, Any]:
        return self.tasks[service_id][-1]

    def run(self, service_id: str) -> int:
        """The current task starts: running, with a host-mode port on its node. Returns the port."""
        task = self.current(service_id)
        port = next(self._ports)
        target = int(self.specs[service_id]["Spec"]["Labels"]["turnout.port"])
        task["Status"] = {"State": "running", "ContainerStatus": {"ExitCode": 0},
                          "PortStatus": {"Ports": [{"Protocol": "tcp", "TargetPort": target,
                                                    "PublishedPort": port, "PublishMode": "host"}]}}
        return port

    def fail(self, service_id: str, code: int) -> None:
        self.current(service_id)["Status"] = {"State": "failed", "Err": f"task: non-zero exit ({code})",
                                              "ContainerStatus": {"ExitCode": code}}

    def reject(self, service_id: str, err: str) -> None:
        self.current(service_id)["Status"] = {"State": "rejected", "Err": err}

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

