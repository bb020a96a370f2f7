-- Raw ping history, partitioned by day (native partitioning: no registry here ships
-- TimescaleDB). Every unique index must include the partition key ts.
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
) PARTITION BY RANGE (ts);

-- Creates the daily partitions covering [from_day, to_day]; safe to call again.
CREATE FUNCTION ensure_pings_partitions(from_day date, to_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day date := from_day;
    created integer := 0;
    part text;
BEGIN
    WHILE day <= to_day LOOP
        part := format('pings_%s', to_char(day, 'YYYYMMDD'));
        IF to_regclass(part) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF pings FOR VALUES FROM (%L) TO (%L)',
                part, day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
        day := day + 1;
    END LOOP;
    RETURN created;
END;
$$;

-- Ingest accepts pings up to 7 days old and 5 minutes ahead: cover that window now;
-- the streams maintenance task keeps creating days ahead.
SELECT ensure_pings_partitions((now() AT TIME ZONE 'UTC')::date - 8, (now() AT TIME ZONE 'UTC')::date + 3);

-- Latest known position per driver. Only ever moves forward in time.
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
