"""What reaches `containers.create` comes from an allowlist: loopback ports, no restart policy,
size-capped logs, and no way to ask for privileges or the host's namespaces."""

import dataclasses

import pytest

from controller.docker_backend import CREATE_OPTIONS, ContainerSpec, DockerBackend


def full_spec(**changes):
    spec = ContainerSpec(service="web", version="v2", image="app:v2", port=8080, deployment_id="d-000001",
                         pool="v2", env={"A": "1"}, command=["/bin/sh", "-c", "true"],
                         volumes={"/srv/data": "/data:ro"}, extra_labels={"team": "x"}, mem_limit="64m",
                         cpus=0.5)
    return dataclasses.replace(spec, **changes)


def test_every_create_option_is_on_the_allowlist():
    kwargs = DockerBackend(owner="o")._create_kwargs(full_spec(), "turnout-web-v2-abc")
    assert set(kwargs) <= CREATE_OPTIONS
    assert kwargs["ports"] == {"8080/tcp": ("127.0.0.1", None)}  # published on loopback only
    assert kwargs["restart_policy"] == {"Name": "no"}
    assert kwargs["log_config"]["Config"] == {"max-size": "10m", "max-file": "3"}
    assert kwargs["volumes"] == ["/srv/data:/data:ro"]
    assert kwargs["labels"]["turnout.owner"] == "o" and kwargs["labels"]["team"] == "x"


@pytest.mark.parametrize("option", ["privileged", "network_mode", "pid_mode", "cap_add", "devices",
                                    "restart_policy", "ports", "user"])
def test_a_spec_cannot_carry_dangerous_options(option):
    with pytest.raises(TypeError):
        ContainerSpec(service="web", version="v2", image="app:v2", port=8080, deployment_id="d",
                      pool="v2", **{option: True})


def test_extra_labels_cannot_take_over_turnout_labels():
    with pytest.raises(ValueError, match=r"turnout\.owner"):
        DockerBackend(owner="o")._create_kwargs(full_spec(extra_labels={"turnout.owner": "other"}), "n")
