-- Native PostgreSQL: nothing changes. Retention stays the stream's maintenance
-- (drop_pings_partitions_before, drop_aggregates_before of migrations 0001 to 0003). The
-- TimescaleDB variant of this migration turns those into policies.
SELECT 1;
