"""What reaches `containers.create` comes from an allowlist: loopback ports, no restart policy,
size-capped logs, the hardening options, and no way to ask for privileges or the host's namespaces."""

import dataclasses

import pytest

from controller.docker_backend import CREATE_OPTIONS, ContainerSpec, DockerBackend


def full_spec(**changes):
    spec = ContainerSpec(service="web", version="v2", image="app:v2", port=8080, deployment_id="d-000001",
                         pool="v2", env={"A": "1"}, command=["/bin/sh", "-c", "true"],
                         volumes={"/srv/data": "/data:ro"}, extra_labels={"team": "x"}, mem_limit="64m",
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
