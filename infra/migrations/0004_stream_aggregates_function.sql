-- The stream's aggregate step, run once per batch inside the sink's transaction, after the
-- batch's new pings were inserted and listed in the temp table pings_new. A function rather
-- than statements sent by the worker: behind PgBouncer's transaction mode the worker cannot
-- use prepared statements, and these queries (over a partitioned table) cost more to plan
-- than to run for the small batches of a steady stream; PL/pgSQL caches their plans per
-- server connection.
--
-- Which pings count: NOT (flags && '{future,teleport}') (late ones do), spelled as in the
-- partial index of migration 0003. The step from a minute's last ping to the next minute's
-- first belongs to the later minute: so the minute after each new ping is touched too, and
-- each minute reads the last ping of the minute before it for its first step.
CREATE FUNCTION stream_recompute_aggregates(maintain_hourly boolean) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- Cells span drivers, so partitions, so workers: serialise writers of a cell-minute,
    -- in key order (no deadlocks).
    PERFORM count(pg_advisory_xact_lock(k)) FROM (
        SELECT DISTINCT hashtextextended('cell:' || h3_cell || ':' || date_trunc('minute', ts), 0) AS k
        FROM pings_new WHERE NOT (flags && '{future,teleport}'::text[]) ORDER BY k
    ) AS keys;

    WITH touched AS (
        SELECT DISTINCT driver_id, b.bucket
        FROM pings_new, LATERAL (VALUES (date_trunc('minute', ts)),
                                       (date_trunc('minute', ts) + interval '1 minute')) AS b(bucket)
        WHERE NOT (flags && '{future,teleport}'::text[])
    ), counted AS (
        SELECT p.driver_id, t.bucket, p.ts, p.ping_id, p.lat, p.lon, p.speed_mps
        FROM touched t JOIN pings p ON p.driver_id = t.driver_id
            AND p.ts >= t.bucket AND p.ts < t.bucket + interval '1 minute'
        WHERE NOT (p.flags && '{future,teleport}'::text[])
        UNION ALL
        -- only the previous minute's last ping, for the first step (one index probe)
        SELECT t.driver_id, t.bucket, prev.ts, prev.ping_id, prev.lat, prev.lon, NULL
        FROM touched t CROSS JOIN LATERAL (
            SELECT p.ts, p.ping_id, p.lat, p.lon FROM pings p
            WHERE p.driver_id = t.driver_id
                AND p.ts >= t.bucket - interval '1 minute' AND p.ts < t.bucket
                AND NOT (p.flags && '{future,teleport}'::text[])
            ORDER BY p.ts DESC, p.ping_id DESC LIMIT 1
        ) AS prev
    ), steps AS (
        SELECT driver_id, bucket, ts, speed_mps,
            haversine_m(lag(lat) OVER w, lag(lon) OVER w, lat, lon) AS step_m
        FROM counted WINDOW w AS (PARTITION BY driver_id, bucket ORDER BY ts, ping_id)
    )
    INSERT INTO driver_stats_1m
        (driver_id, bucket, pings, distance_m, avg_speed_mps, max_speed_mps)
    SELECT driver_id, bucket, count(*), coalesce(sum(step_m), 0), avg(speed_mps), max(speed_mps)
    FROM steps WHERE ts >= bucket GROUP BY driver_id, bucket
    ON CONFLICT (driver_id, bucket) DO UPDATE SET
        pings = excluded.pings, distance_m = excluded.distance_m,
        avg_speed_mps = excluded.avg_speed_mps, max_speed_mps = excluded.max_speed_mps;

    WITH touched AS (
        SELECT DISTINCT h3_cell AS cell, date_trunc('minute', ts) AS bucket
        FROM pings_new WHERE NOT (flags && '{future,teleport}'::text[])
    )
    INSERT INTO cell_density_1m (cell, bucket, drivers)
    SELECT t.cell, t.bucket, count(DISTINCT p.driver_id)
    FROM touched t JOIN pings p ON p.h3_cell = t.cell
        AND p.ts >= t.bucket AND p.ts < t.bucket + interval '1 minute'
    WHERE NOT (p.flags && '{future,teleport}'::text[])
    GROUP BY t.cell, t.bucket
    ON CONFLICT (cell, bucket) DO UPDATE SET drivers = excluded.drivers;

    -- Hourly rollups from the minute rows; on TimescaleDB a continuous aggregate instead.
    IF maintain_hourly THEN
        WITH touched AS (
            -- the minute after a ping may lie in the next hour (see _DRIVER_STATS)
            SELECT DISTINCT driver_id, date_trunc('hour', b.ts) AS bucket
            FROM pings_new, LATERAL (VALUES (ts), (ts + interval '1 minute')) AS b(ts)
            WHERE NOT (flags && '{future,teleport}'::text[])
        )
        INSERT INTO driver_stats_1h
            (driver_id, bucket, pings, distance_m, avg_speed_mps, max_speed_mps)
        SELECT m.driver_id, t.bucket, sum(m.pings), sum(m.distance_m),
            -- minute averages weighted by their ping counts
            sum(m.avg_speed_mps * m.pings) FILTER (WHERE m.avg_speed_mps IS NOT NULL)
                / nullif(sum(m.pings) FILTER (WHERE m.avg_speed_mps IS NOT NULL), 0),
            max(m.max_speed_mps)
        FROM touched t JOIN driver_stats_1m m ON m.driver_id = t.driver_id
            AND m.bucket >= t.bucket AND m.bucket < t.bucket + interval '1 hour'
        GROUP BY m.driver_id, t.bucket
        ON CONFLICT (driver_id, bucket) DO UPDATE SET
            pings = excluded.pings, distance_m = excluded.distance_m,
            avg_speed_mps = excluded.avg_speed_mps, max_speed_mps = excluded.max_speed_mps;
    END IF;
END;
$$;
