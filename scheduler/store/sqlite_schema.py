"""The tables of :mod:`scheduler.store.sqlite`, and bringing a file written by an older version up to them."""

from __future__ import annotations

import sqlite3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    job_id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    state TEXT NOT NULL,
    ready_at REAL NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    lease_id TEXT,
    lease_expires_at REAL,
    job TEXT NOT NULL,
    error TEXT,
    died_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS entries_dequeue ON entries (queue, state, ready_at, seq);
CREATE INDEX IF NOT EXISTS entries_lease ON entries (state, lease_expires_at);
-- The dead letters in their list's order, paged by keyset. Only dead entries are in it: a live entry's
-- insert, lease and ack would otherwise each write it too (a file's older entries_died and entries_dead,
-- which held every entry, give way to it).
CREATE INDEX IF NOT EXISTS entries_dead_letters ON entries (died_at, job_id) WHERE state = 'dead';
CREATE TABLE IF NOT EXISTS counters (
    queue TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (queue, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sequence (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO sequence (name, value) VALUES ('seq', 0);
CREATE TABLE IF NOT EXISTS paused (
    queue TEXT PRIMARY KEY
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lengths (
    queue TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS lengths_insert AFTER INSERT ON entries WHEN new.state != 'dead' BEGIN
    INSERT INTO lengths (queue, value) VALUES (new.queue, 1)
        ON CONFLICT (queue) DO UPDATE SET value = value + 1;
END;
CREATE TRIGGER IF NOT EXISTS lengths_delete AFTER DELETE ON entries WHEN old.state != 'dead' BEGIN
    UPDATE lengths SET value = value - 1 WHERE queue = old.queue;
END;
CREATE TRIGGER IF NOT EXISTS lengths_update AFTER UPDATE OF state ON entries
WHEN (old.state = 'dead') != (new.state = 'dead') BEGIN
    UPDATE lengths SET value = value + (CASE WHEN new.state = 'dead' THEN -1 ELSE 1 END) WHERE queue = new.queue;
END;
"""

# Every queue that ever held an entry has an "enqueued" counter; its length is what is not dead.
_RECOUNT = """
DELETE FROM lengths;
INSERT INTO lengths (queue, value) SELECT DISTINCT queue, 0 FROM counters;
INSERT INTO lengths (queue, value) SELECT queue, COUNT(*) FROM entries WHERE state != 'dead' GROUP BY queue
    ON CONFLICT (queue) DO UPDATE SET value = excluded.value;
"""


def create_or_migrate(db: sqlite3.Connection) -> None:
    """Create what is missing, bring an older file's tables up to date and count the queue lengths afresh,
    in one transaction (a failure leaves the file as it was)."""
    db.executescript(_SCHEMA)
    db.execute("BEGIN IMMEDIATE")
    # A file written before cancel flags existed gets the column (every entry unflagged).
    columns = {row[1] for row in db.execute("PRAGMA table_info(entries)")}
    if "cancel_requested" not in columns:
        db.execute("ALTER TABLE entries ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0")
    # And one written before priorities gets them (every entry 0), with their index.
    if "priority" not in columns:
        db.execute("ALTER TABLE entries ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")
    db.execute("DROP INDEX IF EXISTS entries_died")
    db.execute("DROP INDEX IF EXISTS entries_dead")
    db.execute("CREATE INDEX IF NOT EXISTS entries_priority ON entries (queue, state, priority DESC, ready_at, seq)")
    for statement in filter(str.strip, _RECOUNT.split(";")):
        db.execute(statement)
    db.execute("COMMIT")
