"""The pytest plugin, as an application's own test suite would use it (run with pytester)."""

import uuid

import pytest

pytestmark = pytest.mark.docker

APP_TESTS = '''
import pytest
from controller.testing.plugin import DeployFailed


def test_bluegreen_loses_nothing(turnout):
    turnout.deploy("web", image="turnout-testapp:v1", port=8080, replicas=1)
    with turnout.traffic("web") as report:
        turnout.deploy("web", image="turnout-testapp:v2", strategy="bluegreen")
    assert report.sent > 20
    assert report.lost == 0, report.summary
    assert {"v1", "v2"} <= report.versions
    assert turnout.status("web")["stable"]["version"] == "v2"


def test_a_crashing_version_is_refused_and_v1_keeps_serving(turnout):
    turnout.deploy("web", image="turnout-testapp:v1", port=8080, replicas=1)
    with turnout.traffic("web") as report:
        with pytest.raises(DeployFailed, match="exit code 3"):
            turnout.deploy("web", image="turnout-testapp:crash", strategy="rolling")
    assert report.lost == 0, report.summary
    assert report.versions == {"v1"}
'''


def test_plugin_fixture_runs_deploys_under_traffic(pytester, docker_client, monkeypatch):
    # The inner run labels its containers with this id (the plugin reads TURNOUT_TEST_RUN), so the check
    # below sees exactly what it started, whatever else runs on the engine.
    inner_run = "plugin-" + uuid.uuid4().hex[:12]
    monkeypatch.setenv("TURNOUT_TEST_RUN", inner_run)
    pytester.makepyfile(test_app=APP_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2)
    # every container the inner tests started was removed by the fixture
    leftover = docker_client.containers.list(all=True, filters={"label": f"turnout.test-run={inner_run}"})
    assert leftover == []


def test_plugin_failing_assertion_is_reported(pytester, docker_client):
    pytester.makepyfile(test_app='''
def test_wrong_expectation(turnout):
    turnout.deploy("web", image="turnout-testapp:v1", port=8080, replicas=1)
    assert turnout.status("web")["stable"]["version"] == "v9"
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*assert 'v1' == 'v9'*"])
