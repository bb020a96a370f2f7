-- TimescaleDB variant of 0012: the memberships are a hypertable with a retention policy.
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
-- slack for a lagging stream) by a retention policy.
CREATE TABLE cell_members_1m (
    bucket     timestamptz NOT NULL,
    cell       bigint      NOT NULL,
    driver_id  text        NOT NULL,
    PRIMARY KEY (bucket, cell, driver_id)
);

SELECT create_hypertable('cell_members_1m', by_range('bucket', INTERVAL '1 day'));
SELECT add_retention_policy('cell_members_1m', INTERVAL '8 days');

-- Sums that keep the averages exact under increments. NULL (rows written before this
-- migration) means "recount this row from the raw pings" the next time it is touched.
-- The hourly rollup is a continuous aggregate here, which TimescaleDB maintains.
-- Exception (squawk): speed_n counts a driver's speeds in a minute (or an hour), far
-- below 2^31, so integer is enough.
-- squawk-ignore prefer-bigint-over-int
ALTER TABLE driver_stats_1m ADD COLUMN speed_sum double precision, ADD COLUMN speed_n integer;
