"""The simulator's jobs flow against the real stack: customers order, the dispatcher
assigns, drivers drive to the pickup and the dropoff and complete with a photo."""

import uuid

import psycopg
import pytest

from bench.fleet import FleetConfig, run_fleet
from bench.jobs_flow import JobsConfig
from infra import postgres
from infra.stack import Stack
from tests.support.stack import wait_for

pytestmark = pytest.mark.integration


def test_a_simulated_city_runs_deliveries_from_order_to_completion(stack: Stack) -> None:
    prefix = f"simjobs{uuid.uuid4().hex[:6]}"
    fleet = FleetConfig(
        drivers=8,
        interval_s=0.5,
        duration_s=90.0,
        ingest_urls=stack.urls("ingest"),
        private_key_path=stack.config.jwt_private_key,
        driver_prefix=prefix,
        dead_zone_rate_per_s=0.0,
        # A dense city: short trips, so that a test sees whole deliveries.
        jobs=JobsConfig(
            stack.urls("api"),
            every_s=1.0,
            pickup_near_m=100.0,
            dropoff_m=(150.0, 250.0),
            dwell_s=(1.0, 2.0),
            poll_s=1.0,
        ),
    )
    stats = run_fleet(fleet)
    assert stats.job_failures == 0
    # Vehicles stop at some corners for up to 45 s (traffic): not every trip ends in time.
    assert stats.jobs_completed >= 1, stats.summary()["jobs"]
    assert stats.jobs_created >= stats.jobs_assigned >= stats.jobs_picked_up >= stats.jobs_completed
    # Customers read ETAs while their driver was under way, scored against the arrival.
    assert stats.eta_samples and all(sample[1] >= 0 for sample in stats.eta_samples)

    dsn = postgres.dsn(stack.config, "primary")

    def statuses() -> dict[str, int] | None:
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                "SELECT status, count(*) FROM jobs WHERE driver_id LIKE %s GROUP BY status",
                [f"{prefix}-%"],
            ).fetchall()
        found = {status: count for status, count in rows}
        # The photo worker finishes each completed delivery.
        return found if found.get("completed", 0) == stats.jobs_completed else None

    found = wait_for(statuses, timeout_s=60)
    assert sum(found.values()) == stats.jobs_assigned
    assert "completing" not in found
    with psycopg.connect(dsn) as conn:
        # The stream kept each claimed job id: every one was assigned to that driver.
        claimed = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE j.driver_id = p.driver_id)"
            " FROM pings p JOIN jobs j USING (job_id) WHERE p.driver_id LIKE %s",
            [f"{prefix}-%"],
        ).fetchone()
    assert claimed is not None and claimed[0] > 0 and claimed[0] == claimed[1]
