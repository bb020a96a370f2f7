"""Subscribing: the snapshot, the replay of missed events (the Redis log, else PostgreSQL),
the merge with live events held meanwhile, the check that nothing is missing, then live.
The same catch-up serves a live subscriber whose next event arrived before the one it
lacked."""

import asyncio
import logging
from typing import Any, Literal

from notifier.errors import DatabaseUnavailable
from notifier.event_log import EventLog
from notifier.frames import EventFrame, resync_frame, snapshot_frame
from notifier.hub import SHARES_POSITION, Hub, Subscription
from notifier.metrics import NotifierMetrics
from notifier.store import JobRow, ShareRow, Store
from schemas.jobs import DriverPositionView, Job, Point, SharedJob
from schemas.notifier import ResyncReason
from schemas.positions import PositionUpdate

log = logging.getLogger(__name__)

Source = Literal["none", "redis", "postgres"]
# Fetch rounds a catch-up may take (live events keep arriving meanwhile) before the
# connection is closed with "try again later" and the client resumes afresh.
MAX_ROUNDS = 5


def job_view(
    job: JobRow, position: PositionUpdate | None, share: ShareRow | None
) -> dict[str, Any]:
    """The job as the snapshot shows it: the api's job view to a user, its share view to a
    share link's holder (where the delivery is, never who ordered what)."""
    row = job.row
    where = (
        None
        if position is None
        else DriverPositionView(
            lat=position.lat, lon=position.lon, ts=position.ts, speed_mps=position.speed_mps
        )
    )
    if share is not None:
        return SharedJob(
            status=job.status,
            driver_position=where,
            eta_seconds=None,
            eta_basis=None,
            updated_at=row["updated_at"],
            expires_at=share.expires_at,
        ).model_dump(mode="json")
    return Job(
        job_id=job.job_id,
        status=job.status,
        customer_id=job.customer_id,
        driver_id=job.driver_id,
        pickup=Point(lat=row["pickup_lat"], lon=row["pickup_lon"]),
        dropoff=Point(lat=row["dropoff_lat"], lon=row["dropoff_lon"]),
        reference=row["reference"],
        seq=job.seq,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        driver_position=where,
    ).model_dump(mode="json")


class Resumer:
    """Starts a subscription exactly where the client left off: a snapshot, then the missed events
    from the Redis log or PostgreSQL, then live ones; catches a subscription up after a gap. For
    one event loop's tasks."""

    def __init__(
        self, store: Store, event_log: EventLog, hub: Hub, metrics: NotifierMetrics
    ) -> None:
        self._store = store
        self._log = event_log
        self._hub = hub
        self._metrics = metrics
        # Catch-ups in flight, referenced until done (the loop holds tasks weakly).
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(
        self, sub: Subscription, job: JobRow, last_seq: int | None, share: ShareRow | None
    ) -> None:
        """`sub` is watched already (its live events are held). Sends the snapshot, then
        every event after `last_seq` (or after the snapshot), then lets it go live."""
        self._hub.know_job(job.job_id, job.status, job.driver_id, job.seq)
        position = None
        if job.driver_id is not None and job.status in SHARES_POSITION:
            try:
                position = await self._store.positions.get(job.driver_id)
            except DatabaseUnavailable as exc:
                # Latest-value, and the next fix brings it: a snapshot without it beats
                # no snapshot while the replica is away.
                log.warning("snapshot of job %s without its position: %s", job.job_id, exc)
        resync: ResyncReason | None = None
        if last_seq is not None and last_seq > job.seq:
            resync = "unknown_seq"  # more than the job has: another database's, or forged
        elif last_seq is not None and job.seq - last_seq > self._log.retained:
            resync = "not_retained"
        if resync is not None:
            self._metrics.resyncs.labels(resync).inc()
            sub.send_queue.push(resync_frame(job.job_id, resync), "resync")
            last_seq = None
        start = job.seq if last_seq is None else last_seq
        sub.send_queue.push(
            snapshot_frame(job.job_id, job.seq, job_view(job, position, share), position, last_seq),
            "snapshot",
        )
        sub.snapshot_sent = True
        sub.seq.start_at(start)
        source = await self.catch_up(sub, job.seq)
        if last_seq is not None:
            self._metrics.resumes.labels(source).inc()

    def catch_up_later(self, sub: Subscription) -> None:
        """A live subscriber saw a gap: catch up in a task of its own (the caller is the
        fan-out of every subscriber)."""
        if sub.catching_up:
            return

        async def run() -> None:
            try:
                await self.catch_up(sub, sub.seq.wanted_seq)
            except DatabaseUnavailable as exc:
                await sub.end(exc)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def catch_up(self, sub: Subscription, target_seq: int) -> Source:
        """Sends what `sub` lacks up to `target_seq` (a seq known to exist) and whatever was
        held meanwhile, without a gap; returns where the missed events came from."""
        sub.catching_up = True
        source: Source = "none"
        try:
            for round_ in range(MAX_ROUNDS):
                target_seq = max(target_seq, sub.seq.wanted_seq)
                fetched: list[EventFrame] = []
                if sub.seq.sent_seq < target_seq:
                    fetched, source = await self._fetch(
                        sub, sub.seq.sent_seq, target_seq, log_first=round_ == 0
                    )
                ready, live = sub.seq.merge(fetched, target_seq)
                sub.send_events(ready)
                if live or sub.send_queue.closed:
                    return source
        finally:
            sub.catching_up = False
        raise DatabaseUnavailable(f"job {sub.job_id}: events missing after {MAX_ROUNDS} fetches")

    async def _fetch(
        self, sub: Subscription, after_seq: int, until_seq: int, *, log_first: bool
    ) -> tuple[list[EventFrame], Source]:
        if log_first:
            frames = await self._log.read_after(sub.job_id, after_seq)
            if frames and _unbroken(frames, after_seq) and frames[-1].seq >= until_seq:
                return frames, "redis"
        frames = await self._store.events_after(
            sub.job_id, after_seq, until_seq, limit=self._log.retained
        )
        return frames, "postgres"


def _unbroken(frames: list[EventFrame], after_seq: int) -> bool:
    return all(frame.seq == after_seq + 1 + i for i, frame in enumerate(frames))
