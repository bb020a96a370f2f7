"""The look-aside cache of rendered views (docs/services.md, "Api: reads").

Three layers stand between a herd and the database:
- an in-process single-flight per key: one load per process, waiters share it, and a
  waiter that goes away never cancels it (`asyncio.shield`);
- a Redis lease (`SET NX PX`, released by compare-and-delete): one process cluster-wide
  recomputes an expired key;
- an envelope kept past its freshness: while one process recomputes, everyone else serves
  the stale body. Hot keys are refreshed a little early by chance (XFetch: the longer a
  load takes, the earlier), so they rarely expire at all.
A short in-process cache sits in front of Redis for the views that do not depend on who
reads them (read-your-writes needs the reader's write position, which lives in Redis).

Every envelope carries the WAL position its data was read at (`lsn`). A store never
replaces a newer envelope with an older one, and a reader whose own last write is newer
than the envelope loads past it (read-your-writes).

Redis down or slow: every call is bounded by the client's timeouts, a failure opens a
breaker for a moment, and the cache degrades to the in-process single-flight; it never
fails a request.
"""

import asyncio
import base64
import contextlib
import hashlib
import logging
import math
import random
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter
from redis.exceptions import RedisError

from runtime.clock import Clock, SystemClock

log = logging.getLogger(__name__)

# Stores an envelope unless the one there was read at a later WAL position.
STORE_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'lsn')
if current and tonumber(current) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'lsn', ARGV[1], 'env', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
# Deletes the lease only if it is still ours (it may have expired and gone to another).
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# A principal's write position: only ever raised, kept `ARGV[2]` ms after the last raise.
RAISE_LSN = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

REDIS_ERRORS = (RedisError, OSError, TimeoutError)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class View:
    """One kind of cached view and how long its entries live."""

    name: str
    fresh_s: float
    stale_s: float  # served stale this long after its freshness, while one recomputes
    local_s: float = 0.0  # the in-process cache in front of Redis (0: none)


@dataclass(frozen=True, slots=True)
class Loaded:
    """What a loader read: the rendered body, the WAL position it was read at, and who may
    see it (a job's customer and driver; None for a view anyone allowed may see)."""

    body: bytes
    lsn: int
    owners: tuple[str | None, str | None] | None = None
    expires_at: float | None = None  # wall clock: never served past this (a share link's end)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A rendered view as stored: its body and ETag, the WAL position it was read at, who may see
    it, and until when it is fresh and then usable stale."""

    body: bytes
    etag: str
    lsn: int
    owners: tuple[str | None, str | None] | None
    fresh_until: float  # wall clock (shared by every process through Redis)
    stale_until: float
    load_s: float  # how long the load took (XFetch refreshes slower loads earlier)

    def encode(self) -> bytes:
        meta = [self.etag, self.lsn, self.owners, self.fresh_until, self.stale_until, self.load_s]
        return orjson.dumps(meta) + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> "Envelope":
        head, _, body = raw.partition(b"\n")
        etag, lsn, owners, fresh_until, stale_until, load_s = orjson.loads(head)
        return cls(
            body, etag, lsn, tuple(owners) if owners else None, fresh_until, stale_until, load_s
        )

    def fresh(self, now: float) -> bool:
        return now < self.fresh_until

    def usable(self, now: float) -> bool:
        return now < self.stale_until

    def refresh_early(self, now: float, beta: float = 1.0) -> bool:
        """XFetch (Vattani et al.): true with a probability that rises as the expiry nears,
        sooner for views that take longer to load."""
        return now - self.load_s * beta * math.log(1.0 - random.random()) >= self.fresh_until


def etag_of(body: bytes) -> str:
    digest = hashlib.blake2b(body, digest_size=12).digest()
    return '"' + base64.urlsafe_b64encode(digest).decode() + '"'


def envelope(view: View, loaded: Loaded, load_s: float, now: float) -> Envelope:
    end = loaded.expires_at if loaded.expires_at is not None else math.inf
    return Envelope(
        loaded.body,
        etag_of(loaded.body),
        loaded.lsn,
        loaded.owners,
        min(now + view.fresh_s, end),
        min(now + view.fresh_s + view.stale_s, end),
        load_s,
    )


# What one Redis round trip brings: the stored envelope, the reader's write position.
Fetched = tuple[Envelope | None, int]

# A loader reads the view from the database; its argument is the lowest WAL position the
# data must include (the reader's own last write; 0 when any will do).
Loader = Callable[[int], Awaitable[Loaded]]


class CacheMetrics:
    """The view cache's Prometheus metrics (how each request was answered, Redis's failures and
    latency)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "api_cache_requests",
            "View requests by how the cache answered (hit, miss, stale, coalesced)",
            ["view", "result"],
            registry=registry,
        )
        self.unavailable = Counter(
            "api_cache_unavailable",
            "Redis calls that failed or timed out, or were skipped while its breaker was open;"
            " the views were served from the database",
            registry=registry,
        )


class LocalCache:
    """A small in-process map with a per-entry deadline, dropping the oldest when full."""

    def __init__(self, max_entries: int) -> None:
        self._entries: OrderedDict[str, tuple[float, Envelope]] = OrderedDict()
        self._max = max_entries

    def get(self, key: str, now: float) -> Envelope | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= now:
            del self._entries[key]
            return None
        return found[1]

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)

    def put(self, key: str, env: Envelope, until: float) -> None:
        self._entries[key] = (until, env)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


@dataclass(frozen=True)
class CacheSettings:
    """The view cache's bounds: leases, waits, Redis's deadlines and circuit, the local cache."""

    enabled: bool = True
    lease_s: float = 2.0  # how long one process may take to recompute a key
    lease_wait_s: float = 1.0  # a cold key's lease losers wait this long for its winner
    breaker_s: float = 1.0  # after a Redis failure, skip Redis this long
    timeout_s: float = 0.1  # Redis's time to answer a call (not counting our own loop's lag)
    max_wait_s: float = 1.0  # the most a call may take in all (the client's socket timeouts)
    congested_tasks: int = 64  # past this many tasks running here, a slow answer is ours
    local_entries: int = 10_000
    ryw_window_s: float = 30.0


@dataclass
class _Batch:
    """The Redis reads asked for in one turn of the loop: envelopes by key, write
    positions by reader."""

    envs: dict[str, asyncio.Future[Envelope | None]] = field(default_factory=dict)
    readers: dict[str, asyncio.Future[int]] = field(default_factory=dict)


class ViewCache:
    """get(view, key, load, reader=): a view's envelope, from the fastest layer that has
    it fresh enough for the reader."""

    def __init__(
        self,
        client: aioredis.Redis | None,
        settings: CacheSettings,
        metrics: CacheMetrics,
        clock: Clock | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        # Off (`enabled` false): no view is stored, but principals' write positions are:
        # read-your-writes holds across processes with the cache off too.
        self._redis = client
        self._views_on = settings.enabled
        self._settings = settings
        self._metrics = metrics
        self._local = LocalCache(settings.local_entries)
        self._flights: dict[str, asyncio.Task[Envelope]] = {}
        self._batch: _Batch | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._refreshing: set[str] = set()
        self._refreshing_tasks: set[asyncio.Task[None]] = set()
        self._skip_until = 0.0
        # This process's own record of its principals' writes, for when Redis is away.
        self._written: OrderedDict[str, tuple[float, int]] = OrderedDict()
        if client is not None:
            self._store = client.register_script(STORE_IF_NEWER)
            self._release = client.register_script(RELEASE_LEASE)
            self._raise = client.register_script(RAISE_LSN)

    # --- the read path ----------------------------------------------------------------

    async def get(
        self, view: View, key: str, load: Loader, *, reader: str | None = None
    ) -> Envelope:
        """The view for `key`. `reader`: the principal, when their own writes must show
        (views that depend on no reader may sit in the in-process cache)."""
        name = f"{view.name}:{key}"
        local = view.local_s > 0 and reader is None
        if local and (env := self._local.get(name, self._clock.monotonic())) is not None:
            self._count(view, "hit")
            return env
        env, min_lsn = await self._fetch(name, reader)
        now = self._clock.wall()
        if env is not None and env.lsn >= min_lsn and env.usable(now):
            if env.fresh(now) and not env.refresh_early(now):
                self._count(view, "hit")
                self._keep_local(view, name, env)
                return env
            # Expired or about to: whoever wins the lease refreshes in the background, and
            # everyone, the winner included, answers with what is stored meanwhile.
            self._refresh_in_background(view, name, load)
            self._count(view, "hit" if env.fresh(now) else "stale")
            return env
        # Nothing usable, or the reader wrote after it was read: load, once per process,
        # past the reader's write when they have one.
        return await self._shared_load(view, name, load, min_lsn)

    async def _shared_load(self, view: View, name: str, load: Loader, min_lsn: int) -> Envelope:
        flight = self._flights.get(name)
        if flight is None:
            # This request leads the process's load; `_obtain` counts how it ended.
            return await asyncio.shield(
                self._start_flight(name, self._obtain(view, name, load, min_lsn))
            )
        env = await asyncio.shield(flight)
        if env.lsn >= min_lsn:
            self._count(view, "coalesced")
            return env
        # The load in flight read before the reader's write: theirs is their own.
        self._count(view, "miss")
        return await self._load(view, name, load, min_lsn, None)

    async def _obtain(self, view: View, name: str, load: Loader, min_lsn: int) -> Envelope:
        """The process's one load of a key: from the database when this process wins the
        lease, else what the lease's holder stores (loaded here if it does not in time)."""
        lease = await self._take_lease(name)
        if lease is None and self._views_on and self._redis_usable():
            env = await self._wait_for_other(name)
        elif lease is not None:
            # The lease was free: perhaps because its last holder has just stored the view.
            env = await self._fetch_now(name)
        else:
            env = None
        if env is not None and env.lsn >= min_lsn and env.usable(self._clock.wall()):
            if lease is not None:
                await self._give_back(name, lease)
            self._count(view, "coalesced")
            self._keep_local(view, name, env)
            return env
        self._count(view, "miss")
        return await self._load(view, name, load, min_lsn, lease)

    def _start_flight(
        self, name: str, work: Coroutine[Any, Any, Envelope]
    ) -> asyncio.Task[Envelope]:
        task = asyncio.create_task(work)
        self._flights[name] = task
        task.add_done_callback(lambda _: self._flights.pop(name, None))
        # Every waiter may have gone: retrieve the outcome so asyncio does not report it.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    def _refresh_in_background(self, view: View, name: str, load: Loader) -> None:
        """One attempt per key per process at a time: take the lease, and if won, load and
        store. (Not one lease call per request: a herd would be its own Redis storm.)"""
        if name in self._flights or name in self._refreshing:
            return
        self._refreshing.add(name)

        async def refresh() -> None:
            try:
                if (lease := await self._take_lease(name)) is None:
                    return
                # The lease was free: perhaps because its last holder has just refreshed.
                env = await self._fetch_now(name)
                if env is not None and env.fresh(self._clock.wall()):
                    await self._give_back(name, lease)
                    return
                await self._load(view, name, load, 0, lease)
            except Exception as exc:
                log.warning("refreshing %s failed; the stale entry stays: %r", name, exc)
            finally:
                self._refreshing.discard(name)

        task = asyncio.create_task(refresh())
        self._refreshing_tasks.add(task)
        task.add_done_callback(self._refreshing_tasks.discard)

    async def _load(
        self, view: View, name: str, load: Loader, min_lsn: int, lease: str | None
    ) -> Envelope:
        started = self._clock.monotonic()
        try:
            loaded = await load(min_lsn)
            env = envelope(view, loaded, self._clock.monotonic() - started, self._clock.wall())
            await self._put(view, name, env)
            return env
        finally:
            if lease is not None:
                await self._give_back(name, lease)

    # --- writes -------------------------------------------------------------------------

    async def put(self, view: View, key: str, loaded: Loaded) -> Envelope:
        """Stores a view just read (write-through after a change; unless a newer one is
        there already) and returns its envelope."""
        env = envelope(view, loaded, 0.0, self._clock.wall())
        await self._put(view, f"{view.name}:{key}", env)
        return env

    async def put_many(self, items: Sequence[tuple[View, str, Loaded]]) -> None:
        """`put` of several views in one Redis round trip (a pipeline): the relay's
        write-through of a round's jobs and their share links."""
        now = self._clock.wall()
        stored = [
            (view, f"{view.name}:{key}", envelope(view, loaded, 0.0, now))
            for view, key, loaded in items
        ]
        if not self._views_on or not stored:
            return
        for view, name, env in stored:
            self._keep_local(view, name, env)
        if not self._redis_usable():
            return
        assert self._redis is not None
        pipe = self._redis.pipeline(transaction=False)
        for _, name, env in stored:
            ttl_ms = max(1, int((env.stale_until - now) * 1000))
            # Queued on the pipeline (the script is loaded by it if Redis lacks it).
            await self._store(
                keys=[f"api:view:{name}"], args=[env.lsn, env.encode(), ttl_ms], client=pipe
            )
        try:
            await self._bounded(pipe.execute())
        except REDIS_ERRORS as exc:
            self._trip(exc)

    async def forget(self, view: View, keys: Sequence[str]) -> None:
        """Drops views at once (revoked share links), here and in Redis: every process then
        loads them again, and finds them gone."""
        names = [f"{view.name}:{key}" for key in keys]
        for name in names:
            self._local.drop(name)
        if not names or not self._redis_usable():
            return
        assert self._redis is not None
        try:
            await self._bounded(self._redis.delete(*(f"api:view:{n}" for n in names)))
        except REDIS_ERRORS as exc:
            self._trip(exc)

    async def _put(self, view: View, name: str, env: Envelope) -> None:
        if not self._views_on:
            return
        self._keep_local(view, name, env)
        if not self._redis_usable():
            return
        ttl_ms = max(1, int((env.stale_until - self._clock.wall()) * 1000))
        try:
            await self._bounded(
                self._store(keys=[f"api:view:{name}"], args=[env.lsn, env.encode(), ttl_ms])
            )
        except REDIS_ERRORS as exc:
            self._trip(exc)

    async def remember_position(self, reader: str, lsn: int) -> None:
        """After `reader` committed at `lsn`, or saw the primary at `lsn`: their reads
        include it for the next `ryw_window_s` (read-your-writes, and never back in time)."""
        window = self._settings.ryw_window_s
        self._written[reader] = (self._clock.monotonic() + window, lsn)
        self._written.move_to_end(reader)
        while len(self._written) > self._settings.local_entries:
            self._written.popitem(last=False)
        if not self._redis_usable():
            return
        try:
            await self._bounded(
                self._raise(keys=[f"api:ryw:{reader}"], args=[lsn, int(window * 1000)])
            )
        except REDIS_ERRORS as exc:
            self._trip(exc)

    # --- Redis, bounded and failing soft ----------------------------------------------------

    async def _fetch(self, name: str, reader: str | None) -> Fetched:
        """The stored envelope and the reader's last write position. The reads of all the
        requests that ask in one turn of the event loop leave together, as one pipeline,
        on its next turn: after each of those requests arrived, so a reader sees every
        write they finished before asking (read-your-writes), and a herd costs a round
        trip per turn, not one per request."""
        local_lsn = self._local_write(reader)
        if not (self._views_on or reader is not None) or not self._redis_usable():
            return None, local_lsn
        loop = asyncio.get_running_loop()
        batch = self._batch
        if batch is None:
            batch = self._batch = _Batch()
            loop.call_soon(self._send, batch)
        # Both asked for before either is awaited: the batch leaves at the next turn.
        env_future = batch.envs.setdefault(name, loop.create_future()) if self._views_on else None
        position = (
            None if reader is None else batch.readers.setdefault(reader, loop.create_future())
        )
        env = None if env_future is None else await asyncio.shield(env_future)
        written = 0 if position is None else await asyncio.shield(position)
        return env, max(written, local_lsn)

    def _send(self, batch: "_Batch") -> None:
        self._batch = None  # whoever asks from now on waits for the next batch
        task = asyncio.create_task(self._send_now(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_now(self, batch: "_Batch") -> None:
        assert self._redis is not None
        envs, readers = list(batch.envs.items()), list(batch.readers.items())
        found: list[Any] = []
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for name, _ in envs:
                    pipe.hget(f"api:view:{name}", "env")
                for reader, _ in readers:
                    pipe.get(f"api:ryw:{reader}")
                found = await self._bounded(pipe.execute())
        except REDIS_ERRORS as exc:
            # Nothing known: every waiter loads from the database (its own process's
            # writes still count), and Redis is left alone for a moment.
            self._trip(exc)
        answers = iter(found)
        for name, env_future in envs:
            env_future.set_result(self._decode(name, next(answers, None)))
        for _, position in readers:
            raw = next(answers, None)
            position.set_result(int(raw) if raw else 0)

    def _decode(self, name: str, raw: bytes | None) -> Envelope | None:
        try:
            return Envelope.decode(raw) if raw else None
        except (ValueError, TypeError):
            log.warning("unreadable cache entry %s ignored", name)
            return None

    async def _fetch_now(self, name: str) -> Envelope | None:
        """The stored envelope, asked for now (after taking a lease: what its last holder
        may just have stored)."""
        assert self._redis is not None
        try:
            raw: bytes | None = await self._bounded(self._redis.hget(f"api:view:{name}", "env"))  # type: ignore[arg-type]
        except REDIS_ERRORS as exc:
            self._trip(exc)
            return None
        return self._decode(name, raw)

    def _local_write(self, reader: str | None) -> int:
        if reader is None or (mine := self._written.get(reader)) is None:
            return 0
        return mine[1] if mine[0] > self._clock.monotonic() else 0

    async def _take_lease(self, name: str) -> str | None:
        if not self._views_on or not self._redis_usable():
            return None
        assert self._redis is not None
        token = secrets.token_hex(8)
        try:
            won = await self._bounded(
                self._redis.set(
                    f"api:lease:{name}", token, nx=True, px=int(self._settings.lease_s * 1000)
                )
            )
        except REDIS_ERRORS as exc:
            self._trip(exc)
            return None
        return token if won else None

    async def _give_back(self, name: str, token: str) -> None:
        if not self._redis_usable():
            return  # it expires by itself
        try:
            await self._bounded(self._release(keys=[f"api:lease:{name}"], args=[token]))
        except REDIS_ERRORS as exc:
            self._trip(exc)

    async def _wait_for_other(self, name: str) -> Envelope | None:
        deadline = self._clock.monotonic() + self._settings.lease_wait_s
        pause = 0.01
        while self._clock.monotonic() < deadline:
            await self._clock.sleep(pause)  # poll interval while the lease holder loads
            env, _ = await self._fetch(name, None)
            if env is not None and env.usable(self._clock.wall()):
                return env
            if not self._redis_usable():
                return None
            pause = min(pause * 2, 0.05)
        return None

    async def _bounded(self, call: Awaitable[T]) -> T:
        """`call`, given `timeout_s` of Redis's time. This process's own congestion is not
        Redis's slowness: while many tasks are running (a herd being served: the answer
        may be in, waiting for its turn of the loop), or when the loop itself woke late,
        a call gets another window, up to `max_wait_s` in all (the client's own socket
        timeouts)."""
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(call)
        budget, started = self._settings.timeout_s, loop.time()
        while True:
            due = loop.time() + budget
            done, _ = await asyncio.wait({task}, timeout=budget)
            if not done:
                late = loop.time() - due
                # A short grace: an answer that came while the loop was busy is read in it
                # (the loop polls sockets only between its turns).
                done, _ = await asyncio.wait({task}, timeout=0.005)
            if done:
                return task.result()
            busy = len(asyncio.all_tasks()) > self._settings.congested_tasks
            if (
                not (busy or late >= budget / 2)
                or loop.time() - started >= self._settings.max_wait_s
            ):
                task.cancel()
                raise TimeoutError(f"no answer from Redis within {budget * 1000:.0f} ms")

    def _redis_usable(self) -> bool:
        if self._redis is None:
            return False
        if self._clock.monotonic() < self._skip_until:
            self._metrics.unavailable.inc()
            return False
        return True

    def _trip(self, error: BaseException) -> None:
        if self._clock.monotonic() >= self._skip_until:  # one line per trip, not one per call
            log.warning(
                "Redis unavailable (%r): views come from the database for %.1f s",
                error,
                self._settings.breaker_s,
            )
        self._metrics.unavailable.inc()
        self._skip_until = self._clock.monotonic() + self._settings.breaker_s

    def _keep_local(self, view: View, name: str, env: Envelope) -> None:
        if view.local_s > 0:
            until = self._clock.monotonic() + min(
                view.local_s, max(0.0, env.fresh_until - self._clock.wall())
            )
            self._local.put(name, env, until)

    def _count(self, view: View, result: str) -> None:
        self._metrics.requests.labels(view.name, result).inc()

    async def warm_up(self) -> None:
        """Opens a connection before the first request needs one (best effort)."""
        if self._redis is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._bounded(self._redis.ping())

    async def close(self) -> None:
        for task in [*self._flights.values(), *self._refreshing_tasks, *self._sending]:
            task.cancel()
        if self._redis is not None:
            await self._redis.aclose()
