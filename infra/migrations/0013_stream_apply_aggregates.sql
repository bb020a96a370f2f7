-- The stream's aggregate step, run once per batch inside the sink's transaction, after the
-- batch's pings were inserted and the inserted ones listed in the temp table
-- pings_inserted. It replaces stream_recompute_aggregates (migration 0004): aggregates
-- now change only by what the transaction inserted (docs/architecture.md, "Aggregates").
--
-- Which pings count: NOT (flags && '{future,teleport}') (late ones do). The step from a
-- ping to the next counted one of its driver belongs to the later ping's minute, when the
-- earlier one lies in that minute or the one before it.
--
-- Driver minutes take one of two paths per driver:
-- * increments, when none of the driver's new counted pings is `late`: each came after
--   every counted ping stored before (those are never newer than the driver's latest
--   position, which each of these passed), so the minutes gain exactly the new pings and
--   the steps into them, the first step from the newest stored ping before them (one
--   index probe);
-- * an exact recount from the raw pings of each minute touched, and of the minute after
--   it (a late ping changes the first step of the next minute), otherwise. Rows written
--   before migration 0012 (NULL sums) are recounted the same way.
-- Cell minutes count memberships (migration 0012); the hourly rollup, where the stream
-- keeps it (native PostgreSQL), takes the minutes' increments or is recomputed from the
-- minute rows of the hours recounted.
-- Exception (squawk): the stream, its only caller, calls stream_apply_aggregates from
-- this release on.
-- squawk-ignore ban-drop-function
DROP FUNCTION stream_recompute_aggregates(boolean);

-- haversine_m (migration 0002) without STRICT, so that the planner inlines it into the
-- queries below: it never inlines a STRICT SQL function whose body is not strict (least()
-- is not), and calls it row by row instead, at several microseconds a call. Callers pass
-- no NULLs.
CREATE FUNCTION step_m(lat1 double precision, lon1 double precision,
                       lat2 double precision, lon2 double precision)
RETURNS double precision LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 2 * 6371008.8 * asin(least(1.0, sqrt(
        power(sin(radians(lat2 - lat1) / 2), 2)
        + cos(radians(lat1)) * cos(radians(lat2)) * power(sin(radians(lon2 - lon1) / 2), 2))))
$$;

-- Returns how many driver minutes took each path (the stream's metrics show them).
-- Sorts by driver use COLLATE "C": any fixed order does, and the database's C.UTF-8
-- compares text through the C library, several times slower.
CREATE FUNCTION stream_apply_aggregates(maintain_hourly boolean,
    OUT incremented integer, OUT recounted integer)
LANGUAGE plpgsql AS $$
BEGIN
    -- Scratch tables for the life of the server connection, emptied at every commit.
    IF to_regclass('pg_temp.agg_deltas') IS NULL THEN
        CREATE TEMP TABLE agg_deltas (
            driver_id text, bucket timestamptz, pings integer, distance_m double precision,
            speed_sum double precision, speed_n integer, max_speed_mps double precision
        ) ON COMMIT DELETE ROWS;
        CREATE TEMP TABLE agg_recount (driver_id text, bucket timestamptz) ON COMMIT DELETE ROWS;
        CREATE TEMP TABLE agg_recount_hours (driver_id text, bucket timestamptz)
            ON COMMIT DELETE ROWS;
    END IF;

    -- Increments of the drivers none of whose new counted pings is late.
    INSERT INTO agg_deltas
    WITH counted AS (
        SELECT driver_id, ts, ping_id, lat, lon, speed_mps, flags FROM pings_inserted
        WHERE NOT (flags && '{future,teleport}'::text[])
    ), fast AS (
        SELECT driver_id, min(ts) AS first_ts FROM counted GROUP BY driver_id
        HAVING NOT bool_or('late' = ANY(flags))
    ), anchored AS (
        SELECT c.driver_id, c.ts, c.ping_id, c.lat, c.lon, c.speed_mps, false AS anchor
        FROM counted c JOIN fast f USING (driver_id)
        UNION ALL
        SELECT f.driver_id, a.ts, a.ping_id, a.lat, a.lon, NULL, true
        FROM fast f CROSS JOIN LATERAL (
            SELECT p.ts, p.ping_id, p.lat, p.lon FROM pings p
            WHERE p.driver_id = f.driver_id
                AND p.ts >= date_trunc('minute', f.first_ts) - interval '1 minute'
                AND p.ts < f.first_ts
                AND NOT (p.flags && '{future,teleport}'::text[])
            ORDER BY p.ts DESC, p.ping_id DESC LIMIT 1
        ) AS a
    ), steps AS (
        SELECT driver_id, ts, speed_mps, anchor, prev_ts,
            CASE WHEN prev_ts IS NOT NULL THEN step_m(prev_lat, prev_lon, lat, lon) END AS step_m
        FROM (
            SELECT driver_id, ts, lat, lon, speed_mps, anchor, lag(ts) OVER w AS prev_ts,
                lag(lat) OVER w AS prev_lat, lag(lon) OVER w AS prev_lon
            FROM anchored WINDOW w AS (PARTITION BY driver_id COLLATE "C" ORDER BY ts, ping_id)
        ) AS ordered
    )
    SELECT driver_id, date_trunc('minute', ts), count(*),
        coalesce(sum(step_m) FILTER (
            WHERE prev_ts >= date_trunc('minute', ts) - interval '1 minute'), 0),
        coalesce(sum(speed_mps), 0), count(speed_mps), max(speed_mps)
    FROM steps WHERE NOT anchor GROUP BY 1, 2;

    WITH applied AS (
        INSERT INTO driver_stats_1m AS cur (driver_id, bucket, pings, distance_m,
            avg_speed_mps, max_speed_mps, speed_sum, speed_n)
        SELECT driver_id, bucket, pings, distance_m, speed_sum / nullif(speed_n, 0),
            max_speed_mps, speed_sum, speed_n
        FROM agg_deltas ORDER BY driver_id COLLATE "C", bucket
        ON CONFLICT (driver_id, bucket) DO UPDATE SET
            pings = cur.pings + excluded.pings,
            distance_m = cur.distance_m + excluded.distance_m,
            speed_sum = cur.speed_sum + excluded.speed_sum,
            speed_n = cur.speed_n + excluded.speed_n,
            avg_speed_mps = (cur.speed_sum + excluded.speed_sum)
                / nullif(cur.speed_n + excluded.speed_n, 0),
            max_speed_mps = greatest(cur.max_speed_mps, excluded.max_speed_mps)
        WHERE cur.speed_n IS NOT NULL
        RETURNING driver_id, bucket
    )
    INSERT INTO agg_recount
    SELECT d.driver_id, d.bucket FROM agg_deltas d
    WHERE NOT EXISTS (SELECT FROM applied a WHERE a.driver_id = d.driver_id AND a.bucket = d.bucket);

    -- The other drivers: every minute their new counted pings touched, recounted.
    INSERT INTO agg_recount
    SELECT DISTINCT n.driver_id, b.bucket
    FROM pings_inserted n, LATERAL (VALUES (date_trunc('minute', n.ts)),
                                           (date_trunc('minute', n.ts) + interval '1 minute')) AS b(bucket)
    WHERE NOT (n.flags && '{future,teleport}'::text[])
        AND n.driver_id IN (SELECT driver_id FROM pings_inserted WHERE 'late' = ANY(flags));

    IF maintain_hourly THEN
        WITH hourly AS (
            SELECT driver_id, date_trunc('hour', bucket) AS bucket, sum(pings) AS pings,
                sum(distance_m) AS distance_m, sum(speed_sum) AS speed_sum,
                sum(speed_n) AS speed_n, max(max_speed_mps) AS max_speed_mps
            FROM agg_deltas d
            WHERE NOT EXISTS (
                SELECT FROM agg_recount r WHERE r.driver_id = d.driver_id AND r.bucket = d.bucket)
            GROUP BY 1, 2
        ), applied AS (
            INSERT INTO driver_stats_1h AS cur (driver_id, bucket, pings, distance_m,
                avg_speed_mps, max_speed_mps, speed_sum, speed_n)
            SELECT driver_id, bucket, pings, distance_m, speed_sum / nullif(speed_n, 0),
                max_speed_mps, speed_sum, speed_n
            FROM hourly ORDER BY driver_id COLLATE "C", bucket
            ON CONFLICT (driver_id, bucket) DO UPDATE SET
                pings = cur.pings + excluded.pings,
                distance_m = cur.distance_m + excluded.distance_m,
                speed_sum = cur.speed_sum + excluded.speed_sum,
                speed_n = cur.speed_n + excluded.speed_n,
                avg_speed_mps = (cur.speed_sum + excluded.speed_sum)
                    / nullif(cur.speed_n + excluded.speed_n, 0),
                max_speed_mps = greatest(cur.max_speed_mps, excluded.max_speed_mps)
            WHERE cur.speed_n IS NOT NULL
            RETURNING driver_id, bucket
        )
        INSERT INTO agg_recount_hours
        SELECT h.driver_id, h.bucket FROM hourly h
        WHERE NOT EXISTS (SELECT FROM applied a WHERE a.driver_id = h.driver_id AND a.bucket = h.bucket)
        UNION
        SELECT driver_id, date_trunc('hour', bucket) FROM agg_recount;

        -- An hour written before migration 0012 is recomputed from exact minutes: its
        -- minutes from before then are recounted from their pings first.
        INSERT INTO agg_recount
        SELECT m.driver_id, m.bucket
        FROM (SELECT DISTINCT driver_id, bucket FROM agg_recount_hours) t
        JOIN driver_stats_1m m ON m.driver_id = t.driver_id
            AND m.bucket >= t.bucket AND m.bucket < t.bucket + interval '1 hour'
        WHERE m.speed_n IS NULL;
    END IF;

    SELECT count(*) INTO incremented FROM agg_deltas d
    WHERE NOT EXISTS (SELECT FROM agg_recount r WHERE r.driver_id = d.driver_id AND r.bucket = d.bucket);
    SELECT count(DISTINCT (driver_id, bucket)) INTO recounted FROM agg_recount;

    IF recounted > 0 THEN
        WITH touched AS (
            SELECT DISTINCT driver_id, bucket FROM agg_recount
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
                CASE WHEN prev_lat IS NOT NULL THEN step_m(prev_lat, prev_lon, lat, lon) END
                    AS step_m
            FROM (
                SELECT driver_id, bucket, ts, lat, lon, speed_mps, lag(lat) OVER w AS prev_lat,
                    lag(lon) OVER w AS prev_lon
                FROM counted WINDOW w AS (PARTITION BY driver_id COLLATE "C", bucket ORDER BY ts, ping_id)
            ) AS ordered
        )
        INSERT INTO driver_stats_1m (driver_id, bucket, pings, distance_m, avg_speed_mps,
            max_speed_mps, speed_sum, speed_n)
        SELECT driver_id, bucket, count(*), coalesce(sum(step_m), 0), avg(speed_mps),
            max(speed_mps), coalesce(sum(speed_mps), 0), count(speed_mps)
        FROM steps WHERE ts >= bucket GROUP BY driver_id, bucket ORDER BY driver_id COLLATE "C", bucket
        ON CONFLICT (driver_id, bucket) DO UPDATE SET
            pings = excluded.pings, distance_m = excluded.distance_m,
            avg_speed_mps = excluded.avg_speed_mps, max_speed_mps = excluded.max_speed_mps,
            speed_sum = excluded.speed_sum, speed_n = excluded.speed_n;
    END IF;

    IF maintain_hourly THEN
        -- Hours recomputed from their minute rows. A minute row still without sums (from
        -- before migration 0012, its pings past retention) weighs its average by its
        -- pings, as the rollup did then, and leaves the hour's sums NULL.
        WITH touched AS (SELECT DISTINCT driver_id, bucket FROM agg_recount_hours)
        INSERT INTO driver_stats_1h
            (driver_id, bucket, pings, distance_m, avg_speed_mps, max_speed_mps, speed_sum, speed_n)
        SELECT m.driver_id, t.bucket, sum(m.pings), sum(m.distance_m),
            CASE WHEN bool_and(m.speed_n IS NOT NULL)
                THEN sum(m.speed_sum) / nullif(sum(m.speed_n), 0)
                ELSE sum(m.avg_speed_mps * m.pings) FILTER (WHERE m.avg_speed_mps IS NOT NULL)
                    / nullif(sum(m.pings) FILTER (WHERE m.avg_speed_mps IS NOT NULL), 0)
            END,
            max(m.max_speed_mps),
            CASE WHEN bool_and(m.speed_n IS NOT NULL) THEN sum(m.speed_sum) END,
            CASE WHEN bool_and(m.speed_n IS NOT NULL) THEN sum(m.speed_n) END
        FROM touched t JOIN driver_stats_1m m ON m.driver_id = t.driver_id
            AND m.bucket >= t.bucket AND m.bucket < t.bucket + interval '1 hour'
        GROUP BY m.driver_id, t.bucket ORDER BY m.driver_id COLLATE "C", t.bucket
        ON CONFLICT (driver_id, bucket) DO UPDATE SET
            pings = excluded.pings, distance_m = excluded.distance_m,
            avg_speed_mps = excluded.avg_speed_mps, max_speed_mps = excluded.max_speed_mps,
            speed_sum = excluded.speed_sum, speed_n = excluded.speed_n;
    END IF;

    -- Cell minutes last: two workers' batches share them, and each holds the rows it
    -- updated until its commit. In key order: no deadlocks between workers.
    WITH joined AS (
        INSERT INTO cell_members_1m (bucket, cell, driver_id)
        SELECT DISTINCT date_trunc('minute', ts), h3_cell, driver_id FROM pings_inserted
        WHERE NOT (flags && '{future,teleport}'::text[]) AND h3_cell IS NOT NULL
        ON CONFLICT DO NOTHING
        RETURNING bucket, cell
    )
    INSERT INTO cell_density_1m AS cur (cell, bucket, drivers)
    SELECT cell, bucket, count(*) FROM joined GROUP BY cell, bucket ORDER BY cell, bucket
    ON CONFLICT (cell, bucket) DO UPDATE SET drivers = cur.drivers + excluded.drivers;
END;
$$;
