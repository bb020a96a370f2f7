"""The ETA, pure: distance, road factor, speed clamping, stops, staleness."""

from datetime import UTC, datetime, timedelta

import pytest

from api.eta import EtaSettings, estimate, road_distance_m
from runtime.geo import destination

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
HERE = (12.97, 77.59)
S = EtaSettings()


def east(metres: float) -> tuple[float, float]:
    return destination(*HERE, 90.0, metres)


def test_long_trips_use_the_road_factor_and_the_recent_speed() -> None:
    eta = estimate(HERE, NOW, 10.0, [east(10_000)], NOW)
    assert eta.basis == "live"
    assert eta.seconds == pytest.approx(10_000 * 1.3 / 10.0, abs=2)


def test_short_trips_detour_more() -> None:
    assert road_distance_m(HERE, east(1000), S) == pytest.approx(1400, rel=1e-3)
    assert road_distance_m(HERE, east(3000), S) == pytest.approx(3900, rel=1e-3)


def test_the_speed_is_clamped_to_what_a_city_delivery_does() -> None:
    stopped = estimate(HERE, NOW, 0.0, [east(10_000)], NOW)  # waiting at a light
    assert stopped.seconds == pytest.approx(10_000 * 1.3 / S.min_speed_mps, abs=2)
    racing = estimate(HERE, NOW, 60.0, [east(10_000)], NOW)  # a GPS glitch
    assert racing.seconds == pytest.approx(10_000 * 1.3 / S.max_speed_mps, abs=2)


def test_a_pickup_ahead_adds_its_leg_and_its_dwell() -> None:
    direct = estimate(HERE, NOW, 10.0, [east(10_000)], NOW).seconds
    via = estimate(HERE, NOW, 10.0, [east(5_000), east(10_000)], NOW).seconds
    assert via == pytest.approx(direct + S.dwell_s, abs=2)


def test_a_stale_position_falls_back_to_a_typical_speed_and_says_so() -> None:
    old = NOW - timedelta(seconds=S.stale_after_s + 1)
    eta = estimate(HERE, old, 15.0, [east(10_000)], NOW)
    assert eta.basis == "stale_position"
    assert eta.seconds == pytest.approx(10_000 * 1.3 / S.fallback_speed_mps, abs=2)
    unknown_speed = estimate(HERE, NOW, None, [east(10_000)], NOW)
    assert unknown_speed.basis == "live"
    assert unknown_speed.seconds == pytest.approx(10_000 * 1.3 / S.fallback_speed_mps, abs=2)


def test_arrived_is_zero_and_far_is_capped() -> None:
    assert estimate(HERE, NOW, 10.0, [HERE], NOW).seconds == 0
    assert estimate(HERE, NOW, 10.0, [(-33.9, 151.2)], NOW).seconds == S.max_eta_s
