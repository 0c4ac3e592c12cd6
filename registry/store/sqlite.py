"""The embedded registry store: one SQLite file (``sqlite:///var/registry.db``, ``sqlite:///:memory:``).

Calls go straight to the stdlib ``sqlite3`` module on the event loop thread, over one connection: every
statement is short and indexed, so a thread hop would cost more than the statement. Each write is one
``BEGIN IMMEDIATE`` transaction (read, apply the state machine, write, append the event, commit), which
also keeps other processes opening the same file from interleaving with it; ``busy_timeout`` makes a
writer wait for such a process rather than fail at once (and that wait does block this event loop).

Durability: WAL journal with ``synchronous=NORMAL``. A commit is in the WAL before the call returns, so a
killed process (even SIGKILL) loses nothing; only an OS crash or power cut may lose the last commits,
which were not yet synced to disk. That trade buys commits without an fsync each. Checkpoints (the WAL's
pages copied into the file, both synced) run in a thread of their own (:class:`~shared.sqlite_wal.Checkpointer`),
not in the commit that crosses SQLite's threshold: no request waits for one.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from registry.errors import StoreUnavailable
from registry.store.base import JobEvent, JobStore, StoredUser
from registry.store.paging import decode_cursor, encode_cursor, utc_iso
from registry.store.rules import apply_cancel, apply_redrive
from registry.store.sqlite_batches import Apply, change_batch, create_batch
from registry.store.sqlite_instances import SCHEMA as INSTANCES_SCHEMA
from registry.store.sqlite_instances import SqliteInstances
from registry.store.sqlite_schedules import SCHEMA as SCHEDULES_SCHEMA
from registry.store.sqlite_schedules import SqliteSchedules
from shared.api import Role
from shared.contract import Job, JobCreate, JobPage, JobState, JobUpdate, TransitionRefused, apply_update
from shared.sqlite_wal import Checkpointer, use_wal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    owner TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    idempotency_key TEXT,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_kind_state ON jobs (kind, state, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_kind ON jobs (kind, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created_at DESC, id DESC);
-- An owner with a state or a kind: a walk of just those jobs, never of all the owner's (the dashboard's
-- jobs table; conveyor bench-registry measures it).
CREATE INDEX IF NOT EXISTS jobs_owner_state ON jobs (owner, state, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_owner_kind ON jobs (owner, kind, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_owner_kind_state ON jobs (owner, kind, state, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_state_updated ON jobs (state, updated_at);
CREATE INDEX IF NOT EXISTS jobs_cancel_requested ON jobs (created_at DESC, id DESC)
    WHERE json_extract(doc, '$.cancel_requested') = 1;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_owner_key ON jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    previous_state TEXT,
    attempt INTEGER NOT NULL,
    at TEXT NOT NULL,
    job TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
CREATE INDEX IF NOT EXISTS events_owner ON events (owner, seq);
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,  -- BINARY collation: case-sensitive, and code point order
    password_hash TEXT NOT NULL,
    roles TEXT NOT NULL,        -- JSON list
    permissions TEXT NOT NULL,  -- JSON list
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    id TEXT NOT NULL,           -- the stable id (UUID); indexed by _migrate_users
    epoch INTEGER NOT NULL DEFAULT 1
);
"""
# A database made before users had ids: give each user one, and hand their jobs (owned by the username
# until then) and those jobs' events to it, so nobody loses their jobs in the upgrade.
_OWNERS_TO_IDS = (
    "UPDATE jobs SET owner = (SELECT id FROM users WHERE username = jobs.owner),"
    " doc = json_set(doc, '$.owner', (SELECT id FROM users WHERE username = jobs.owner))"
    " WHERE owner IN (SELECT username FROM users)",
    "UPDATE events SET owner = (SELECT id FROM users WHERE username = events.owner),"
    " job = json_set(job, '$.owner', (SELECT id FROM users WHERE username = events.owner))"
    " WHERE owner IN (SELECT username FROM users)",
)

_EVENT_COLUMNS = "seq, job_id, owner, kind, type, state, previous_state, attempt, at, job"
_USER_COLUMNS = "id, username, password_hash, roles, permissions, created_at, updated_at, epoch"
# The flag lives only in the job document. The condition is spelled out with no parameter, exactly as in
# the jobs_cancel_requested partial index, so that the planner can use that index (flagged jobs are few).
_CANCEL_REQUESTED = {True: "json_extract(doc, '$.cancel_requested') = 1",
                     False: "json_extract(doc, '$.cancel_requested') = 0"}


def _user(row: tuple[Any, ...]) -> StoredUser:
    user_id, username, password_hash, roles, permissions, created_at, updated_at, epoch = row
    return StoredUser(id=uuid.UUID(user_id), username=username, password_hash=password_hash,
                      roles=orjson.loads(roles), permissions=orjson.loads(permissions),
                      created_at=datetime.fromisoformat(created_at), updated_at=datetime.fromisoformat(updated_at),
                      epoch=epoch)


def _applying(update: JobUpdate) -> Apply:
    return lambda job, now: apply_update(job, update, now)


class SqliteJobStore(SqliteInstances, SqliteSchedules, JobStore):
    """Jobs, users, service instances and schedules in one SQLite file (or in memory with ``:memory:``)."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self.checkpoints = Checkpointer(path, busy_timeout_s=busy_timeout_ms / 1000)

    @classmethod
    def from_url(cls, url: str) -> SqliteJobStore:
        """``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or ``sqlite:///:memory:``."""
        prefix = "sqlite:///"
        if not url.startswith(prefix) or len(url) == len(prefix):
            raise ValueError(f"a SQLite store URL looks like sqlite:///path/to/registry.db, not {url!r}")
        return cls(url[len(prefix):].split("?", 1)[0])

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the store is not open")
        return self._conn

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; every write below says BEGIN IMMEDIATE itself.
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        use_wal(conn, self.busy_timeout_ms / 1000)
        conn.executescript(_SCHEMA + INSTANCES_SCHEMA + SCHEDULES_SCHEMA)
        self._conn = conn
        self._migrate_users()
        self.checkpoints.start(conn)

    async def close(self) -> None:
        self.checkpoints.stop()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    async def ping(self) -> None:
        self._db.execute("SELECT 1").fetchone()

    def _migrate_users(self) -> None:
        """Bring a users table made before ids and epochs up to date (once; a no-op after)."""
        with self._write() as db:
            columns = {row[1] for row in db.execute("PRAGMA table_info(users)")}
            if "id" not in columns:
                db.execute("ALTER TABLE users ADD COLUMN id TEXT")
                db.execute("ALTER TABLE users ADD COLUMN epoch INTEGER NOT NULL DEFAULT 1")
                names = [row[0] for row in db.execute("SELECT username FROM users")]
                db.executemany("UPDATE users SET id = ? WHERE username = ?",
                               [(str(uuid.uuid4()), name) for name in names])
                for statement in _OWNERS_TO_IDS:
                    db.execute(statement)
            db.execute("CREATE UNIQUE INDEX IF NOT EXISTS users_id ON users (id)")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:  # still locked by another process after busy_timeout
            raise StoreUnavailable("the registry database is busy", retry_after_s=1.0) from exc
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreUnavailable("the registry database could not commit") from exc
        self.checkpoints.committed()

    async def create(self, spec: JobCreate, now: datetime) -> tuple[Job, bool]:
        with self._write() as db:
            return create_batch(db, [spec], now)[0]

    async def create_many(self, specs: list[JobCreate], now: datetime) -> list[tuple[Job, bool]]:
        with self._write() as db:  # one commit for the batch
            return create_batch(db, specs, now)

    async def get(self, job_id: uuid.UUID) -> Job | None:
        row = self._db.execute("SELECT doc FROM jobs WHERE id = ?", (str(job_id),)).fetchone()
        return Job.model_validate_json(row[0]) if row is not None else None

    def _change(self, job_id: uuid.UUID, apply: Apply, now: datetime) -> tuple[Job, bool]:
        with self._write() as db:
            (outcome,) = change_batch(db, [(job_id, apply)], now)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def update_many(self, updates: list[tuple[uuid.UUID, JobUpdate]], now: datetime
                          ) -> list[tuple[Job, bool] | KeyError | TransitionRefused]:
        with self._write() as db:  # one commit for the batch; a refused update writes nothing of its own
            return change_batch(db, [(job_id, _applying(update)) for job_id, update in updates], now)

    async def update(self, job_id: uuid.UUID, update: JobUpdate, now: datetime) -> tuple[Job, bool]:
        return self._change(job_id, _applying(update), now)

    async def request_cancel(self, job_id: uuid.UUID, now: datetime) -> tuple[Job, bool]:
        return self._change(job_id, apply_cancel, now)

    async def redrive(self, job_id: uuid.UUID, extra_attempts: int, now: datetime) -> tuple[Job, bool]:
        return self._change(job_id, lambda job, at: apply_redrive(job, extra_attempts, at), now)

    async def list(self, *, kind: str | None = None, state: JobState | None = None, owner: str | None = None,
                   updated_before: datetime | None = None, cancel_requested: bool | None = None,
                   limit: int = 100, cursor: str | None = None, created_after: datetime | None = None) -> JobPage:
        where: list[str] = []
        args: list[Any] = []
        if kind is not None:
            where.append("kind = ?")
            args.append(str(kind))
        if state is not None:
            where.append("state = ?")
            args.append(JobState(state).value)
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if updated_before is not None:
            where.append("updated_at < ?")
            args.append(utc_iso(updated_before))
        if cancel_requested is not None:
            where.append(_CANCEL_REQUESTED[bool(cancel_requested)])
        if created_after is not None:
            where.append("created_at >= ?")
            args.append(utc_iso(created_after))
        if cursor:
            created_at, last_id = decode_cursor(cursor)
            where.append("(created_at, id) < (?, ?)")
            args.extend((utc_iso(created_at), str(last_id)))
        sql = "SELECT doc FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        args.append(limit + 1)
        rows = self._db.execute(sql, args).fetchall()
        items = [Job.model_validate_json(row[0]) for row in rows[:limit]]
        more = len(rows) > limit
        return JobPage(items=items, next_cursor=encode_cursor(items[-1].created_at, items[-1].id) if more else None)

    async def count_by_state(self, *, kind: str | None = None) -> dict[JobState, int]:
        if kind is None:
            rows = self._db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
        else:
            rows = self._db.execute("SELECT state, count(*) FROM jobs WHERE kind = ? GROUP BY state",
                                    (str(kind),)).fetchall()
        counts = dict.fromkeys(JobState, 0)
        counts.update((JobState(state), n) for state, n in rows)
        return counts

    async def events(self, *, job_id: uuid.UUID | None = None, after_seq: int = 0, limit: int = 1000,
                     owner: str | None = None, kind: str | None = None) -> list[JobEvent]:
        where, params = ["seq > ?"], [after_seq]
        for column, value in (("job_id", str(job_id) if job_id else None), ("owner", owner),
                              ("kind", str(kind) if kind else None)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        rows = self._db.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
            (*params, limit)).fetchall()
        return [
            JobEvent(seq=seq, job_id=uuid.UUID(jid), owner=owner, kind=kind, type=type_,
                     state=JobState(state), previous_state=JobState(prev) if prev else None, attempt=attempt,
                     at=datetime.fromisoformat(at), job=orjson.loads(doc))
            for seq, jid, owner, kind, type_, state, prev, attempt, at, doc in rows
        ]

    async def last_seq(self) -> int:
        return self._db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]

    async def create_user(self, user: StoredUser) -> bool:
        with self._write() as db:
            return db.execute(
                f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (str(user.id), user.username, user.password_hash,
                 orjson.dumps([role.value for role in user.roles]).decode(), orjson.dumps(user.permissions).decode(),
                 utc_iso(user.created_at), utc_iso(user.updated_at), user.epoch),
            ).rowcount == 1

    async def get_user(self, username: str) -> StoredUser | None:
        row = self._db.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE username = ?", (username,)).fetchone()
        return _user(row) if row is not None else None

    async def get_user_by_id(self, user_id: uuid.UUID) -> StoredUser | None:
        row = self._db.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (str(user_id),)).fetchone()
        return _user(row) if row is not None else None

    async def list_users(self) -> list[StoredUser]:
        rows = self._db.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY username").fetchall()
        return [_user(row) for row in rows]

    async def count_users(self) -> int:
        return self._db.execute("SELECT count(*) FROM users").fetchone()[0]

    async def delete_user(self, username: str) -> bool:
        with self._write() as db:
            return db.execute("DELETE FROM users WHERE username = ?", (username,)).rowcount == 1

    async def set_password(self, username: str, password_hash: str, now: datetime) -> bool:
        with self._write() as db:
            return db.execute("UPDATE users SET password_hash = ?, updated_at = ?, epoch = epoch + 1"
                              " WHERE username = ?", (password_hash, utc_iso(now), username)).rowcount == 1

    async def set_roles(self, username: str, roles: list[Role], now: datetime) -> StoredUser | None:
        with self._write() as db:
            row = db.execute(f"UPDATE users SET roles = ?, updated_at = ?, epoch = epoch + 1 WHERE username = ?"
                             f" RETURNING {_USER_COLUMNS}",
                             (orjson.dumps([role.value for role in roles]).decode(), utc_iso(now), username)
                             ).fetchone()
        return _user(row) if row is not None else None
