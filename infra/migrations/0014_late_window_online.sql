-- migrate: no-transaction
-- Migration 0012's heavy half, online: a stack upgraded in place gets the memberships and
-- the speed sums of the window that can still receive pings one day of pings per
-- transaction, and loses the indexes nothing reads with a short lock timeout, retried.
-- It runs after 0013 dropped stream_recompute_aggregates, so a worker still on the old
-- code stores nothing meanwhile (its flushes fail and retry), and before any worker on
-- the new code starts (`telemetry up` migrates first). Every step can run again.
--
-- Per UTC day from 8 days back (ingest's 7-day window for late pings and a day of slack,
-- as the memberships' retention) to today, each day its own transaction, one scan of the
-- day's partition or chunk:
-- * the (minute, cell, driver) memberships of the counted pings, so that a late ping into
--   one of those minutes does not count its driver there again;
-- * the minute rows' speed sums, and on native PostgreSQL the hours' (the old rollup
--   weighed each minute's average by all its pings; the hour becomes exact). A row left
--   NULL is recounted from its pings when the stream next touches it.
CREATE OR REPLACE PROCEDURE fill_late_window()
LANGUAGE plpgsql AS $$
DECLARE
    day timestamptz := date_trunc('day', now(), 'UTC') - interval '8 days';
    hourly_table boolean :=
        (SELECT relkind FROM pg_class WHERE oid = to_regclass('driver_stats_1h')) = 'r';
BEGIN
    WHILE day <= now() LOOP
        INSERT INTO cell_members_1m (bucket, cell, driver_id)
        SELECT DISTINCT date_trunc('minute', ts), h3_cell, driver_id FROM pings
        WHERE ts >= day AND ts < day + interval '1 day' AND h3_cell IS NOT NULL
            AND NOT (flags && '{future,teleport}'::text[])
        ON CONFLICT DO NOTHING;

        UPDATE driver_stats_1m m SET speed_sum = s.speed_sum, speed_n = s.speed_n
        FROM (
            SELECT driver_id, date_trunc('minute', ts) AS bucket,
                coalesce(sum(speed_mps), 0) AS speed_sum, count(speed_mps) AS speed_n
            FROM pings
            WHERE ts >= day AND ts < day + interval '1 day'
                AND NOT (flags && '{future,teleport}'::text[])
            GROUP BY 1, 2
        ) AS s
        WHERE m.driver_id = s.driver_id AND m.bucket = s.bucket AND m.speed_n IS NULL;

        IF hourly_table THEN
            UPDATE driver_stats_1h h SET speed_sum = s.speed_sum, speed_n = s.speed_n,
                avg_speed_mps = s.speed_sum / nullif(s.speed_n, 0)
            FROM (
                SELECT driver_id, date_trunc('hour', bucket) AS bucket,
                    sum(speed_sum) AS speed_sum, sum(speed_n) AS speed_n
                FROM driver_stats_1m
                WHERE bucket >= day AND bucket < day + interval '1 day'
                GROUP BY 1, 2 HAVING bool_and(speed_n IS NOT NULL)
            ) AS s
            WHERE h.driver_id = s.driver_id AND h.bucket = s.bucket AND h.speed_n IS NULL;
        END IF;

        COMMIT;
        day := day + interval '1 day';
    END LOOP;
END;
$$;
-- migrate: step
CALL fill_late_window();
-- migrate: step
-- Exception (squawk): this migration's own helper, done with once called.
-- squawk-ignore ban-drop-function
DROP PROCEDURE fill_late_window();
-- migrate: step
-- Nothing reads pings by cell any more (the density recount was its only reader), nor on
-- TimescaleDB by time alone (create_hypertable's default index: chunk exclusion,
-- retention and compression work from the chunks' ranges). Neither storage can drop them
-- CONCURRENTLY (docs/architecture.md, "Indexes on pings"): the drop waits at most a
-- second for its lock, so writers queue behind it no longer than that, and the runner
-- tries again.
SET LOCAL lock_timeout = '1s';
-- Exception (squawk): not possible CONCURRENTLY here (above); the wait for the lock is
-- bounded instead.
-- squawk-ignore require-concurrent-index-deletion
DROP INDEX IF EXISTS pings_cell_ts;
-- migrate: step
SET LOCAL lock_timeout = '1s';
-- squawk-ignore require-concurrent-index-deletion
DROP INDEX IF EXISTS pings_ts_idx;
