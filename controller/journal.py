"""The deployment journal: every deployment, its steps and each service's state, in one SQLite file.

Crash-safe by construction: WAL with `synchronous=FULL`, and every write in one transaction, so after a
SIGKILL the file holds whole records only. A deployment still `running` when the daemon starts again was
interrupted (`unfinished()`), and recovery decides whether to resume or roll it back.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TurnoutError
from .state_dir import private_file

RUNNING = "running"
FINAL_STATUSES = ("succeeded", "failed", "rolled_back", "aborted", "interrupted")
STATUSES = (RUNNING, *FINAL_STATUSES)
_ID = re.compile(r"d-(\d+)")

# Each entry upgrades the schema by one version; never edit an entry once released, append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE deployments (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids are never reused
            service TEXT NOT NULL,
            strategy TEXT NOT NULL,
            from_version TEXT,
            to_version TEXT NOT NULL,
            image TEXT NOT NULL,
            status TEXT NOT NULL,
            started_at REAL NOT NULL,
            finished_at REAL,
            message TEXT NOT NULL DEFAULT '',
            options TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX deployments_by_service ON deployments (service, seq)",
        "CREATE INDEX deployments_running ON deployments (status) WHERE status = 'running'",
        """CREATE TABLE steps (
            deployment_seq INTEGER NOT NULL REFERENCES deployments (seq),
            n INTEGER NOT NULL,
            name TEXT NOT NULL,
            at REAL NOT NULL,
            detail TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (deployment_seq, n)
        )""",
        """CREATE TABLE service_state (
            service TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            updated_at REAL NOT NULL
        )""",
    ),
    (
        # key/value facts about this journal; `owner` is the id its daemon labels containers with.
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        # every container this journal's daemon created: only these are ever routed or removed.
        """CREATE TABLE containers (
            id TEXT PRIMARY KEY,
            service TEXT NOT NULL,
            pool TEXT NOT NULL,
            deployment TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
OWNER_PREFIX = "turnout-"


class JournalError(TurnoutError):
    """The journal refused a write, or its file cannot be used."""


class UnknownDeployment(JournalError, LookupError):
    def __init__(self, deployment_id: str) -> None:
        self.deployment_id = deployment_id
        super().__init__(f"no deployment {deployment_id!r} in the journal")


class DeploymentFinished(JournalError):
    """A finished deployment is history: its status never changes again."""

    def __init__(self, deployment_id: str, status: str) -> None:
        self.deployment_id = deployment_id
        self.status = status
        super().__init__(f"deployment {deployment_id} already finished as {status}")


class DeploymentInProgress(JournalError):
    """One deployment per service at a time: finish (or mark interrupted) the running one first."""

    def __init__(self, service: str, deployment_id: str) -> None:
        self.service = service
        self.deployment_id = deployment_id
        super().__init__(f"service {service!r} already has deployment {deployment_id} running")


@dataclass(frozen=True, slots=True)
class Deployment:
    id: str  # "d-000123", increasing with every begin()
    service: str
    strategy: str
    from_version: str | None
    to_version: str
    image: str
    status: str
    started_at: float  # Unix time
    finished_at: float | None
    message: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status != RUNNING


@dataclass(frozen=True, slots=True)
class Step:
    deployment_id: str
    n: int  # 1, 2, 3... within its deployment
    name: str
    at: float  # Unix time
    detail: dict[str, Any] = field(default_factory=dict)


REDACTED = "***"


SECRET_KEYS = frozenset({"override_secret", "admin_token", "routing_token"})


def redacted(value: Any) -> Any:
    """`value` with the values of every `env` in it replaced by "***" (keys kept), and every secret
    (`override_secret`, a token) by "***": what the journal shows through `history` (the journal itself
    keeps them, 0600, for recovery)."""
    if isinstance(value, dict):
        return {k: _env_keys_only(v) if k == "env" else REDACTED if k in SECRET_KEYS and v else redacted(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    return value


def _env_keys_only(env: Any) -> Any:
    if isinstance(env, dict):
        return dict.fromkeys(env, REDACTED)
    if isinstance(env, list | tuple):  # ["KEY=value", ...], as Docker spells it
        return [f"{str(item).split('=', 1)[0]}={REDACTED}" for item in env]
    return REDACTED


def deployment_id(seq: int) -> str:
    return f"d-{seq:06d}"


def _seq(deployment_id: str) -> int:
    match = _ID.fullmatch(deployment_id) if isinstance(deployment_id, str) else None
    if not match:
        raise UnknownDeployment(deployment_id)
    return int(match[1])


def _json(value: dict[str, Any]) -> str:
    # default=str: Paths, enums and the like are recorded by their text rather than failing a deploy.
    return json.dumps(value, default=str, sort_keys=True)


class Journal:
    """One SQLite file. Not for concurrent use: one thread at a time (a lock makes misuse safe, not fast).
    Calls are short single transactions, fine to make from the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # 0600 from birth: SQLite gives the -wal and -shm files it creates the database file's mode;
        # ones an older Turnout left (0644) are fixed here.
        private_file(self.path)
        for suffix in ("-wal", "-shm"):
            private_file(self.path.with_name(self.path.name + suffix), create=False)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly what we say.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self._depth = 0
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            self.owner = self._migrate()
        except Exception:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes: all of them are kept, or (on any exception) none. Nested uses join the outer."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._depth = 0

    def _migrate(self) -> str:
        """Bring the schema up to date; returns the journal's owner id."""
        with self.transaction():
            self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self._db.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if version > SCHEMA_VERSION:
                raise JournalError(f"{self.path}: journal schema {version} is newer than this Turnout "
                                   f"understands ({SCHEMA_VERSION}); upgrade Turnout")
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    self._db.execute(statement)
            if row is None:
                self._db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif version != SCHEMA_VERSION:
                self._db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
            return self._owner(upgraded_from_1=version == 1)

    def _owner(self, upgraded_from_1: bool) -> str:
        """The owner id, created once: random, so two daemons never share one by accident (the same
        state-dir path in two copies of compose/turnout.yml did). A journal from before owner ids keeps
        the id derived from its directory's path, which its running containers carry, and records the
        containers its service state names as its own."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'owner'").fetchone()
        if row is not None:
            return row[0]
        if upgraded_from_1:
            owner = OWNER_PREFIX + hashlib.sha256(str(self.path.parent.resolve()).encode()).hexdigest()[:12]
            for service, state in self._db.execute("SELECT service, state FROM service_state").fetchall():
                for release in (json.loads(state).get(k) or {} for k in ("stable", "previous")):
                    for container_id in release.get("containers", ()):
                        self._db.execute("INSERT OR IGNORE INTO containers (id, service, pool, deployment, "
                                         "created_at) VALUES (?, ?, ?, '', ?)",
                                         (container_id, service, release.get("pool", ""), time.time()))
        else:
            owner = OWNER_PREFIX + secrets.token_hex(8)
        self._db.execute("INSERT INTO meta (key, value) VALUES ('owner', ?)", (owner,))
        return owner

    # -- deployments ------------------------------------------------------------------------------

    def begin(self, service: str, strategy: str, to_version: str, image: str,
              from_version: str | None = None, options: dict[str, Any] | None = None) -> Deployment:
        with self.transaction():
            running = self._db.execute(
                "SELECT seq FROM deployments WHERE service = ? AND status = ?", (service, RUNNING)
            ).fetchone()
            if running:
                raise DeploymentInProgress(service, deployment_id(running[0]))
            cursor = self._db.execute(
                "INSERT INTO deployments (service, strategy, from_version, to_version, image, status, "
                "started_at, options) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (service, strategy, from_version, to_version, image, RUNNING, time.time(),
                 _json(options or {})),
            )
            return self._get(cursor.lastrowid)  # type: ignore[arg-type]

    def step(self, deployment_id: str, name: str, **detail: Any) -> Step:
        """Record what just happened (steps are allowed after finish too, e.g. late cleanup)."""
        seq = _seq(deployment_id)
        with self.transaction():
            self._get(seq)
            n = self._db.execute(
                "SELECT COALESCE(MAX(n), 0) + 1 FROM steps WHERE deployment_seq = ?", (seq,)
            ).fetchone()[0]
            at = time.time()
            self._db.execute("INSERT INTO steps (deployment_seq, n, name, at, detail) VALUES (?, ?, ?, ?, ?)",
                             (seq, n, name, at, _json(detail)))
        return Step(deployment_id, n, name, at, json.loads(_json(detail)))

    def finish(self, deployment_id: str, status: str, message: str = "",
               result: dict[str, Any] | None = None) -> Deployment:
        """`result`: what the deploy's end measured (e.g. requests the proxy failed), kept with its
        options under "result" (no schema change: options is free-form JSON)."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"finish status must be one of {', '.join(FINAL_STATUSES)}, got {status!r}")
        seq = _seq(deployment_id)
        with self.transaction():
            current = self._get(seq)
            if current.finished:
                raise DeploymentFinished(current.id, current.status)
            options = {**current.options, "result": result} if result is not None else current.options
            self._db.execute("UPDATE deployments SET status = ?, finished_at = ?, message = ?, options = ? "
                             "WHERE seq = ?", (status, time.time(), message, _json(options), seq))
            return self._get(seq)

    def get(self, deployment_id: str) -> Deployment:
        with self._lock:
            return self._get(_seq(deployment_id))

    def history(self, service: str, limit: int = 20) -> list[Deployment]:
        """Newest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM deployments WHERE service = ? ORDER BY seq DESC LIMIT ?",
                (service, limit),
            ).fetchall()
        return [_deployment(row) for row in rows]

    def created(self, service: str) -> Deployment | None:
        """The deployment that created the service: its first, or its first after the last prune that
        succeeded (a pruned service added again is a new one). Its `options["origin"]` says who."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM deployments WHERE service = ? AND seq > COALESCE((SELECT MAX(seq) "
                "FROM deployments WHERE service = ? AND strategy = 'prune' AND status = 'succeeded'), 0) "
                "ORDER BY seq LIMIT 1", (service, service)).fetchone()
        return _deployment(row) if row else None

    def unfinished(self) -> list[Deployment]:
        """Deployments still `running`: after a restart, the ones the crash interrupted (oldest first)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM deployments WHERE status = ? ORDER BY seq", (RUNNING,)
            ).fetchall()
        return [_deployment(row) for row in rows]

    def steps(self, deployment_id: str) -> list[Step]:
        seq = _seq(deployment_id)
        with self._lock:
            self._get(seq)
            rows = self._db.execute(
                "SELECT n, name, at, detail FROM steps WHERE deployment_seq = ? ORDER BY n", (seq,)
            ).fetchall()
        return [Step(deployment_id, n, name, at, json.loads(detail)) for n, name, at, detail in rows]

    def _get(self, seq: int) -> Deployment:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM deployments WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise UnknownDeployment(deployment_id(seq))
        return _deployment(row)

    # -- service state ----------------------------------------------------------------------------

    def set_service_state(self, service: str, state: dict[str, Any]) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT INTO service_state (service, state, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (service) DO UPDATE SET state = excluded.state, "
                "updated_at = excluded.updated_at",
                (service, _json(state), time.time()),
            )

    def service_state(self, service: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM service_state WHERE service = ?", (service,)).fetchone()
        return json.loads(row[0]) if row else None

    def forget_service(self, service: str) -> None:
        """Drop the service's saved state and schema (it was pruned); its deployments stay as history."""
        with self.transaction():
            self._db.execute("DELETE FROM service_state WHERE service = ?", (service,))
            self._db.execute("DELETE FROM meta WHERE key = ?", (f"schema:{service}",))

    def schema(self, service: str) -> dict[str, Any] | None:
        """The service's schema state (controller/schema.py), None when it has none."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (f"schema:{service}",)).fetchone()
        return json.loads(row[0]) if row else None

    def set_schema(self, service: str, state: dict[str, Any]) -> None:
        with self.transaction():
            self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                             "value = excluded.value", (f"schema:{service}", _json(state)))

    def services(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT service, state FROM service_state ORDER BY service").fetchall()
        return {service: json.loads(state) for service, state in rows}

    # -- containers this journal's daemon created ------------------------------------------------

    def record_container(self, container_id: str, service: str, pool: str, deployment_id: str) -> None:
        """Called as soon as the engine created a container: from then on it is ours to route and
        remove. A container with our labels that was never recorded is someone else's."""
        with self.transaction():
            self._db.execute("INSERT OR REPLACE INTO containers (id, service, pool, deployment, "
                             "created_at) VALUES (?, ?, ?, ?, ?)",
                             (container_id, service, pool, deployment_id, time.time()))

    def container_ids(self, service: str | None = None) -> set[str]:
        """Ids of the containers this journal recorded (of one service, or all)."""
        with self._lock:
            if service is None:
                rows = self._db.execute("SELECT id FROM containers").fetchall()
            else:
                rows = self._db.execute("SELECT id FROM containers WHERE service = ?", (service,)).fetchall()
        return {row[0] for row in rows}

    def forget_containers(self, keep: set[str]) -> int:
        """Drop the records of containers that no longer exist (every one not in `keep`, the ids the
        engine lists for our owner); returns how many were dropped."""
        with self.transaction():
            gone = self.container_ids() - keep
            self._db.executemany("DELETE FROM containers WHERE id = ?", [(i,) for i in gone])
        return len(gone)


def read_owner(path: Path) -> str | None:
    """The owner id of the journal at `path` (tests and tools find a daemon's containers by it);
    None when there is no journal there yet."""
    if not Path(path).exists():
        return None
    with Journal(path) as journal:
        return journal.owner


_COLUMNS = ("seq, service, strategy, from_version, to_version, image, status, started_at, finished_at, "
            "message, options")


def _deployment(row: tuple[Any, ...]) -> Deployment:
    seq, service, strategy, from_version, to_version, image, status, started, finished, message, options = row
    return Deployment(deployment_id(seq), service, strategy, from_version, to_version, image, status,
                      started, finished, message, json.loads(options))
