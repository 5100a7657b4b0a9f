import os
import sqlite3
import stat

import pytest

from controller.errors import TurnoutError
from controller.journal import (
    SCHEMA_VERSION,
    DeploymentFinished,
    DeploymentInProgress,
    Journal,
    JournalError,
    UnknownDeployment,
)


@pytest.fixture
def journal(tmp_path):
    with Journal(tmp_path / "state" / "journal.sqlite3") as j:
        yield j


def begin(journal, service="web", to_version="v2", **kw):
    kw.setdefault("strategy", "rolling")
    kw.setdefault("image", f"app:{to_version}")
    return journal.begin(service=service, to_version=to_version, **kw)


def test_begin_records_a_running_deployment_with_increasing_ids(journal):
    first = begin(journal, from_version="v1", options={"max_surge": 1})
    journal.finish(first.id, "succeeded")
    second = begin(journal, to_version="v3", from_version="v2")
    assert first.id == "d-000001" and second.id == "d-000002"
    assert first.status == "running" and not first.finished and first.finished_at is None
    assert first.options == {"max_surge": 1} and first.from_version == "v1" and first.image == "app:v2"
    assert journal.get(first.id).status == "succeeded"


def test_steps_are_ordered_with_timestamps_and_json_detail(journal, tmp_path):
    d = begin(journal)
    journal.step(d.id, "started", containers=["a", "b"])
    journal.step(d.id, "weights", canary=5, stable=95, where=tmp_path)
    journal.step(d.id, "healthy")
    steps = journal.steps(d.id)
    assert [(s.n, s.name) for s in steps] == [(1, "started"), (2, "weights"), (3, "healthy")]
    assert steps[0].detail == {"containers": ["a", "b"]}
    assert steps[1].detail == {"canary": 5, "stable": 95, "where": str(tmp_path)}
    assert steps[0].at <= steps[1].at <= steps[2].at
    assert all(s.deployment_id == d.id for s in steps)


def test_history_is_newest_first_per_service_and_limited(journal):
    ids = []
    for n in range(5):
        d = begin(journal, to_version=f"v{n}")
        journal.finish(d.id, "succeeded")
        ids.append(d.id)
    other = begin(journal, service="api")
    assert [d.id for d in journal.history("web")] == ids[::-1]
    assert [d.id for d in journal.history("web", limit=2)] == ids[:-3:-1]
    assert [d.id for d in journal.history("api")] == [other.id]
    assert journal.history("nothing") == []


def test_finish_sets_status_message_and_time(journal):
    d = begin(journal)
    done = journal.finish(d.id, "rolled_back", "canary error rate 0.4 > 0.05")
    assert done.status == "rolled_back" and done.finished and done.finished_at >= done.started_at
    assert done.message == "canary error rate 0.4 > 0.05"


def test_finish_twice_is_refused_and_keeps_the_first_outcome(journal):
    d = begin(journal)
    journal.finish(d.id, "succeeded")
    with pytest.raises(DeploymentFinished, match="already finished as succeeded") as info:
        journal.finish(d.id, "failed", "late")
    assert isinstance(info.value, JournalError) and isinstance(info.value, TurnoutError)
    assert journal.get(d.id).status == "succeeded" and journal.get(d.id).message == ""


@pytest.mark.parametrize("status", ["running", "done", ""])
def test_finish_refuses_non_final_statuses(journal, status):
    d = begin(journal)
    with pytest.raises(ValueError, match="finish status"):
        journal.finish(d.id, status)
    assert journal.get(d.id).status == "running"


def test_one_running_deployment_per_service(journal):
    d = begin(journal)
    with pytest.raises(DeploymentInProgress, match=d.id):
        begin(journal, to_version="v3")
    begin(journal, service="api")  # other services are independent
    journal.finish(d.id, "aborted")
    begin(journal, to_version="v3")


@pytest.mark.parametrize("bad_id", ["d-999999", "x-000001", "", "d-"])
def test_unknown_deployments_are_lookup_errors(journal, bad_id):
    with pytest.raises(UnknownDeployment) as info:
        journal.get(bad_id)
    assert isinstance(info.value, LookupError)
    with pytest.raises(UnknownDeployment):
        journal.step(bad_id, "x")
    with pytest.raises(UnknownDeployment):
        journal.finish(bad_id, "failed")


def test_unfinished_deployments_survive_a_crash(tmp_path):
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    done = begin(journal, service="api")
    journal.finish(done.id, "succeeded")
    crashed = begin(journal, service="web", from_version="v1", strategy="canary", options={"steps": [5, 100]})
    journal.step(crashed.id, "weights", canary=5)
    journal.set_service_state("web", {"stable": {"version": "v1"}})
    journal.close()  # the daemon dies here: finish() is never called

    with Journal(path) as reopened:
        [unfinished] = reopened.unfinished()
        assert unfinished == crashed
        assert [s.name for s in reopened.steps(crashed.id)] == ["weights"]
        assert reopened.service_state("web") == {"stable": {"version": "v1"}}
        reopened.finish(crashed.id, "interrupted", "daemon restarted mid-deploy")
        assert reopened.unfinished() == []
        assert begin(reopened).id == "d-000003"  # ids keep increasing across restarts


def test_service_state_round_trips_and_replaces(journal):
    assert journal.service_state("web") is None and journal.services() == {}
    state = {"stable": {"version": "v1", "image": "app:v1", "pool": "v1"}, "previous": None}
    journal.set_service_state("web", state)
    assert journal.service_state("web") == state
    journal.set_service_state("web", {"stable": {"version": "v2"}})
    journal.set_service_state("api", {"stable": {"version": "a1"}})
    assert journal.services() == {"api": {"stable": {"version": "a1"}}, "web": {"stable": {"version": "v2"}}}


def test_a_failed_transaction_leaves_no_half_state(journal):
    kept = begin(journal, service="api")
    with pytest.raises(RuntimeError, match="crash"), journal.transaction():
        d = begin(journal)
        journal.step(d.id, "started")
        journal.finish(kept.id, "succeeded")
        journal.set_service_state("web", {"stable": {"version": "v2"}})
        raise RuntimeError("crash mid-transaction")
    assert journal.history("web") == [] and journal.service_state("web") is None
    assert journal.get(kept.id).status == "running"
    # Still usable afterwards; the rolled-back id was never seen, so it may be handed out again.
    assert begin(journal).id == "d-000002"


def test_nested_transactions_join_the_outer_one(journal):
    with journal.transaction():
        d = begin(journal)
        with journal.transaction():
            journal.step(d.id, "inner")
        journal.finish(d.id, "succeeded")
    assert journal.get(d.id).status == "succeeded" and len(journal.steps(d.id)) == 1


def test_file_is_wal_with_a_schema_version(tmp_path):
    path = tmp_path / "j.sqlite3"
    Journal(path).close()
    Journal(path).close()  # opening an up-to-date file again changes nothing
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        db.close()


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "j.sqlite3"
    Journal(path).close()
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.close()
    with pytest.raises(JournalError, match="newer"):
        Journal(path)


# -- the file is private (it holds env values, often secrets) ----------------------------------------
def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def usual_umask():
    old = os.umask(0o022)  # what a shell usually has: files are born 0644 unless we say otherwise
    yield
    os.umask(old)


def test_the_journal_and_its_wal_and_shm_files_are_0600(tmp_path, usual_umask):
    path = tmp_path / "state" / "journal.sqlite3"
    with Journal(path) as journal:
        journal.begin("web", "rolling", "v1", "app:v1")  # a write: the -wal and -shm files exist now
        files = sorted(p.name for p in path.parent.iterdir())
        assert files == ["journal.sqlite3", "journal.sqlite3-shm", "journal.sqlite3-wal"]
        assert {name: mode(path.parent / name) for name in files} == dict.fromkeys(files, 0o600)


def test_journal_files_an_older_turnout_left_world_readable_are_made_0600(tmp_path, usual_umask):
    path = tmp_path / "journal.sqlite3"
    Journal(path).close()
    for name in ("journal.sqlite3", "journal.sqlite3-wal", "journal.sqlite3-shm"):
        (tmp_path / name).touch()
        os.chmod(tmp_path / name, 0o644)
    with Journal(path):
        assert mode(path) == 0o600
        assert mode(tmp_path / "journal.sqlite3-wal") == mode(tmp_path / "journal.sqlite3-shm") == 0o600


def test_a_journal_that_is_a_symlink_is_refused_and_not_followed(tmp_path, usual_umask):
    target = tmp_path / "secret.db"
    target.write_bytes(b"")
    os.chmod(target, 0o644)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "journal.sqlite3").symlink_to(target)
    with pytest.raises(TurnoutError, match=r"journal.sqlite3: is a symlink"):
        Journal(tmp_path / "state" / "journal.sqlite3")
    assert mode(target) == 0o644 and target.read_bytes() == b""


def test_a_planted_wal_symlink_is_refused(tmp_path, usual_umask):
    (tmp_path / "journal.sqlite3-wal").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(TurnoutError, match=r"journal.sqlite3-wal: is a symlink"):
        Journal(tmp_path / "journal.sqlite3")
    assert not (tmp_path / "elsewhere").exists()
