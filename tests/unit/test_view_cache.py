"""The read path's pure parts: the cache envelope, XFetch, If-None-Match, the in-process
cache, the database gate, and the cache's layers with Redis away (the in-process
single-flight alone)."""

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from api.errors import DatabaseBusy
from api.reads.cache import (
    CacheMetrics,
    CacheSettings,
    Envelope,
    Loaded,
    LocalCache,
    View,
    ViewCache,
    envelope,
    etag_of,
)
from api.reads.routing import DbGate, ReadMetrics
from api.reads.views import answer
from jobs.errors import NotFound

VIEW = View("job", fresh_s=2.0, stale_s=30.0)


def test_an_envelope_survives_its_encoding_and_its_etag_follows_the_body() -> None:
    env = envelope(VIEW, Loaded(b'{"a":1}\n{"b":2}', 42, ("cus-1", None)), 0.003, 1000.0)
    back = Envelope.decode(env.encode())
    assert back == env
    assert (back.fresh_until, back.stale_until) == (1002.0, 1032.0)
    assert env.etag == etag_of(b'{"a":1}\n{"b":2}') != etag_of(b'{"a":1}')
    assert env.etag.startswith('"') and env.etag.endswith('"')


def test_a_view_is_never_kept_past_its_own_end() -> None:
    env = envelope(VIEW, Loaded(b"{}", 1, expires_at=1001.0), 0.0, 1000.0)
    assert env.fresh_until == env.stale_until == 1001.0
    assert not env.usable(1001.0)


def test_xfetch_refreshes_early_only_near_the_expiry_and_sooner_for_slow_loads() -> None:
    quick = envelope(VIEW, Loaded(b"{}", 1), 0.001, 1000.0)
    slow = envelope(VIEW, Loaded(b"{}", 1), 0.5, 1000.0)
    assert not any(quick.refresh_early(1000.0) for _ in range(1000))
    assert all(quick.refresh_early(1002.0) for _ in range(100))
    early_quick = sum(quick.refresh_early(1001.99) for _ in range(2000))
    early_slow = sum(slow.refresh_early(1001.99) for _ in range(2000))
    assert early_slow > early_quick


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 200),
        ("MATCH", 304),
        ("W/MATCH", 304),
        ('"other", MATCH', 304),
        ("*", 304),
        ('"other"', 200),
        ("", 200),
    ],
)
def test_if_none_match_is_answered_304_with_the_same_headers(
    header: str | None, status: int
) -> None:
    env = envelope(VIEW, Loaded(b'{"x":1}', 1), 0.0, time.time())
    sent = None if header is None else header.replace("MATCH", env.etag)
    response = answer(env, sent, "private, max-age=2")
    assert response.status_code == status
    assert response.headers["ETag"] == env.etag
    assert response.headers["Cache-Control"] == "private, max-age=2"
    assert response.body == (b"" if status == 304 else b'{"x":1}')


def test_the_local_cache_forgets_expired_entries_and_the_oldest_when_full() -> None:
    local = LocalCache(max_entries=2)
    env = envelope(VIEW, Loaded(b"{}", 1), 0.0, 0.0)
    local.put("a", env, until=10.0)
    local.put("b", env, until=10.0)
    assert local.get("a", now=9.0) is env
    assert local.get("a", now=10.0) is None
    local.put("c", env, until=10.0)
    local.put("d", env, until=10.0)
    assert local.get("b", now=0.0) is None
    assert local.get("c", now=0.0) is env and local.get("d", now=0.0) is env


def test_the_gate_runs_at_most_its_limit_lets_a_few_wait_and_refuses_the_rest() -> None:
    async def scenario() -> tuple[int, int, int]:
        registry = CollectorRegistry()
        gate = DbGate(limit=2, max_waiting=3, wait_s=5.0, metrics=ReadMetrics(registry))
        running = peak = refused = 0
        release, settled = asyncio.Event(), asyncio.Event()

        def arrived() -> None:
            if running + refused == 7:  # 2 run and 5 are refused; 3 wait
                settled.set()

        async def read() -> str:
            nonlocal running, peak, refused
            try:
                async with gate.slot():
                    running += 1
                    peak = max(peak, running)
                    arrived()
                    await release.wait()
                    running -= 1
                    return "ok"
            except DatabaseBusy:
                refused += 1
                arrived()
                return "busy"

        tasks = [asyncio.create_task(read()) for _ in range(10)]
        await settled.wait()
        release.set()
        results = await asyncio.gather(*tasks)
        saturated = registry.get_sample_value("api_db_saturated_total")
        return peak, results.count("ok"), int(saturated or 0)

    peak, ok, saturated = asyncio.run(scenario())
    # 2 run, 3 wait and get a slot once the first finish, 5 are refused at once.
    assert (peak, ok, saturated) == (2, 5, 5)


def test_the_gate_refuses_a_waiter_whose_wait_runs_out() -> None:
    async def scenario() -> list[str]:
        gate = DbGate(limit=1, max_waiting=5, wait_s=0.05, metrics=ReadMetrics(CollectorRegistry()))
        hold, holding = asyncio.Event(), asyncio.Event()

        async def read() -> str:
            try:
                async with gate.slot():
                    holding.set()
                    await hold.wait()
                    return "ok"
            except DatabaseBusy:
                return "busy"

        first = asyncio.create_task(read())
        await holding.wait()
        second = await read()  # waits 50 ms for the slot the first holds, then gives up
        hold.set()
        return [await first, second]

    assert asyncio.run(scenario()) == ["ok", "busy"]


def gate_taken(gate: DbGate) -> bool:
    return gate._slots.locked()


def no_redis_cache() -> tuple[ViewCache, CacheMetrics]:
    metrics = CacheMetrics(CollectorRegistry())
    return ViewCache(None, CacheSettings(enabled=False), metrics), metrics


def test_without_redis_concurrent_readers_share_one_load_and_a_gone_waiter_does_not_cancel_it() -> (
    None
):
    async def scenario() -> tuple[int, list[bytes], int]:
        cache, metrics = no_redis_cache()
        loads = 0
        gate, started = asyncio.Event(), asyncio.Event()

        async def load(_: int) -> Loaded:
            nonlocal loads
            loads += 1
            started.set()  # every reader is waiting on this load by now (tasks run in order)
            await gate.wait()
            return Loaded(b'{"v":1}', 7)

        readers = [asyncio.create_task(cache.get(VIEW, "k", load)) for _ in range(50)]
        await started.wait()
        readers[0].cancel()  # the first reader, whose request started the load, goes away
        gate.set()
        bodies = [env.body for env in await asyncio.gather(*readers[1:])]
        coalesced = int(metrics.requests.labels("job", "coalesced")._value.get())
        return loads, bodies, coalesced

    loads, bodies, coalesced = asyncio.run(scenario())
    assert loads == 1
    assert bodies == [b'{"v":1}'] * 49
    assert coalesced == 49


def test_a_reader_whose_write_is_newer_than_the_load_in_flight_loads_past_it() -> None:
    async def scenario() -> list[tuple[int, int]]:
        cache, _ = no_redis_cache()
        started = asyncio.Event()
        gate = asyncio.Event()
        seen: list[int] = []

        async def load(min_lsn: int) -> Loaded:
            seen.append(min_lsn)
            started.set()
            await gate.wait()
            return Loaded(b"{}", max(min_lsn, 10))

        first = asyncio.create_task(cache.get(VIEW, "k", load, reader="customer:c1"))
        await started.wait()
        await cache.remember_position("customer:c2", 50)
        second = asyncio.create_task(cache.get(VIEW, "k", load, reader="customer:c2"))
        for _ in range(3):
            await asyncio.sleep(0)  # yields until the second reader waits on the load
        gate.set()
        a, b = await first, await second
        return [(a.lsn, seen[0]), (b.lsn, seen[1])]

    assert asyncio.run(scenario()) == [(10, 0), (50, 50)]


def test_a_failed_load_reaches_every_waiter_and_is_not_kept() -> None:
    async def scenario() -> tuple[list[str], int]:
        cache, _ = no_redis_cache()
        calls = 0

        async def load(_: int) -> Loaded:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0)  # yields until the others have joined this load
            raise NotFound("no job")

        results = await asyncio.gather(
            *(cache.get(VIEW, "k", load) for _ in range(5)), return_exceptions=True
        )
        with pytest.raises(NotFound):
            await cache.get(VIEW, "k", load)
        return [type(r).__name__ for r in results], calls

    names, calls = asyncio.run(scenario())
    assert names == ["NotFound"] * 5
    assert calls == 2  # the herd's one, then a new one: a failure is not cached
