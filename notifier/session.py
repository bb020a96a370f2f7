"""One WebSocket connection: authentication (a user's JWT or a share token), the client's
messages, its subscriptions, and closing with a code that says why."""

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from pydantic import ValidationError
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed

from notifier.admission import FailedLookups
from notifier.errors import (
    AuthFailed,
    BadMessage,
    Forbidden,
    NotifierError,
    PeerGone,
    SlowConsumer,
    TooManySubscriptions,
)
from notifier.hub import Hub, Subscription
from notifier.metrics import NotifierMetrics
from notifier.resume import Resumer
from notifier.send_queue import Budget, SendQueue
from notifier.store import ShareRow, Store
from runtime.auth import AuthError, TokenVerifier
from runtime.clock import Clock, SystemClock
from schemas.auth import Principal
from schemas.jobs import SHARE_TOKEN_PATTERN, share_token_hash, visible_to
from schemas.notifier import CLIENT_MESSAGE, Auth, Pong, Subscribe, Unsubscribe

log = logging.getLogger(__name__)

SHARE_TOKEN = re.compile(SHARE_TOKEN_PATTERN)


@dataclass(frozen=True)
class Limits:
    """The bounds every connection has: time to authenticate, subscriptions, unsent bytes, held
    events, failed share lookups, the process's queued bytes."""

    auth_timeout_s: float
    max_subscriptions: int
    max_unsent_bytes: int
    max_held: int
    # Unknown share tokens per client address (shared by the process's sessions).
    failed_lookups: FailedLookups
    # The bytes all the process's connections may have queued (shared).
    budget: Budget


@dataclass(frozen=True)
class Grant:
    """Who is connected: a user, or the holder of one job's share link."""

    principal: Principal | None
    share: ShareRow | None
    expires_at: float  # epoch seconds: the token's exp, or the share link's expiry


class _Socket:
    """The send queue's view of the connection."""

    def __init__(self, ws: ServerConnection) -> None:
        self._ws = ws

    async def send(self, message: bytes, *, text: bool) -> None:
        await self._ws.send(message, text=text)

    def write_now(self, message: bytes) -> None:
        # The library's own way to write without waiting (skips a connection closing).
        broadcast([self._ws], message, text=True)

    def buffered_bytes(self) -> int:
        return self._ws.transport.get_write_buffer_size()


class Session:
    """One WebSocket connection from its handshake to its end: authentication, subscribe and
    unsubscribe, keepalives. `run` returns when the connection is closed; it never raises for
    what the client did (the close code says it)."""

    def __init__(
        self,
        ws: ServerConnection,
        *,
        verifier: TokenVerifier,
        store: Store,
        hub: Hub,
        resumer: Resumer,
        metrics: NotifierMetrics,
        limits: Limits,
        client: str,
        authenticated: Callable[[], None],
        clock: Clock | None = None,
    ) -> None:
        self.ws = ws
        self._client = client  # the client's address (behind our tiers: as they name it)
        self._authenticated = authenticated  # told once the auth is over, either way
        self._verifier = verifier
        self._store = store
        self._hub = hub
        self._resumer = resumer
        self._metrics = metrics
        self._limits = limits
        self._clock = clock or SystemClock()
        self.send_queue = SendQueue(
            _Socket(ws),
            max_unsent_bytes=limits.max_unsent_bytes,
            on_slow=self._slow,
            on_sent=self._sent,
            budget=limits.budget,
        )
        self.grant: Grant | None = None
        self._subs: dict[UUID, Subscription] = {}
        self._closing = False
        self._pong: asyncio.Future[float] | None = None
        # Closes and pings in flight, referenced until done (the loop holds tasks weakly).
        self._tasks: set[asyncio.Task[None]] = set()
        self._expiry: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        try:
            try:
                self.grant = await self._authenticate()
            finally:
                self._authenticated()
            # The connection ends when its token (or share link) does.
            self._expiry = asyncio.get_running_loop().call_later(
                max(0.0, self.grant.expires_at - self._clock.wall()),
                self._in_background,
                lambda: self.end(AuthFailed("token expired")),
            )
            async for raw in self.ws:
                await self._handle(raw)
        except NotifierError as exc:
            await self.end(exc)
        except ConnectionClosed:
            pass
        finally:
            if self._expiry is not None:
                self._expiry.cancel()
            for sub in self._subs.values():
                self._hub.unwatch(sub)
            self._subs.clear()
            self.send_queue.close()

    @property
    def share_hash(self) -> bytes:
        """The share link this connection holds (b"" for a user's)."""
        share = self.grant.share if self.grant is not None else None
        return share.token_hash if share is not None else b""

    async def end(self, exc: NotifierError) -> None:
        """Closes with the error's code; the reason is for people (at most 123 bytes)."""
        if self._closing:
            return
        self._closing = True
        self.send_queue.close()
        self._metrics.closes.labels(str(int(exc.close_code))).inc()
        await self.ws.close(exc.close_code, str(exc)[:120])

    # --- messages ---------------------------------------------------------------------
    async def _authenticate(self) -> Grant:
        try:
            async with asyncio.timeout(self._limits.auth_timeout_s):
                raw = await self.ws.recv()
        except TimeoutError as exc:
            raise AuthFailed("no auth message in time") from exc
        message = _parse(raw)
        if not isinstance(message, Auth):
            raise AuthFailed("the first message must be auth")
        token = message.token
        if "." not in token and SHARE_TOKEN.fullmatch(token):
            failures = self._limits.failed_lookups
            if not failures.may_try(self._client, self._clock.monotonic()):
                raise AuthFailed("too many unknown share links from this address; wait")
            share = await self._store.shares.get(share_token_hash(token))
            if share is None:
                failures.failed(self._client, self._clock.monotonic())
                raise AuthFailed("unknown or expired share link")
            return Grant(None, share, share.expires_at.timestamp())
        try:
            principal, expires_at = self._verifier.verify_expiring(token)
        except AuthError as exc:
            raise AuthFailed(str(exc)) from exc
        return Grant(principal, None, expires_at)

    async def _handle(self, raw: str | bytes) -> None:
        message = _parse(raw)
        match message:
            case Subscribe():
                await self._subscribe(message)
            case Unsubscribe():
                sub = self._subs.pop(message.job_id, None)
                if sub is not None:
                    self._hub.unwatch(sub)
            case Pong():
                pass
            case Auth():
                raise BadMessage("already authenticated")

    async def _subscribe(self, message: Subscribe) -> None:
        grant = self.grant
        assert grant is not None
        job_id = message.job_id
        if job_id is None:
            if grant.share is None:
                raise BadMessage("subscribe: job_id is required")
            job_id = grant.share.job_id  # a share link's holder: its link's job
        if grant.share is not None and job_id != grant.share.job_id:
            raise Forbidden("a share link sees its own job only")
        previous = self._subs.pop(job_id, None)
        if previous is not None:  # subscribing again: a fresh start from the new last_seq
            self._hub.unwatch(previous)
        if len(self._subs) >= self._limits.max_subscriptions:
            raise TooManySubscriptions(f"at most {self._limits.max_subscriptions} jobs")
        sub = Subscription(
            job_id,
            self.send_queue,
            self.end,
            share=grant.share is not None,
            max_held=self._limits.max_held,
            viewer=grant.principal,
        )
        # Watched before the job is read: every event after the read is held, none lost.
        self._hub.watch(sub)
        self._subs[job_id] = sub
        try:
            job = await self._store.jobs.get(job_id)
            if job is None or (
                grant.principal is not None
                and not visible_to(grant.principal, job.customer_id, job.driver_id)
            ):
                raise Forbidden(f"no job {job_id} of yours")
            await self._resumer.start(sub, job, message.last_seq, grant.share)
        except BaseException:
            self._subs.pop(job_id, None)
            self._hub.unwatch(sub)
            raise

    # --- the server's side ------------------------------------------------------------
    def keepalive(self, ping: bytes) -> None:
        """The heartbeat's turn: the application ping, and a WebSocket ping (browsers answer
        those by themselves) whose pong must have come by the next turn."""
        if self._closing:
            return
        if self._pong is not None and not self._pong.done():
            self._in_background(lambda: self.end(PeerGone("no pong to the last ping")))
            return
        self.send_queue.push(ping, "ping")
        self._in_background(self._ping)

    async def _ping(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            pong = await self.ws.ping()
            # A future (typed as an awaitable): done when the pong arrives.
            self._pong = pong if isinstance(pong, asyncio.Future) else None

    def _in_background(self, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.get_running_loop().create_task(make())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _slow(self) -> None:
        self._metrics.slow_disconnects.inc()
        await self.end(SlowConsumer(f"more than {self._limits.max_unsent_bytes} bytes unsent"))

    def _sent(self, kind: str, origin: float | None) -> None:
        self._metrics.count_sent(kind, None if origin is None else self._clock.wall() - origin)


def _parse(raw: str | bytes) -> Auth | Subscribe | Unsubscribe | Pong:
    try:
        return CLIENT_MESSAGE.validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}"
            for e in exc.errors(include_url=False)[:3]
        )
        raise BadMessage(problems) from exc
