"""The tables of :mod:`registry.store.postgres`, created (and brought up to date) by ``open`` under an
advisory lock, so that two registries starting at once take turns."""

from registry.store.postgres_instances import DDL as INSTANCES_DDL
from registry.store.postgres_schedules import DDL as SCHEDULES_DDL

DDL = """
CREATE TABLE IF NOT EXISTS jobs (
    id UUID PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    owner TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    idempotency_key TEXT,
    doc JSONB NOT NULL
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
    WHERE (doc->>'cancel_requested')::boolean;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_owner_key ON jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    seq BIGINT PRIMARY KEY,
    job_id UUID NOT NULL,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    previous_state TEXT,
    attempt INTEGER NOT NULL,
    at TIMESTAMPTZ NOT NULL,
    job JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
-- The event sequencer: the last seq handed out. A transaction takes its seqs from this one row as its
-- last statement and holds the row's lock until it commits (see registry.store.postgres_writes). A
-- database made when seq came from a sequence (BIGSERIAL) starts the counter at its highest seq, and its
-- column loses the sequence's default, so that no writer can take a seq any other way.
CREATE TABLE IF NOT EXISTS event_seq (
    only_row BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    last BIGINT NOT NULL
);
INSERT INTO event_seq (only_row, last) SELECT true, coalesce(max(seq), 0) FROM events ON CONFLICT DO NOTHING;
ALTER TABLE events ALTER COLUMN seq DROP DEFAULT;
CREATE INDEX IF NOT EXISTS events_owner ON events (owner, seq);
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    roles TEXT[] NOT NULL,
    permissions TEXT[] NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    id UUID NOT NULL,
    epoch BIGINT NOT NULL DEFAULT 1
);
-- A database made before users had ids: give each user one, and hand their jobs (owned by the username
-- until then) and those jobs' events to it, so nobody loses their jobs in the upgrade. A no-op after.
ALTER TABLE users ADD COLUMN IF NOT EXISTS id UUID;
ALTER TABLE users ADD COLUMN IF NOT EXISTS epoch BIGINT NOT NULL DEFAULT 1;
WITH given AS (UPDATE users SET id = gen_random_uuid() WHERE id IS NULL RETURNING username, id),
     moved AS (UPDATE jobs SET owner = given.id::text, doc = jsonb_set(doc, '{owner}', to_jsonb(given.id::text))
               FROM given WHERE jobs.owner = given.username RETURNING 1)
UPDATE events SET owner = given.id::text, job = jsonb_set(job, '{owner}', to_jsonb(given.id::text))
FROM given WHERE events.owner = given.username;
ALTER TABLE users ALTER COLUMN id SET NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS users_id ON users (id);
""" + INSTANCES_DDL + SCHEDULES_DDL
