-- The stream's aggregates change only by what the same transaction inserted, instead of
-- being recounted from the raw pings of every (driver|cell, minute) a batch touched. A
-- replay inserts nothing, so it changes nothing. See docs/architecture.md, "Aggregates".

-- Cell density by membership: a row per (minute, cell, driver) that counted there. A
-- driver's first counted ping in a cell-minute inserts its membership, and only a new
-- membership adds one to cell_density_1m.drivers: an exact distinct count, with no
-- recount. Kept for 8 days (the 7 days in which ingest accepts late pings, and a day of
-- slack for a lagging stream): drop_aggregates_before deletes older rows.
CREATE TABLE cell_members_1m (
    bucket     timestamptz NOT NULL,
    cell       bigint      NOT NULL,
    driver_id  text        NOT NULL,
    PRIMARY KEY (bucket, cell, driver_id)
);

-- The memberships of the window that can still receive pings, from the stored pings
-- (a stack upgraded in place would otherwise count its drivers there again).
INSERT INTO cell_members_1m (bucket, cell, driver_id)
SELECT DISTINCT date_trunc('minute', ts), h3_cell, driver_id FROM pings
WHERE ts >= now() - interval '8 days' AND h3_cell IS NOT NULL
    AND NOT (flags && '{future,teleport}'::text[]);

-- Sums that keep the averages exact under increments. NULL (rows written before this
-- migration) means "recount this row from the raw pings" the next time it is touched.
ALTER TABLE driver_stats_1m ADD COLUMN speed_sum double precision, ADD COLUMN speed_n integer;
ALTER TABLE driver_stats_1h ADD COLUMN speed_sum double precision, ADD COLUMN speed_n integer;

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
-- The hours of the window from those minutes. Their averages become exact too: the rollup
-- weighed each minute's average by all its pings, speedless ones included.
UPDATE driver_stats_1h h SET speed_sum = s.speed_sum, speed_n = s.speed_n,
    avg_speed_mps = s.speed_sum / nullif(s.speed_n, 0)
FROM (
    SELECT driver_id, date_trunc('hour', bucket) AS bucket, sum(speed_sum) AS speed_sum,
        sum(speed_n) AS speed_n
    FROM driver_stats_1m WHERE bucket >= date_trunc('hour', now() - interval '8 days')
    GROUP BY 1, 2 HAVING bool_and(speed_n IS NOT NULL)
) AS s
WHERE h.driver_id = s.driver_id AND h.bucket = s.bucket;

-- Nothing reads pings by cell any more (the density recount was its only reader).
SET LOCAL lock_timeout = '5s';
DROP INDEX IF EXISTS pings_cell_ts;

-- Memberships expire with the minute aggregates' maintenance.
CREATE OR REPLACE FUNCTION drop_aggregates_before(minutes_before timestamptz, hours_before timestamptz)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    removed bigint := 0;
BEGIN
    DELETE FROM driver_stats_1m WHERE bucket < minutes_before;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM cell_density_1m WHERE bucket < minutes_before;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    DELETE FROM cell_members_1m WHERE bucket < now() - interval '8 days';
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := removed + n;
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('driver_stats_1h')) = 'r' THEN
        DELETE FROM driver_stats_1h WHERE bucket < hours_before;
        GET DIAGNOSTICS n = ROW_COUNT;
        removed := removed + n;
    END IF;
    RETURN removed;
END;
$$;
