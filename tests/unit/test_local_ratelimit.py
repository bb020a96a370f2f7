"""The local rate limit (ingest/local_ratelimit.py), one test per promise, on a ManualClock
and an in-memory shared bucket that refills by the same clock (the Redis script's logic;
tests/integration/test_ratelimit.py runs it on the real Redis)."""

import asyncio

import pytest

from ingest.local_ratelimit import LocalBuckets, SyncedRateLimiter
from runtime.clock import ManualClock

RATE, BURST, SYNC_S = 5.0, 20, 0.25


class SharedBuckets:
    """What SYNC_LUA does, in memory: refill by elapsed time, take what was spent (down to
    -burst), answer the level."""

    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock
        self.levels: dict[str, tuple[float, float]] = {}
        self.down = False

    async def exchange(self, spent: dict[str, int]) -> dict[str, float]:
        if self.down:
            raise ConnectionError("Redis is down")
        now = self._clock.monotonic()
        out = {}
        for driver, amount in spent.items():
            tokens, at = self.levels.get(driver, (float(BURST), now))
            tokens = min(BURST, tokens + (now - at) * RATE)
            tokens = max(-BURST, tokens - amount)
            self.levels[driver] = (tokens, now)
            out[driver] = tokens
        return out


def limiter(shared: SharedBuckets, clock: ManualClock) -> SyncedRateLimiter:
    return SyncedRateLimiter(
        shared.exchange, rate_per_s=RATE, burst=BURST, sync_s=SYNC_S, clock=clock
    )


async def admitted(rl: SyncedRateLimiter, tries: int, driver: str = "drv-1") -> int:
    return sum([(await rl.check(driver)).allowed for _ in range(tries)])


def test_one_process_is_exactly_a_token_bucket() -> None:
    # 4/s and steps of 1/8 s: times and tokens exact in binary floating point.
    buckets, now = LocalBuckets(4.0, BURST), 64.0
    decisions = [buckets.take("drv-1", 1, now) for _ in range(BURST + 1)]
    assert all(d.allowed and d.checked for d in decisions[:BURST])
    assert not decisions[BURST].allowed
    assert decisions[BURST].retry_after_s == pytest.approx(1 / 4.0)
    # Over any t seconds after that: rate * t more, never a token beyond it.
    for step in range(1, 41):
        t = now + step * 0.125
        got = sum(buckets.take("drv-1", 1, t).allowed for _ in range(5))
        assert got == (1 if step % 2 == 0 else 0), step  # one every 1/4 s
    assert buckets.take("drv-2", BURST, now).allowed  # each driver has a bucket of its own


async def test_processes_learn_what_the_others_spent_at_their_next_sync() -> None:
    clock = ManualClock()
    shared = SharedBuckets(clock)
    a, b = limiter(shared, clock), limiter(shared, clock)
    assert await admitted(a, BURST) == BURST  # A takes the whole burst
    await a.sync()
    await b.sync()  # B has not seen the driver yet: nothing to report, nothing learnt
    assert await admitted(b, 1) == 1  # B starts the driver full (promise 2's slack)
    await b.sync()  # and learns the shared bucket is empty (in debt by B's one)
    assert await admitted(b, 5) == 0
    clock.advance(0.4)  # 2 tokens refilled, 1 owed
    assert await admitted(b, 5) == 1


async def test_across_processes_the_total_stays_within_the_promised_bound() -> None:
    clock = ManualClock()
    shared = SharedBuckets(clock)
    processes = [limiter(shared, clock) for _ in range(3)]
    total, seconds = 0, 10.0
    steps = int(seconds / 0.05)
    for step in range(steps):
        for rl in processes:
            total += await admitted(rl, 3)
        if step % int(SYNC_S / 0.05) == 0:
            for rl in processes:
                await rl.sync()
        clock.advance(0.05)
    n = len(processes)
    bound = BURST + RATE * seconds + (n - 1) * (BURST + RATE * SYNC_S)
    assert total <= bound, (total, bound)
    unsynced = n * (BURST + RATE * seconds)  # what three unsynced buckets would let in
    assert total < unsynced - BURST


async def test_with_redis_down_every_process_still_holds_each_driver_to_its_bucket() -> None:
    clock = ManualClock()
    shared = SharedBuckets(clock)
    failures: list[int] = []
    rl = SyncedRateLimiter(
        shared.exchange, rate_per_s=RATE, burst=BURST, sync_s=SYNC_S, clock=clock,
        on_sync_failed=lambda: failures.append(1),
    )  # fmt: skip
    shared.down = True
    assert await admitted(rl, 50) == BURST  # limited, not failed open
    await rl.sync()
    assert failures == [1]
    shared.down = False
    await rl.sync()  # what was spent while Redis was down is reported now
    assert shared.levels["drv-1"][0] == pytest.approx(0.0)


async def test_a_fresh_process_starts_a_driver_full_and_owes_nothing_for_the_old_one() -> None:
    clock = ManualClock()
    shared = SharedBuckets(clock)
    old = limiter(shared, clock)
    assert await admitted(old, 30) == BURST
    await old.close()  # its last report goes out on the way down
    assert shared.levels["drv-1"][0] == pytest.approx(0.0)
    new = limiter(shared, clock)
    assert await admitted(new, 30) == BURST  # promise 4: one more burst at most
    await new.sync()
    assert await admitted(new, 5) == 0  # and the shared debt holds it back from then on


async def test_the_sync_runs_by_itself_and_forgets_drivers_who_went_quiet() -> None:
    clock = ManualClock()
    shared = SharedBuckets(clock)
    rl = limiter(shared, clock)
    await rl.start()
    await asyncio.sleep(0)  # the sync task is asleep on the clock
    try:
        assert await admitted(rl, 1) == 1
        clock.advance(SYNC_S)
        for _ in range(5):
            await asyncio.sleep(0)
        assert "drv-1" in shared.levels  # reported without being asked
        clock.advance(BURST / RATE)
        await rl.sync()
        assert len(rl._buckets) == 0
    finally:
        await rl.close()
