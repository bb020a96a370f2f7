"""Live terminal display of a running fleet (rich), and a plain line for log files."""

from rich.table import Table

from bench.stats import FleetStats


def fleet_table(stats: FleetStats, elapsed_s: float, drivers: int) -> Table:
    table = Table(title=f"simulated fleet: {drivers} drivers, {elapsed_s:,.0f} s")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rate = stats.accepted / elapsed_s if elapsed_s > 0 else 0.0
    rows = [
        ("pings sent", f"{stats.pings_sent:,}"),
        ("accepted", f"{stats.accepted:,}"),
        ("rejected", f"{stats.rejected:,}"),
        ("requests", f"{stats.requests:,}"),
        ("retried", f"{stats.retried:,}"),
        ("failed batches", f"{stats.failed_batches:,}"),
        ("dropped offline", f"{stats.dropped_offline:,}"),
        ("accepted pings/s", f"{rate:,.0f}"),
        ("latency p50", f"{stats.percentile_ms(50):.1f} ms"),
        ("latency p99", f"{stats.percentile_ms(99):.1f} ms"),
        ("jobs created / completed", f"{stats.jobs_created:,} / {stats.jobs_completed:,}"),
        ("statuses", " ".join(f"{k}:{v}" for k, v in sorted(stats.status_counts.items()))),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def fleet_line(stats: FleetStats, elapsed_s: float) -> str:
    return (
        f"t={elapsed_s:.0f}s sent={stats.pings_sent} accepted={stats.accepted} "
        f"rejected={stats.rejected} retried={stats.retried} failed={stats.failed_batches} "
        f"p50={stats.percentile_ms(50):.1f}ms p99={stats.percentile_ms(99):.1f}ms "
        f"jobs={stats.jobs_created} picked_up={stats.jobs_picked_up} "
        f"completed={stats.jobs_completed} job_failures={stats.job_failures}"
    )
