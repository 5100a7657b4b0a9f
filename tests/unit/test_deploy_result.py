"""What a deploy's end reports beside its status: requests the proxy failed for the service (its own
errors in every pool, and held requests that timed out), and notes; kept in the journal with the deploy's
options and shown by the CLI."""

from __future__ import annotations

from controller.events import describe_event
from controller.journal import Journal
from proxy.metrics import Metrics


def test_the_proxy_failed_count_is_per_service_and_counts_only_the_proxys_own_errors():
    metrics = Metrics()
    metrics.pool("web", "v1").observe(502, 0.01, proxy_made=True)
    metrics.pool("web", "v2").observe(504, 0.01, proxy_made=True)
    metrics.pool("web", "v2").observe(500, 0.01)  # the app's own answer
    metrics.pool("web", "v2").observe(200, 0.01)
    metrics.pool("api", "v1").observe(502, 0.01, proxy_made=True)
    metrics.hold_timeouts["web"] = 3
    assert (metrics.failed("web"), metrics.failed("api"), metrics.failed("none")) == (5, 1, 0)
    assert 'turnout_hold_timeouts_total{service="web"} 3' in metrics.render([])


def test_the_result_is_kept_beside_the_options_the_deploy_began_with(tmp_path):
    with Journal(tmp_path / "j.db") as journal:
        record = journal.begin("web", "bigbang", "v2", "app:v2", "v1", {"pool": "v2", "verify": 2.0})
        result = {"proxy_failed": 0, "notes": ["2 container(s) of v1 ... killed"]}
        finished = journal.finish(record.id, "succeeded", "", result=result)
        assert finished.options == {"pool": "v2", "verify": 2.0, "result": result}
        assert journal.history("web", 1)[0].options["result"] == result
        other = journal.begin("web", "bigbang", "v3", "app:v3", "v2", {"pool": "v3"})
        assert journal.finish(other.id, "failed", "no result").options == {"pool": "v3"}


def test_the_finished_line_says_what_the_proxy_failed_and_the_notes():
    text = describe_event({"event": "finished", "status": "succeeded", "seconds": 4.8, "message": "",
                           "proxy_failed": 0, "notes": ["old killed after its grace", "gap 12.4s"]})
    assert text.splitlines() == ["finished: succeeded in 4.8s; the proxy failed 0 request(s) during it",
                                 "    note: old killed after its grace", "    note: gap 12.4s"]


async def test_history_shows_the_count_and_the_notes(capsys):
    import argparse

    from controller.cli import _history

    class Client:  # the admin API's answer, as AdminClient.request returns it
        async def request(self, method: str, path: str, **params: str) -> dict:
            return {"deployments": [
                {"id": "d-000002", "strategy": "bigbang", "from_version": "v1", "to_version": "v2",
                 "status": "succeeded", "message": "",
                 "options": {"result": {"proxy_failed": 16, "notes": ["v1 killed after its grace"]}}},
                {"id": "d-000001", "strategy": "bigbang", "from_version": None, "to_version": "v1",
                 "status": "succeeded", "message": "", "options": {}}]}  # from before results were kept

    args = argparse.Namespace(service="web", limit=20, steps=False, json=False)
    assert await _history(Client(), args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["d-000002", "bigbang", "v1", "->", "v2", "succeeded", "16", "failed"]
    assert lines[1] == "    note: v1 killed after its grace"
    assert lines[2].split() == ["d-000001", "bigbang", "-", "->", "v1", "succeeded"]
