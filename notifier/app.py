"""The notifier process: its parts wired from one settings object, the WebSocket server on
`/ws`, and `/healthz`, `/readyz`, `/metrics` on the same port."""

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Origin

from notifier.admission import FailedLookups, Waiting, client_address
from notifier.config import NotifierSettings
from notifier.consumer import LiveReader, ReaderSettings
from notifier.errors import AuthFailed, DatabaseUnavailable, NotifierError
from notifier.event_log import EventLog
from notifier.frames import ping_frame
from notifier.heartbeat import Schedule
from notifier.hub import Hub, Subscription
from notifier.metrics import NotifierMetrics
from notifier.resume import Resumer
from notifier.send_queue import Budget
from notifier.session import Limits, Session
from notifier.store import Store
from runtime.auth import verifier_from_settings
from runtime.clock import Clock, SystemClock
from runtime.postgres import DATABASE_ERRORS, Pool, open_pool
from runtime.request_metrics import UNMATCHED, RequestMetrics, process_metrics
from schemas.notifier import WS_PATH

log = logging.getLogger(__name__)
ROUTES = frozenset((WS_PATH, "/healthz", "/readyz", "/metrics"))

# Client messages are a few hundred bytes: anything near this is not ours.
MAX_CLIENT_MESSAGE_BYTES = 16 * 1024
HEARTBEAT_TICK_S = 0.2


@dataclass(frozen=True)
class _Parts:
    """What a running notifier's connections share."""

    primary: Pool
    replica: Pool
    event_log: EventLog
    store: Store
    hub: Hub
    resumer: Resumer
    limits: Limits


class Notifier:
    """The notifier process: `running()` starts everything and serves WebSocket clients
    until its block ends, then stops it all within bounded time. One per process; its
    state belongs to the event loop it runs in."""

    def __init__(
        self, settings: NotifierSettings, registry: CollectorRegistry, clock: Clock | None = None
    ) -> None:
        self._clock = clock or SystemClock()
        self.settings = settings
        self.registry = registry
        self.metrics = NotifierMetrics(registry)
        self.metrics.connections_limit.set(settings.max_connections)
        self.requests = RequestMetrics(registry)
        process_metrics(registry)
        self.sessions: set[Session] = set()
        self._ending: set[asyncio.Task[None]] = set()
        self._waiting = Waiting(
            settings.max_unauthenticated, settings.max_unauthenticated_per_client
        )
        self._keepalive: Schedule[Session] = Schedule(settings.ping_interval_s)
        self._verifier = verifier_from_settings(settings)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Server]:
        """Everything started: the pools, Redis, the live reader, the heartbeat and the
        server; all of it stopped on the way out, within bounded time."""
        parts = await self._open_parts()
        tasks = [
            asyncio.create_task(self.reader.run_forever(), name="live-reader"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
            asyncio.create_task(self._recheck_shares(parts.store), name="share-recheck"),
        ]
        try:
            async with self._serve(functools.partial(self._session, parts)) as server:
                yield server
                # Going away (1001): clients reconnect to another process and resume.
                server.close(close_connections=True)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await server.wait_closed()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await parts.event_log.close()
            await parts.primary.close(timeout=5)
            await parts.replica.close(timeout=5)

    async def _open_parts(self) -> "_Parts":
        """The pools and the Redis client (opened, not yet connected), and the hub, the
        resumer and the live reader wired over them."""
        s = self.settings
        opening = functools.partial(
            open_pool, min_size=1, max_size=s.pool_max_size, timeout_s=s.db_timeout_s
        )
        primary = await opening(s.write_dsn, name="notifier-primary")
        replica = await opening(s.read_dsn, name="notifier-replica")
        self._primary: Pool = primary
        redis_client = aioredis.Redis.from_url(
            s.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        event_log = EventLog(
            redis_client,
            self.metrics,
            retained=s.retained_events,
            ttl_s=s.log_ttl_s,
            timeout_s=s.redis_timeout_s,
            clock=self._clock,
        )
        store = Store(
            primary, replica, max_concurrency=s.db_max_concurrency, timeout_s=s.db_timeout_s
        )

        # The hub and the resumer call each other: the hub asks for a catch-up, the resumer
        # hands the hub what it fetched.
        def catch_up(sub: Subscription) -> None:
            resumer.catch_up_later(sub)

        def revoke(sub: Subscription, error: NotifierError) -> None:
            self._end_later(sub.end(error))

        hub = Hub(self.metrics, catch_up, revoke=revoke, clock=self._clock)
        resumer = Resumer(store, event_log, hub, self.metrics)
        self.reader = LiveReader(
            ReaderSettings(s.kafka_bootstrap, s.job_events_topic, s.positions_topic),
            hub,
            event_log,
            self.metrics,
            clock=self._clock,
        )
        limits = Limits(
            auth_timeout_s=s.auth_timeout_s,
            max_subscriptions=s.max_subscriptions,
            max_unsent_bytes=s.max_unsent_bytes,
            max_held=s.retained_events,
            failed_lookups=FailedLookups(s.failed_share_lookups_per_s, s.failed_share_lookup_burst),
            budget=Budget(s.max_queued_bytes_total),
        )
        self.metrics.watch(limits.budget)
        return _Parts(primary, replica, event_log, store, hub, resumer, limits)

    async def _session(self, parts: "_Parts", ws: ServerConnection) -> None:
        """One connection, from its handshake to its end."""
        client = _client(ws.remote_address, ws.request)
        self._waiting.arrived(client)
        session = Session(
            ws,
            verifier=self._verifier,
            store=parts.store,
            hub=parts.hub,
            resumer=parts.resumer,
            metrics=self.metrics,
            limits=parts.limits,
            client=client,
            authenticated=functools.partial(self._waiting.done, client),
            clock=self._clock,
        )
        self.sessions.add(session)
        self._keepalive.add(session, self._clock.monotonic())
        self.metrics.connections.inc()
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            self._keepalive.remove(session)
            self.metrics.connections.dec()

    def _serve(
        self, handler: Callable[[ServerConnection], Awaitable[None]]
    ) -> contextlib.AbstractAsyncContextManager[Server]:
        s = self.settings
        return serve(
            handler,
            s.host,
            s.port,
            process_request=self._process_request,
            # None: no Origin header (not a browser). A listed page's origin, or 403: a
            # page elsewhere must not ride a user's credentials (the same list as CORS).
            origins=[None, *(Origin(o) for o in s.allowed_origins)],
            compression="deflate" if s.compression else None,
            # Our heartbeat sends the pings, spread out (notifier/heartbeat.py); the
            # library's would be a task per connection, in step after a storm.
            ping_interval=None,
            close_timeout=2,
            max_size=MAX_CLIENT_MESSAGE_BYTES,
            max_queue=4,
            server_header=None,
            # A reconnect storm (a process died, its clients come here) opens thousands of
            # connections at once: the kernel's default queue of 100 drops SYNs.
            backlog=s.accept_backlog,
        )

    async def _heartbeat(self) -> None:
        """Each connection's keepalive every `ping_interval_s`, spread over the interval."""
        while True:
            await self._clock.sleep(HEARTBEAT_TICK_S)
            frame = ping_frame(self._clock.now())
            for session in self._keepalive.due(self._clock.monotonic()):
                session.keepalive(frame)

    async def _recheck_shares(self, store: Store) -> None:
        """Closes, every `share_recheck_s`, the connections whose share link is no longer
        live (revoked, or ended by its job's cancel): one query for all of them. While the
        database does not answer, they stay open until the next look."""
        while True:
            await self._clock.sleep(self.settings.share_recheck_s)
            held = [s for s in self.sessions if s.share_hash]
            if not held:
                continue
            try:
                live = await store.live_shares(list({s.share_hash for s in held}))
            except DatabaseUnavailable as exc:
                log.warning("share links not rechecked: %r", exc)
                continue
            except Exception:  # a bug of ours: the next look tries again
                log.exception("share links not rechecked")
                continue
            for session in held:
                if session.share_hash not in live:
                    self._end_later(session.end(AuthFailed("share link revoked")))

    def _end_later(self, ending: Awaitable[None]) -> None:
        """Runs a close in the background, referenced until done (the loop holds tasks
        weakly)."""
        task = asyncio.ensure_future(ending)
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def ready(self) -> bool:
        """Hears live events and can read jobs. Redis is not asked: it is shared, and a
        notifier without it still serves (resumes from PostgreSQL)."""
        if not self.reader.assigned:
            return False
        try:
            async with asyncio.timeout(1), self._primary.connection(timeout=1) as conn:
                await conn.execute("SELECT 1")
        except DATABASE_ERRORS:
            return False
        return True

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        started = self._clock.monotonic()
        response = await self._answer(ws, request)
        path = request.path.partition("?")[0]
        route = path if path in ROUTES else UNMATCHED
        # An upgrade counts as its 101 here, when the handshake goes on.
        status = 101 if response is None else response.status_code
        self.requests.observe(route, "GET", status, self._clock.monotonic() - started)
        return response

    async def _answer(self, ws: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == WS_PATH:
            if len(self.sessions) >= self.settings.max_connections:
                return _plain(503, "too many connections", {"Retry-After": "1"})
            if not self._waiting.admits(_client(ws.remote_address, request)):
                return _plain(503, "too many connections waiting for auth", {"Retry-After": "1"})
            return None
        if path == "/healthz":
            return _plain(200, '{"status":"ok"}', {"Content-Type": "application/json"})
        if path == "/readyz":
            if await self.ready():
                return _plain(200, '{"status":"ready"}', {"Content-Type": "application/json"})
            return _plain(
                503,
                '{"status":"unavailable"}',
                {"Content-Type": "application/json", "Retry-After": "1"},
            )
        if path == "/metrics":
            return _plain(
                200, generate_latest(self.registry), {"Content-Type": CONTENT_TYPE_LATEST}
            )
        return _plain(404, "not found: the notifier serves /ws")


def _client(peer: object, request: Request | None) -> str:
    """The client's address, as our tiers name it (notifier/admission.py)."""
    host = peer[0] if isinstance(peer, tuple) and peer else None
    forwarded = request.headers.get_all("X-Forwarded-For") if request is not None else []
    return client_address(host if isinstance(host, str) else None, forwarded)


def _plain(status: int, body: str | bytes, headers: dict[str, str] | None = None) -> Response:
    data = body.encode() if isinstance(body, str) else body
    all_headers = {"Content-Type": "text/plain; charset=utf-8", "Connection": "close"}
    all_headers |= headers or {}
    all_headers["Content-Length"] = str(len(data))
    reasons = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}
    return Response(status, reasons[status], Headers(all_headers.items()), data)
