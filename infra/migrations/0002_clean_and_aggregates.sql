-- The stream's outputs beyond raw history: each ping's H3 cell, per-driver and per-cell
-- one-minute aggregates, hourly rollups, and partition retention.

ALTER TABLE pings ADD COLUMN h3_cell bigint;

-- Aggregates are recomputed from the stored pings of the (driver|cell, minute) a batch
-- touched: these indexes serve those reads.
-- Exception (squawk), kept as applied: this migration ran before the online-migration
-- rules (docs/operations.md, "Migrations") on every database there is; a new migration
-- builds and drops indexes CONCURRENTLY and changes no column under a long lock.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX pings_cell_ts ON pings (h3_cell, ts) WHERE cardinality(flags) = 0;

-- Great-circle distance in metres (the same formula as runtime/geo.py).
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

CREATE TABLE cell_density_1m (
    cell     bigint      NOT NULL,
    bucket   timestamptz NOT NULL,
    -- squawk-ignore prefer-bigint-over-int
    drivers  integer     NOT NULL,
    PRIMARY KEY (cell, bucket)
);

CREATE TABLE driver_stats_1h (
    driver_id      text             NOT NULL,
    bucket         timestamptz      NOT NULL,
    -- squawk-ignore prefer-bigint-over-int
    pings          integer          NOT NULL,
    distance_m     double precision NOT NULL,
    avg_speed_mps  double precision,
    max_speed_mps  double precision,
    PRIMARY KEY (driver_id, bucket)
);

-- Retention: drops whole daily partitions that end on or before `before_day`.
CREATE FUNCTION drop_pings_partitions_before(before_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = 'pings' AND c.relname ~ '^pings_[0-9]{8}$'
          AND to_date(substr(c.relname, 7), 'YYYYMMDD') < before_day
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END;
$$;
