"""What reaches `containers.create` comes from an allowlist: loopback ports, no restart policy,
size-capped logs, the hardening options, and no way to ask for privileges or the host's namespaces."""

import asyncio
import dataclasses

import pytest

import controller.operations as operations
from controller.config.model import Volume
from controller.config.overrides import service_from_flags
from controller.deployer import Deployer
from controller.engine.base import ContainerSpec
from controller.engine.docker import CREATE_OPTIONS, DockerBackend
from controller.journal import Journal
from controller.proxy_control import ProxyControl
from helpers.fake_docker import FakeBackend
from proxy.router import Router


def full_spec(**changes):
    spec = ContainerSpec(service="web", version="v2", image="app:v2", port=8080, deployment_id="d-000001",
                         pool="v2", env={"A": "1"}, command=["/bin/sh", "-c", "true"],
                         volumes=["/srv/data:/data:ro"], extra_labels={"team": "x"}, mem_limit="64m",
                         cpus=0.5, pids_limit=512, cap_drop=["ALL"], cap_add=["CHOWN", "SETUID"],
                         security_opt=["no-new-privileges"])
    return dataclasses.replace(spec, **changes)


def test_every_create_option_is_on_the_allowlist():
    kwargs = DockerBackend(owner="o")._create_kwargs(full_spec(), "turnout-web-v2-abc")
    assert set(kwargs) <= CREATE_OPTIONS
    assert kwargs["ports"] == {"8080/tcp": ("127.0.0.1", None)}  # published on loopback only
    assert kwargs["restart_policy"] == {"Name": "no"}
    assert kwargs["log_config"]["Config"] == {"max-size": "10m", "max-file": "3"}
    assert kwargs["volumes"] == ["/srv/data:/data:ro"]
    assert kwargs["labels"]["turnout.owner"] == "o" and kwargs["labels"]["team"] == "x"
    assert (kwargs["pids_limit"], kwargs["cap_drop"], kwargs["cap_add"], kwargs["security_opt"]) == (
        512, ["ALL"], ["CHOWN", "SETUID"], ["no-new-privileges"])


def test_a_spec_without_hardening_sets_none_of_it():
    kwargs = DockerBackend(owner="o")._create_kwargs(full_spec(pids_limit=None, cap_drop=(), cap_add=(),
                                                               security_opt=()), "n")
    assert not kwargs.keys() & {"pids_limit", "cap_drop", "cap_add", "security_opt"}


@pytest.mark.parametrize(("option", "value"), [
    ("cap_add", ["SYS_ADMIN"]),  # beyond Docker's default set: never granted
    ("cap_add", ["ALL"]),
    ("cap_add", "CHOWN"),  # a string, not a list
    ("cap_drop", ["NOT_A_CAP"]),
    ("security_opt", ["seccomp=unconfined"]),
    ("security_opt", ["apparmor=unconfined"]),
    ("security_opt", ["label=disable"]),
    ("pids_limit", 0),
    ("pids_limit", True),
])
def test_a_spec_cannot_grant_more_than_a_plain_docker_run(option, value):
    with pytest.raises(ValueError, match=option):
        full_spec(**{option: value})


@pytest.mark.parametrize("option", ["privileged", "network_mode", "pid_mode", "devices",
                                    "restart_policy", "ports", "user", "userns_mode", "ipc_mode"])
def test_a_spec_cannot_carry_dangerous_options(option):
    with pytest.raises(TypeError):
        ContainerSpec(service="web", version="v2", image="app:v2", port=8080, deployment_id="d",
                      pool="v2", **{option: True})


def test_extra_labels_cannot_take_over_turnout_labels():
    with pytest.raises(ValueError, match=r"turnout\.owner"):
        DockerBackend(owner="o")._create_kwargs(full_spec(extra_labels={"turnout.owner": "other"}), "n")


async def test_two_mounts_of_one_source_both_reach_the_engine(tmp_path, monkeypatch):
    """A source mounted at two targets (e.g. read-write and read-only): both binds are created; keyed
    by source, the second silently replaced the first."""
    specs: list[ContainerSpec] = []

    class Recording(FakeBackend):
        async def start(self, spec):
            specs.append(spec)
            return await super().start(spec)

    backend = Recording()
    monkeypatch.setattr(operations, "wait_healthy", backend.wait_healthy)
    config = dataclasses.replace(service_from_flags("web", "app:v1", port=8080), volumes=(
        Volume("/srv/data", "/data"), Volume("/srv/data", "/snapshot", read_only=True)))
    with Journal(tmp_path / "journal.db") as journal:
        active = Deployer(backend, ProxyControl(Router()), journal).deploy(config, "app:v1")
        await asyncio.wait_for(active.task, 10)
    assert active.status == "succeeded", active.message
    kwargs = DockerBackend(owner="o")._create_kwargs(specs[0], "turnout-web-v1-abc")
    assert kwargs["volumes"] == ["/srv/data:/data:rw", "/srv/data:/snapshot:ro"]


def test_volumes_are_a_list_of_binds():
    with pytest.raises(ValueError, match="binds"):
        full_spec(volumes={"/srv/data": "/data"})
