import pytest

from helpers.daemon import Daemon
from helpers.live import CONFIG, owner_containers, wait_for_version


@pytest.fixture
def daemon(tmp_path, docker_client, test_run_labels):
    """`turnout serve` with the test config, serving turnout-testapp:v1 on 2 replicas."""
    serve = Daemon(tmp_path, test_run_labels, CONFIG)
    serve.start()
    wait_for_version(serve, "v1")
    yield serve
    serve.stop()
    owner_containers(docker_client, serve, remove=True)
