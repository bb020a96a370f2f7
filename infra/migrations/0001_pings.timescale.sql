-- TimescaleDB variant of 0001 (used when the extension is available on a new database):
-- pings is a hypertable with compression and retention policies instead of native
-- daily partitions.
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE pings (
    driver_id    text             NOT NULL,
    ts           timestamptz      NOT NULL,
    ping_id      uuid             NOT NULL,
    lat          double precision NOT NULL,
    lon          double precision NOT NULL,
    accuracy_m   real,
    speed_mps    real,
    heading_deg  real,
    battery_pct  real,
    job_id       uuid,
    received_at  timestamptz      NOT NULL,
    flags        text[]           NOT NULL DEFAULT '{}',
    PRIMARY KEY (driver_id, ts, ping_id)
);
SELECT create_hypertable('pings', by_range('ts', INTERVAL '1 day'));
ALTER TABLE pings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'driver_id',
    timescaledb.compress_orderby = 'ts'
);
-- Compress once a chunk is past the 7 days in which ingest still accepts late pings.
SELECT add_compression_policy('pings', INTERVAL '8 days');
SELECT add_retention_policy('pings', INTERVAL '30 days');

-- TimescaleDB creates chunks itself: the stream's partition maintenance has nothing to do.
CREATE FUNCTION ensure_pings_partitions(from_day date, to_day date) RETURNS integer
LANGUAGE sql AS $$ SELECT 0 $$;

CREATE TABLE driver_positions (
    driver_id    text             PRIMARY KEY,
    ts           timestamptz      NOT NULL,
    ping_id      uuid             NOT NULL,
    lat          double precision NOT NULL,
    lon          double precision NOT NULL,
    speed_mps    real,
    heading_deg  real,
    accuracy_m   real,
    job_id       uuid,
    updated_at   timestamptz      NOT NULL DEFAULT now()
);
