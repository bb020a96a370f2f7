"""The manual clock tests use: it moves only when told, and wakes sleepers in order."""

import asyncio
from datetime import UTC, datetime

import pytest

from runtime.clock import ManualClock, SystemClock


async def test_a_sleeper_wakes_only_once_the_clock_passes_its_end() -> None:
    clock = ManualClock(wall=1_000.0)
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    tasks = [asyncio.create_task(sleeper("late", 5)), asyncio.create_task(sleeper("soon", 1))]
    await asyncio.sleep(0)
    clock.advance(0.5)
    await asyncio.sleep(0)
    assert woke == []
    clock.advance(10)
    await asyncio.gather(*tasks)
    assert woke == ["soon", "late"]
    assert clock.monotonic() == 10.5 and clock.wall() == 1_010.5
    assert clock.now() == datetime.fromtimestamp(1_010.5, UTC)


def test_a_clock_does_not_go_back() -> None:
    with pytest.raises(ValueError):
        ManualClock().advance(-1)


def test_the_system_clock_is_the_machines() -> None:
    clock = SystemClock()
    assert abs(clock.now().timestamp() - clock.wall()) < 5
    assert clock.monotonic() <= clock.monotonic()
