"""The process's subscriptions, by job and by the job's driver, and the routing of each
consumed job event and position to them. No I/O: frames go to each connection's send queue,
and a subscriber that needs events it was not sent gets a catch-up started."""

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from uuid import UUID

from pydantic import ValidationError

from notifier.errors import Forbidden, NotifierError
from notifier.frames import EventFrame, position_frame
from notifier.metrics import NotifierMetrics
from notifier.send_queue import SendQueue
from notifier.sequencing import Sequencer
from runtime.clock import Clock, SystemClock
from schemas.auth import Principal, Role
from schemas.jobs import JobStatus
from schemas.positions import PositionUpdate

# While the driver is on the way: before it nobody is assigned, after it the driver's
# whereabouts are none of the customer's business.
SHARES_POSITION = frozenset({JobStatus.ASSIGNED, JobStatus.PICKED_UP, JobStatus.COMPLETING})
# The latest position of this many drivers is kept, raw, whoever watches them: a job
# assigned to one of them shows where the driver is at once, even when the driver's last
# fix came in just before the assignment's event (the two travel by different topics, so
# either may come first). A few hundred bytes each.
RECENT_DRIVERS = 20_000
# Older than this, a driver's last fix is not where they are.
RECENT_FIX = timedelta(minutes=5)


class Subscription:
    """One connection's interest in one job: its send queue, its sequencer (exactly once, in order),
    and how to end it."""

    __slots__ = (
        "catching_up",
        "end",
        "job_id",
        "send_queue",
        "seq",
        "share",
        "snapshot_sent",
        "viewer",
    )

    def __init__(
        self,
        job_id: UUID,
        send_queue: SendQueue,
        end: Callable[[NotifierError], Awaitable[None]],
        *,
        share: bool,
        max_held: int,
        viewer: Principal | None = None,
    ) -> None:
        self.job_id = job_id
        self.send_queue = send_queue
        self.end = end  # closes the connection with the error's close code
        self.share = share  # a share link's subscriber: events without `data`
        # Who subscribed (None: a share link): what the job shows them may change.
        self.viewer = viewer
        self.seq = Sequencer(0, max_held=max_held)
        self.snapshot_sent = False  # positions flow only after the snapshot
        self.catching_up = False

    def send_events(self, frames: list[EventFrame]) -> None:
        for frame in frames:
            self.send_queue.push(frame.for_share(self.share), frame.type, frame.at.timestamp())


class JobFeed:
    """A job that has subscribers in this process. Its status and driver are those of the
    newest state heard of, by the job's seq: a snapshot read before a later event (a read
    that queued behind others) never rolls them back."""

    __slots__ = ("driver_id", "job_id", "last_fix", "seq", "status", "subs")

    def __init__(self, job_id: UUID) -> None:
        self.job_id = job_id
        self.subs: set[Subscription] = set()
        self.status: JobStatus | None = None
        self.driver_id: str | None = None
        self.last_fix: datetime | None = None
        self.seq = 0


class Hub:
    """The process's subscriptions by job and by the job's driver, and the routing of each consumed
    job event and position to them. No I/O: frames go to each subscription's send queue. For one
    event loop; not thread-safe."""

    def __init__(
        self,
        metrics: NotifierMetrics,
        catch_up: Callable[[Subscription], None],
        *,
        revoke: Callable[[Subscription, NotifierError], None],
        recent_drivers: int = RECENT_DRIVERS,
        clock: Clock | None = None,
    ) -> None:
        self._metrics = metrics
        self._catch_up = catch_up
        self._revoke = revoke  # ends a subscriber's connection (with the error's code)
        self._feeds: dict[UUID, JobFeed] = {}
        self._by_driver: dict[str, set[JobFeed]] = {}
        self._recent: OrderedDict[str, bytes] = OrderedDict()
        self._recent_drivers = recent_drivers
        self._clock = clock or SystemClock()

    # --- subscriptions --------------------------------------------------------------
    def watch(self, sub: Subscription) -> None:
        """From now on the job's live events reach `sub` (held until it goes live)."""
        feed = self._feeds.get(sub.job_id)
        if feed is None:
            feed = self._feeds[sub.job_id] = JobFeed(sub.job_id)
        feed.subs.add(sub)
        self._metrics.subscriptions.inc()

    def unwatch(self, sub: Subscription) -> None:
        feed = self._feeds.get(sub.job_id)
        if feed is None or sub not in feed.subs:
            return
        feed.subs.discard(sub)
        sub.send_queue.drop_positions(sub.job_id)
        self._metrics.subscriptions.dec()
        if not feed.subs:
            self._set_driver(feed, None)
            del self._feeds[sub.job_id]

    def know_job(self, job_id: UUID, status: JobStatus, driver_id: str | None, seq: int) -> None:
        """What a snapshot read at the job's `seq` says of it (its driver decides which
        positions go), unless the feed has heard of a newer state already."""
        feed = self._feeds.get(job_id)
        if feed is not None and seq >= feed.seq:
            feed.seq = seq
            feed.status = status
            self._set_driver(feed, driver_id)

    def _set_driver(self, feed: JobFeed, driver_id: str | None) -> None:
        if feed.driver_id == driver_id:
            return
        if feed.driver_id is not None:
            feeds = self._by_driver.get(feed.driver_id, set())
            feeds.discard(feed)
            if not feeds:
                self._by_driver.pop(feed.driver_id, None)
        feed.driver_id = driver_id
        feed.last_fix = None
        if driver_id is not None:
            self._by_driver.setdefault(driver_id, set()).add(feed)

    def _send_recent(self, feed: JobFeed, driver_id: str) -> None:
        """The driver's latest position, to a job that just got them, when it is recent."""
        raw = self._recent.get(driver_id)
        if raw is None:
            return
        try:
            update = PositionUpdate.model_validate_json(raw)
        except ValidationError:
            return
        if update.ts >= self._clock.now() - RECENT_FIX:
            self._position_to(feed, update)

    # --- consumed records -------------------------------------------------------------
    def job_event(self, frame: EventFrame, driver_id: str | None) -> None:
        feed = self._feeds.get(frame.job_id)
        if feed is None:
            return
        assigned = False
        if frame.seq > feed.seq:  # newer than what the feed knows: it decides
            feed.seq = frame.seq
            feed.status = JobStatus(frame.status)
            assigned = driver_id is not None and driver_id != feed.driver_id
            if driver_id is not None:
                self._set_driver(feed, driver_id)
            if assigned:
                self._end_unseeing(feed)
        for sub in list(feed.subs):
            ready = sub.seq.offer(frame)
            if ready is None:
                self._metrics.gap_fills.inc()
                self._catch_up(sub)
            else:
                sub.send_events(ready)
        if assigned and driver_id is not None:
            self._send_recent(feed, driver_id)  # after the event that says who it is

    def _end_unseeing(self, feed: JobFeed) -> None:
        """After a reassignment, the driver taken off the job sees it no more: their
        subscriptions end (4403) before this event, or any later one, reaches them."""
        for sub in list(feed.subs):
            viewer = sub.viewer
            if viewer is not None and viewer.role == Role.DRIVER and viewer.sub != feed.driver_id:
                self.unwatch(sub)
                self._revoke(sub, Forbidden(f"job {feed.job_id} is no longer yours"))

    def watches_driver(self, driver_id: str) -> bool:
        return driver_id in self._by_driver

    def remember(self, driver_id: str, raw: bytes) -> None:
        """A consumed position record of any driver, kept undecoded (most drivers are
        nobody's here, and decoding costs); the oldest drivers go past the bound."""
        self._recent[driver_id] = raw
        self._recent.move_to_end(driver_id)
        if len(self._recent) > self._recent_drivers:
            self._recent.popitem(last=False)

    def position(self, update: PositionUpdate) -> None:
        for feed in self._by_driver.get(update.driver_id, ()):
            self._position_to(feed, update)

    def _position_to(self, feed: JobFeed, update: PositionUpdate) -> None:
        if feed.status not in SHARES_POSITION:
            return
        if feed.last_fix is not None and update.ts <= feed.last_fix:
            return  # a replay or an older fix: positions only move forward
        feed.last_fix = update.ts
        frame = position_frame(feed.job_id, update)
        for sub in feed.subs:
            if sub.snapshot_sent:
                sub.send_queue.push_position(feed.job_id, frame, update.ts.timestamp())

    @property
    def feeds(self) -> int:
        return len(self._feeds)
