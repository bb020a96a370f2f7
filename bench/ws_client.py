"""A notifier client that follows one job the way an app should: it subscribes, keeps the
newest seq it has, and when the connection drops it reconnects (jittered backoff) and
resumes with `last_seq`. It checks the server's promise rather than papering over it: a
repeated or skipped seq is counted, not dropped. `telemetry watch`, the benchmark and the
tests use it."""

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from schemas.notifier import CloseCode

# Closes after which trying again with the same token cannot help.
FINAL_CLOSES = frozenset({CloseCode.BAD_MESSAGE, CloseCode.AUTH_FAILED, CloseCode.FORBIDDEN})
JOB_EVENT_TYPES = frozenset({"job.created", "job.status", "job.completed", "job.arrived"})


class Refused(Exception):
    """The server closed with a code that retrying will not change."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed {code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass
class Tally:
    """What the client saw, for people and for the tests' checks."""

    events: list[int] = field(default_factory=list)  # seqs in arrival order, each once
    duplicates: int = 0
    gaps: int = 0  # a seq arrived that was not the next one
    snapshots: int = 0
    resyncs: int = 0
    connects: int = 0
    closes: dict[int, int] = field(default_factory=dict)


class JobWatcher:
    """A WebSocket client following one job as an app would: it reconnects and resumes by seq, and
    tallies what it saw (duplicates and gaps included)."""

    def __init__(
        self,
        url: str | list[str],
        token: str,
        job_id: UUID,
        *,
        last_seq: int | None = None,
        backoff_s: tuple[float, float] = (0.05, 2.0),
        rng: random.Random | None = None,
    ) -> None:
        # Several: tried in turn after a drop, as a balancer in front of them would.
        self.urls = [url] if isinstance(url, str) else url
        self.token = token
        self.job_id = job_id
        self.last_seq = last_seq
        self.tally = Tally()
        self._backoff = backoff_s
        self._rng = rng or random.Random()
        self._ws: ClientConnection | None = None

    def drop_connection(self) -> None:
        """Cuts the connection as a dead network would (no close handshake)."""
        if self._ws is not None:
            self._ws.transport.abort()

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        """Every message, across reconnects, until the caller stops iterating or the server
        refuses for good (Refused)."""
        failures = 0
        attempt = 0
        while True:
            url = self.urls[attempt % len(self.urls)]
            attempt += 1
            try:
                async with connect(url, compression=None, open_timeout=10, close_timeout=2) as ws:
                    self._ws = ws
                    self.tally.connects += 1
                    await ws.send(orjson.dumps({"type": "auth", "token": self.token}).decode())
                    subscribe: dict[str, Any] = {"type": "subscribe", "job_id": str(self.job_id)}
                    if self.last_seq is not None:
                        subscribe["last_seq"] = self.last_seq
                    await ws.send(orjson.dumps(subscribe).decode())
                    async for raw in ws:
                        message = orjson.loads(raw)
                        failures = 0
                        if self._account(message):
                            yield message
                    # A normal close (1000, 1001: the process is going away) ends the loop.
                    code = ws.close_code or 1000
                    self.tally.closes[code] = self.tally.closes.get(code, 0) + 1
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else 1006
                self.tally.closes[code] = self.tally.closes.get(code, 0) + 1
                if code in FINAL_CLOSES:
                    raise Refused(code, exc.rcvd.reason if exc.rcvd else "") from exc
            except (OSError, InvalidHandshake, InvalidStatus, TimeoutError):
                pass
            finally:
                self._ws = None
            failures += 1
            low, high = self._backoff
            # Full jitter: a notifier's clients must not all come back in the same instant.
            await asyncio.sleep(self._rng.uniform(0, min(high, low * 2**failures)))

    def _account(self, message: dict[str, Any]) -> bool:
        """Updates the tally and `last_seq`; False for a repeated event (not shown)."""
        kind = message.get("type")
        if kind == "snapshot":
            self.tally.snapshots += 1
            if message.get("resumed_from") is None:
                self.last_seq = int(message["seq"])  # a fresh start: events follow it
        elif kind == "resync":
            self.tally.resyncs += 1
        elif kind in JOB_EVENT_TYPES:
            seq = int(message["seq"])
            if self.last_seq is not None and seq <= self.last_seq:
                self.tally.duplicates += 1
                return False
            if self.last_seq is not None and seq != self.last_seq + 1:
                self.tally.gaps += 1
            self.last_seq = seq
            self.tally.events.append(seq)
        return True


async def watch_until(watcher: JobWatcher, done: Any, timeout_s: float) -> list[dict[str, Any]]:
    """Messages until `done(message)` is true or `timeout_s` passes (TimeoutError)."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout_s):
        stream = watcher.messages()
        try:
            async for message in stream:
                seen.append(message)
                if done(message):
                    return seen
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
    return seen
