-- TimescaleDB variant of 0002: the minute aggregates are hypertables and the hourly
-- rollup is a continuous aggregate (the stream then leaves driver_stats_1h alone).
ALTER TABLE pings ADD COLUMN h3_cell bigint;
-- Exception (squawk), kept as applied: this migration ran before the online-migration
-- rules (docs/operations.md, "Migrations") on every database there is; a new migration
-- builds and drops indexes CONCURRENTLY and changes no column under a long lock.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX pings_cell_ts ON pings (h3_cell, ts) WHERE cardinality(flags) = 0;

CREATE FUNCTION haversine_m(lat1 double precision, lon1 double precision,
                            lat2 double precision, lon2 double precision)
RETURNS double precision LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT 2 * 6371008.8 * asin(least(1.0, sqrt(
        power(sin(radians(lat2 - lat1) / 2), 2)
        + cos(radians(lat1)) * cos(radians(lat2)) * power(sin(radians(lon2 - lon1) / 2), 2))))
$$;

CREATE TABLE driver_stats_1m (
    driver_id      text             NOT NULL,
    bucket         timestamptz      NOT NULL,
    -- Exception (squawk): a count per driver or cell and minute (or hour) stays far below
    -- 2^31, so integer is enough.
    -- squawk-ignore prefer-bigint-over-int
    pings          integer          NOT NULL,
    distance_m     double precision NOT NULL,
    avg_speed_mps  double precision,
    max_speed_mps  double precision,
    PRIMARY KEY (driver_id, bucket)
);
SELECT create_hypertable('driver_stats_1m', by_range('bucket', INTERVAL '7 days'));

CREATE TABLE cell_density_1m (
    cell     bigint      NOT NULL,
    bucket   timestamptz NOT NULL,
    -- squawk-ignore prefer-bigint-over-int
    drivers  integer     NOT NULL,
    PRIMARY KEY (cell, bucket)
);
SELECT create_hypertable('cell_density_1m', by_range('bucket', INTERVAL '7 days'));

CREATE MATERIALIZED VIEW driver_stats_1h WITH (timescaledb.continuous) AS
SELECT driver_id,
       time_bucket(INTERVAL '1 hour', bucket) AS bucket,
       sum(pings)::integer AS pings,
       sum(distance_m) AS distance_m,
       sum(avg_speed_mps * pings) FILTER (WHERE avg_speed_mps IS NOT NULL)
           / nullif(sum(pings) FILTER (WHERE avg_speed_mps IS NOT NULL), 0) AS avg_speed_mps,
       max(max_speed_mps) AS max_speed_mps
FROM driver_stats_1m
GROUP BY driver_id, time_bucket(INTERVAL '1 hour', bucket)
WITH NO DATA;
SELECT add_continuous_aggregate_policy('driver_stats_1h',
    start_offset => INTERVAL '1 day', end_offset => INTERVAL '1 minute',
    schedule_interval => INTERVAL '1 minute');

-- Retention is a policy here: nothing to drop by hand.
CREATE FUNCTION drop_pings_partitions_before(before_day date) RETURNS integer
LANGUAGE sql AS $$ SELECT 0 $$;
