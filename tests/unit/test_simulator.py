"""The fleet simulator's pure parts: routes, the driver app's offline buffer, retries."""

import io
import itertools
import random
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import jwt
import pytest

from bench.driver_app import DriverApp
from bench.jobs_flow import Action, Courier, Order, Phase, proof_photo
from bench.retry import RetryPolicy, parse_retry_after
from bench.routes import CITIES, Vehicle, random_route, route_between
from bench.scenarios import storage as storage_scenario
from bench.stats import FleetStats
from bench.tokens import Tokens
from runtime.auth import TokenVerifier, generate_keypair
from runtime.clock import ManualClock
from runtime.geo import bearing_deg, destination, haversine_m
from schemas.auth import JWT_AUDIENCE, JWT_ISSUER
from schemas.pings import PingBatchRecord

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CITY = CITIES["bengaluru"]


def app(seed: int = 7, **kwargs: object) -> DriverApp:
    rng = random.Random(seed)
    return DriverApp(driver_id="d", vehicle=Vehicle(rng, CITY), rng=rng, interval_s=1.0, **kwargs)  # type: ignore[arg-type]


def test_routes_stay_in_the_city_with_street_length_legs() -> None:
    rng = random.Random(3)
    for _ in range(50):
        route = random_route(rng, CITY, legs=10)
        assert len(route) == 11
        assert all(CITY.contains(p) for p in route)
        legs = [haversine_m(*a, *b) for a, b in itertools.pairwise(route)]
        assert all(140 <= leg <= 1510 for leg in legs)


@pytest.mark.parametrize("seed", range(5))
def test_vehicle_speeds_are_realistic_and_it_never_teleports(seed: int) -> None:
    vehicle = Vehicle(random.Random(seed), CITY)
    previous = vehicle.advance(0.0)
    for _ in range(3000):  # 50 minutes of driving, one-second steps
        fix = vehicle.advance(1.0)
        assert 0.0 <= fix.speed_mps <= vehicle.max_speed_mps
        # True position moves at most max speed per second (corner cutting aside).
        assert (
            haversine_m(previous.lat, previous.lon, fix.lat, fix.lon) <= vehicle.max_speed_mps + 0.5
        )
        assert CITY.contains((fix.lat, fix.lon))
        previous = fix


def test_vehicle_stops_sometimes() -> None:
    vehicle = Vehicle(random.Random(11), CITY, stop_probability=1.0)
    speeds = [vehicle.advance(1.0).speed_mps for _ in range(1200)]
    assert any(s == 0.0 for s in speeds)
    assert any(s > 0.0 for s in speeds)


def test_reported_fixes_are_noisy_but_never_teleport_unless_asked() -> None:
    driver = app()
    pings = [driver.record_fix(T0 + timedelta(seconds=i)) for i in range(2000)]
    jumps = [
        haversine_m(a["lat"], a["lon"], b["lat"], b["lon"]) for a, b in itertools.pairwise(pings)
    ]
    assert max(jumps) < 100.0  # 100 m/s is the stream's teleport threshold
    assert len({p["ping_id"] for p in pings}) == len(pings)

    jumpy = app(teleport_probability=0.05)
    pings = [jumpy.record_fix(T0 + timedelta(seconds=i)) for i in range(400)]
    jumps = [
        haversine_m(a["lat"], a["lon"], b["lat"], b["lon"]) for a, b in itertools.pairwise(pings)
    ]
    assert max(jumps) > 1000.0


def test_offline_fixes_are_buffered_and_flushed_as_one_batch_when_back() -> None:
    driver = app(dead_zone_rate_per_s=1.0, dead_zone_s=(30.0, 30.0))
    driver.record_fix(T0)  # enters a 30 s dead zone right away
    assert not driver.online(T0 + timedelta(seconds=1))
    for i in range(1, 20):
        driver.record_fix(T0 + timedelta(seconds=i))
    assert driver.take_batch(T0 + timedelta(seconds=20)) == []
    flushed = driver.take_batch(T0 + timedelta(seconds=31))
    assert len(flushed) == 20
    assert [p["ts"] for p in flushed] == sorted(p["ts"] for p in flushed)


def test_offline_buffer_is_bounded_and_counts_what_it_drops() -> None:
    driver = app(dead_zone_rate_per_s=1.0, dead_zone_s=(1e6, 1e6), buffer_max=50)
    for i in range(80):
        driver.record_fix(T0 + timedelta(seconds=i))
    assert len(driver.outbox) == 50
    assert driver.dropped == 30
    batches = [driver.take_batch(T0 + timedelta(days=30), max_pings=20) for _ in range(3)]
    assert [len(b) for b in batches] == [20, 20, 10]


def test_retry_policy_honours_retry_after_and_gives_up() -> None:
    policy = RetryPolicy(max_attempts=3, base_s=0.5, cap_s=10.0)
    rng = random.Random(1)
    delay = policy.delay_s(0, 503, "2", rng, T0)
    assert delay is not None and 2.0 <= delay <= 2.5
    assert policy.delay_s(0, 429, "1", rng, T0) is not None
    backoff = policy.delay_s(2, None, None, rng, T0)
    assert backoff is not None and 0.0 <= backoff <= 2.0
    assert policy.delay_s(3, 503, "1", rng, T0) is None  # out of attempts
    assert policy.delay_s(0, 400, None, rng, T0) is None  # the same bytes fail again
    assert policy.delay_s(0, 401, None, rng, T0) is None


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert parse_retry_after("3", T0) == 3.0
    assert parse_retry_after("Fri, 27 Nov 2026 12:00:05 GMT", T0) == 5.0
    assert parse_retry_after("soon", T0) is None
    assert parse_retry_after(None, T0) is None


def test_stats_merge_across_processes() -> None:
    a, b = FleetStats(), FleetStats()
    a.accepted, b.accepted = 10, 5
    a.record_latency(0.010)
    b.record_latency(0.020)
    b.count_status(202)
    a.eta_samples.append([1.0, 60.0, "live", "picked_up"])
    b.eta_samples.append([-2.0, 30.0, "live", "assigned"])
    merged = FleetStats.merged([a.snapshot(), b.snapshot()])
    assert merged.accepted == 15
    assert merged.eta_samples == [
        [1.0, 60.0, "live", "picked_up"],
        [-2.0, 30.0, "live", "assigned"],
    ]
    assert merged.latency_us.get_total_count() == 2
    assert merged.status_counts == {"202": 1}
    assert 19.0 <= merged.percentile_ms(100) <= 20.1


def test_a_long_running_fleet_renews_tokens_the_services_accept(tmp_path: Path) -> None:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    generate_keypair(private, public)
    clock = ManualClock(wall=time.time())
    verifier = TokenVerifier.from_file(public, audience=JWT_AUDIENCE, issuer=JWT_ISSUER)
    tokens = Tokens(private, clock=clock)
    first = tokens.get("sim-1")
    assert verifier.verify(first).sub == "sim-1"  # within the default 24 h lifetime cap
    assert tokens.get("sim-1") == first  # reused while it has long to live
    # Half an hour before it expires (PyJWT checks times against the real clock, so the
    # renewed token's claims are read rather than verified here).
    clock.advance(Tokens.TTL_S - Tokens.RENEW_BEFORE_S / 2)
    renewed = jwt.decode(tokens.get("sim-1"), options={"verify_signature": False})
    assert renewed["iat"] == int(clock.wall())
    assert renewed["exp"] - renewed["iat"] == Tokens.TTL_S <= 24 * 3600


def test_the_storage_benchmark_backlog_is_what_the_stream_accepts() -> None:
    records = list(storage_scenario.backlog_records(2_000, drivers=50))
    assert sum(len(r.pings) for r in records) == 2_000
    assert len({r.driver_id for r in records}) == 50
    for record in records:  # revalidated as the stream does: inside its window, in order
        again = PingBatchRecord.model_validate_json(record.model_dump_json())
        assert [p.ts for p in again.pings] == sorted(p.ts for p in again.pings)


def test_the_storage_benchmark_day_is_a_ping_every_4_s_per_driver() -> None:
    day = date(2026, 1, 1)
    rows = list(storage_scenario.day_rows(["a", "b"], day))
    assert len(rows) == 2 * 24 * 3600 // 4
    assert {r[1].date() for r in rows} == {day}
    assert rows[1][1] - rows[0][1] == timedelta(seconds=4)


def test_a_route_to_a_place_runs_along_the_grid_and_ends_there() -> None:
    rng = random.Random(5)
    for _ in range(100):
        start, end = CITY.random_point(rng), CITY.random_point(rng)
        route = route_between(rng, CITY, start, end)
        assert route[0] == start and route[-1] == end
        straight = haversine_m(*start, *end)
        driven = sum(haversine_m(*a, *b) for a, b in itertools.pairwise(route))
        # Along two axes: between the straight line and its two sides (sqrt 2 at most).
        assert straight - 1.0 <= driven <= straight * 2**0.5 * 1.01
        for a, b in itertools.pairwise(route[:-1]):  # the last leg absorbs the rounding
            turn = (bearing_deg(*a, *b) - CITY.grid_angle_deg) % 90.0
            assert min(turn, 90.0 - turn) < 1.0


def test_a_vehicle_sent_somewhere_stops_there_until_sent_on() -> None:
    vehicle = Vehicle(random.Random(2), CITY)
    target = destination(*vehicle.position(), 45.0, 3000.0)
    vehicle.drive_to(target)
    steps = 0
    while not vehicle.arrived:
        vehicle.advance(1.0)
        steps += 1
        assert steps < 3000
    fix = vehicle.advance(30.0)
    assert (fix.lat, fix.lon) == target and fix.speed_mps == 0.0
    vehicle.wander()
    assert not vehicle.arrived
    moved = vehicle.advance(60.0)
    assert haversine_m(target[0], target[1], moved.lat, moved.lon) > 0.0


def test_a_courier_drives_to_the_pickup_and_the_dropoff_and_says_when() -> None:
    driver = app(seed=3, dead_zone_rate_per_s=0.0)
    courier = Courier(driver, dwell_s=(10.0, 10.0))
    here = driver.vehicle.position()
    order = Order(
        "job-1", "cust-1", destination(*here, 90.0, 800.0), destination(*here, 0.0, 900.0)
    )
    courier.take(order)
    assert courier.phase is Phase.TO_PICKUP and driver.job_id == "job-1"
    t = 0.0

    def drive_until(phase: Phase) -> None:
        nonlocal t
        while courier.phase is not phase:
            t += 1.0
            ping = driver.record_fix(T0 + timedelta(seconds=t))
            assert ping["job_id"] == "job-1"
            courier.observe(t)
            assert t < 3600

    drive_until(Phase.AT_PICKUP)
    assert haversine_m(*driver.vehicle.position(), *order.pickup) < 1.0
    assert courier.due(t + 5.0) is None  # loading
    assert courier.due(t + 10.0) is Action.PICKUP
    courier.picked_up()
    drive_until(Phase.AT_DROPOFF)
    assert order.arrived_at == t
    assert courier.due(t + 10.0) is Action.COMPLETE
    courier.release()
    assert courier.idle and driver.job_id is None
    assert "job_id" not in driver.record_fix(T0 + timedelta(seconds=t + 1))


def test_etas_are_scored_against_the_true_arrival() -> None:
    order = Order("j", "c", (0.0, 0.0), (0.0, 0.01))
    order.etas = [(100.0, 250, "live", "assigned"), (200.0, 90, "live", "picked_up")]
    assert order.scored() == []  # not there yet: nothing to score
    order.arrived_at = 300.0
    # Read at 100 s, said 250 s: predicted 350, 50 s too pessimistic; at 200 s, 90 s: the
    # driver came 10 s later than predicted.
    assert order.scored() == [
        [50.0, 200.0, "live", "assigned"],
        [-10.0, 100.0, "live", "picked_up"],
    ]


def test_the_proof_photo_is_a_real_jpeg() -> None:
    from PIL import Image

    photo = proof_photo(random.Random(1))
    with Image.open(io.BytesIO(photo)) as image:
        image.load()
        assert image.format == "JPEG" and image.size == (640, 480)
