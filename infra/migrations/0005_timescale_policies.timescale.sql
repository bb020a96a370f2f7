-- TimescaleDB: retention as policies (whole chunks dropped by TimescaleDB's job scheduler),
-- real-time aggregation on the hourly rollup, and a refresh window that covers late pings.

-- Compress a chunk once its newest possible ping is past the 7 days in which ingest accepts
-- late pings (migration 0001 left a day of slack; 1-day chunks make that a day more on
-- disk uncompressed). A write that still lands in a compressed chunk (a stream lagging by
-- a day) works: TimescaleDB checks the primary key there and inserts.
SELECT remove_compression_policy('pings');
SELECT add_compression_policy('pings', INTERVAL '7 days');

-- Real-time aggregation: the hourly view adds what is not materialised yet (TimescaleDB
-- turned it off by default in 2.13).
ALTER MATERIALIZED VIEW driver_stats_1h SET (timescaledb.materialized_only = false);

-- Ingest accepts pings up to 7 days late, and a late ping rewrites its minute rows: the
-- refresh must look back that far, or the hour of a late ping stays stale for good. Only
-- invalidated buckets are recomputed, so the wider window costs nothing when none are.
SELECT remove_continuous_aggregate_policy('driver_stats_1h');
SELECT add_continuous_aggregate_policy('driver_stats_1h',
    start_offset => INTERVAL '8 days', end_offset => INTERVAL '1 minute',
    schedule_interval => INTERVAL '1 minute');

-- The aggregates' retention, at the stream's default horizons (streams/config.py); the
-- stream's maintenance keeps them equal to its settings through the functions below.
SELECT add_retention_policy('driver_stats_1m', INTERVAL '90 days');
SELECT add_retention_policy('cell_density_1m', INTERVAL '90 days');
SELECT add_retention_policy('driver_stats_1h', INTERVAL '730 days');

-- Sets a hypertable's or continuous aggregate's retention policy to `keep`, replacing the
-- policy only when its horizon differs (the stream calls this every maintenance round).
CREATE FUNCTION set_retention_policy(rel regclass, keep interval) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    current_keep interval;
BEGIN
    SELECT (j.config ->> 'drop_after')::interval INTO current_keep
    FROM timescaledb_information.jobs j
    LEFT JOIN timescaledb_information.continuous_aggregates c
        ON c.materialization_hypertable_schema = j.hypertable_schema
        AND c.materialization_hypertable_name = j.hypertable_name
    WHERE j.proc_name = 'policy_retention'
        AND format('%I.%I', coalesce(c.view_schema, j.hypertable_schema),
                   coalesce(c.view_name, j.hypertable_name))::regclass = rel;
    IF current_keep IS DISTINCT FROM keep THEN
        PERFORM remove_retention_policy(rel, if_exists => true);
        PERFORM add_retention_policy(rel, keep);
    END IF;
END;
$$;

-- The stream's maintenance calls these on either storage. On TimescaleDB they move the
-- policies' horizons to the stream's settings; the policies drop the chunks.
CREATE OR REPLACE FUNCTION drop_pings_partitions_before(before_day date) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_retention_policy('pings',
        make_interval(days => (now() AT TIME ZONE 'UTC')::date - before_day));
    RETURN 0;
END;
$$;

CREATE OR REPLACE FUNCTION drop_aggregates_before(minutes_before timestamptz,
                                                  hours_before timestamptz)
RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_retention_policy('driver_stats_1m', now() - minutes_before);
    PERFORM set_retention_policy('cell_density_1m', now() - minutes_before);
    PERFORM set_retention_policy('driver_stats_1h', now() - hours_before);
    RETURN 0;
END;
$$;
