-- The stream's aggregates change only by what the same transaction inserted, instead of
-- being recounted from the raw pings of every (driver|cell, minute) a batch touched. A
-- replay inserts nothing, so it changes nothing. See docs/architecture.md, "Aggregates".
--
-- Quick on any database: filling the memberships and sums of the window that can still
-- receive pings, and dropping the indexes nothing reads, are migration 0014's work, done
-- in bounded transactions.

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

-- Sums that keep the averages exact under increments. NULL (rows written before this
-- migration) means "recount this row from the raw pings" the next time it is touched.
-- Exception (squawk): speed_n counts a driver's speeds in a minute (or an hour), far
-- below 2^31, so integer is enough.
-- squawk-ignore prefer-bigint-over-int
ALTER TABLE driver_stats_1m ADD COLUMN speed_sum double precision, ADD COLUMN speed_n integer;
-- squawk-ignore prefer-bigint-over-int
ALTER TABLE driver_stats_1h ADD COLUMN speed_sum double precision, ADD COLUMN speed_n integer;

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
