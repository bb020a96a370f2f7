-- TimescaleDB variant of 0012: the memberships are a hypertable with a retention policy.
-- The stream's aggregates change only by what the same transaction inserted, instead of
-- being recounted from the raw pings of every (driver|cell, minute) a batch touched. A
-- replay inserts nothing, so it changes nothing. See docs/architecture.md, "Aggregates".

-- Cell density by membership: a row per (minute, cell, driver) that counted there. A
-- driver's first counted ping in a cell-minute inserts its membership, and only a new
-- membership adds one to cell_density_1m.drivers: an exact distinct count, with no
-- recount. Kept for 8 days (the 7 days in which ingest accepts late pings, and a day of
-- slack for a lagging stream) by a retention policy.
CREATE TABLE cell_members_1m (
    bucket     timestamptz NOT NULL,
    cell       bigint      NOT NULL,
    driver_id  text        NOT NULL,
    PRIMARY KEY (bucket, cell, driver_id)
);

SELECT create_hypertable('cell_members_1m', by_range('bucket', INTERVAL '1 day'));
SELECT add_retention_policy('cell_members_1m', INTERVAL '8 days');

-- The memberships of the window that can still receive pings, from the stored pings
-- (a stack upgraded in place would otherwise count its drivers there again).
INSERT INTO cell_members_1m (bucket, cell, driver_id)
SELECT DISTINCT date_trunc('minute', ts), h3_cell, driver_id FROM pings
WHERE ts >= now() - interval '8 days' AND h3_cell IS NOT NULL
    AND NOT (flags && '{future,teleport}'::text[]);

-- Sums that keep the averages exact under increments. NULL (rows written before this
-- migration) means "recount this row from the raw pings" the next time it is touched.
-- The hourly rollup is a continuous aggregate here, which TimescaleDB maintains.
ALTER TABLE driver_stats_1m ADD COLUMN speed_sum double precision, ADD COLUMN speed_n integer;

-- The rows of the window that can still change get their sums now, from the stored pings.
UPDATE driver_stats_1m m SET speed_sum = s.speed_sum, speed_n = s.speed_n
FROM (
    SELECT driver_id, date_trunc('minute', ts) AS bucket,
        coalesce(sum(speed_mps), 0) AS speed_sum, count(speed_mps) AS speed_n
    FROM pings
    WHERE ts >= now() - interval '8 days' AND NOT (flags && '{future,teleport}'::text[])
    GROUP BY 1, 2
) AS s
WHERE m.driver_id = s.driver_id AND m.bucket = s.bucket;

-- Nothing reads pings by cell any more (the density recount was its only reader), nor by
-- time alone: create_hypertable's default time index goes too. Chunk exclusion, retention
-- and compression work from the chunks' ranges, not from an index.
SET LOCAL lock_timeout = '5s';
DROP INDEX IF EXISTS pings_cell_ts;
DROP INDEX IF EXISTS pings_ts_idx;
