-- The customer API's domain: jobs, their event log, the transactional outbox, background
-- tasks, share links and idempotency keys. Plain tables on either storage. Ids are UUIDv7
-- made by the api (time-ordered: index locality, no central sequence).

CREATE TABLE jobs (
    job_id          uuid             PRIMARY KEY,
    -- The customer the job belongs to (a customer's own sub, or named by a dispatcher);
    -- NULL for a dispatcher's job on nobody's behalf.
    customer_id     text,
    created_by      text             NOT NULL,
    status          text             NOT NULL CHECK (status IN
                        ('created', 'assigned', 'picked_up', 'completing', 'completed',
                         'cancelled')),
    driver_id       text,
    pickup_lat      double precision NOT NULL,
    pickup_lon      double precision NOT NULL,
    dropoff_lat     double precision NOT NULL,
    dropoff_lon     double precision NOT NULL,
    reference       text,
    -- The seq of the job's newest event: the next event gets seq + 1 in the same
    -- transaction that changes the row (the row lock orders writers; no gaps, no reuse).
    -- Exception (squawk): a job's event count and an HTTP status stay far below 2^31, so
    -- integer is enough.
    -- squawk-ignore prefer-bigint-over-int
    seq             integer          NOT NULL DEFAULT 0,
    created_at      timestamptz      NOT NULL DEFAULT now(),
    updated_at      timestamptz      NOT NULL DEFAULT now(),
    assigned_at     timestamptz,
    picked_up_at    timestamptz,
    completed_at    timestamptz,
    -- When the driver first came within the arrival radius of the dropoff (the stream).
    arrived_at      timestamptz
);
-- The caller's jobs, newest first, cursor-paginated by job_id (UUIDv7 sorts by time).
CREATE INDEX jobs_by_customer ON jobs (customer_id, job_id DESC);
CREATE INDEX jobs_by_driver ON jobs (driver_id, job_id DESC) WHERE driver_id IS NOT NULL;
CREATE INDEX jobs_by_id_desc ON jobs (job_id DESC);

CREATE TABLE job_events (
    job_id      uuid        NOT NULL REFERENCES jobs (job_id),
    -- squawk-ignore prefer-bigint-over-int
    seq         integer     NOT NULL CHECK (seq > 0),
    type        text        NOT NULL,
    data        jsonb       NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, seq)
);

-- Rows to publish, written in the transaction of the change they announce; a relay
-- publishes them in id order (so in seq order per job) and marks them sent.
CREATE TABLE outbox (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic       text        NOT NULL,
    key         text        NOT NULL,
    payload     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;

CREATE TABLE tasks (
    task_id     uuid        PRIMARY KEY,
    kind        text        NOT NULL,
    job_id      uuid        REFERENCES jobs (job_id),
    status      text        NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    input       jsonb       NOT NULL DEFAULT '{}',
    result      jsonb,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE share_links (
    -- sha256 of the token: a leaked table does not leak working links
    token_hash  bytea       PRIMARY KEY,
    job_id      uuid        NOT NULL REFERENCES jobs (job_id),
    created_by  text        NOT NULL,
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A POST retried with the same Idempotency-Key by the same principal gets the first
-- answer again; the same key with another body is refused.
CREATE TABLE idempotency_keys (
    principal      text        NOT NULL,
    key            text        NOT NULL,
    request_hash   bytea       NOT NULL,
    -- squawk-ignore prefer-bigint-over-int
    status         integer     NOT NULL,
    response       bytea       NOT NULL,  -- the first answer's exact body
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- The stream's `job.arrived`: the job's next seq, its event and its outbox row, in the
-- stream's transaction; only the first arrival after the pickup counts. A function, so the
-- event's shape is written once in the database rather than in the stream (services never
-- import each other; the api writes the other events).
CREATE FUNCTION job_arrived(p_job_id uuid) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    j jobs%ROWTYPE;
    data jsonb;
BEGIN
    UPDATE jobs SET arrived_at = now(), seq = seq + 1, updated_at = now()
    WHERE job_id = p_job_id AND arrived_at IS NULL AND status IN ('picked_up', 'completing')
    RETURNING * INTO j;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    data := jsonb_build_object('driver_id', j.driver_id);
    INSERT INTO job_events (job_id, seq, type, data, at)
    VALUES (j.job_id, j.seq, 'job.arrived', data, j.updated_at);
    INSERT INTO outbox (topic, key, payload)
    VALUES ('job-events.v1', j.job_id::text, jsonb_build_object(
        'v', 1, 'job_id', j.job_id, 'seq', j.seq, 'type', 'job.arrived', 'status', j.status,
        'at', j.updated_at, 'data', data));
    RETURN true;
END;
$$;
