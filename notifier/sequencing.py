"""One subscription's place in its job's event stream, pure: which events it has been sent,
which live events it holds while it catches up, and when it may go live. The rule every
path keeps: a subscriber gets seq n only right after n - 1, so each event exactly once and
in order."""

from collections.abc import Iterable
from dataclasses import dataclass, field

from notifier.frames import EventFrame


@dataclass
class Sequencer:
    """The seq rule for one subscriber: which events to send, hold or drop so that each reaches it
    once, in order. Pure."""

    # The newest seq the subscriber has (sent, or part of what it had before a resume).
    sent_seq: int
    # The most live events held during a catch-up; past it the held ones are dropped and
    # fetched again from the log (bounded memory whatever the backlog).
    max_held: int = 1000
    live: bool = False
    held: dict[int, EventFrame] = field(default_factory=dict)

    def start_at(self, seq: int) -> None:
        """The subscriber has everything up to `seq` (its `last_seq`, or the snapshot's): the
        events held until now that are not newer are dropped."""
        self.sent_seq = seq
        self.held = {s: e for s, e in self.held.items() if s > seq}

    def offer(self, event: EventFrame) -> list[EventFrame] | None:
        """A live event: what to send now, or None when it reveals a gap (the subscriber
        stops being live and holds it; the caller starts a catch-up)."""
        if not self.live:
            self.hold([event])
            return []
        if event.seq <= self.sent_seq:
            return []  # a duplicate (a replay of the topic, or already sent from the log)
        if event.seq == self.sent_seq + 1:
            self.sent_seq = event.seq
            return [event]
        self.live = False
        self.hold([event])
        return None

    def hold(self, events: Iterable[EventFrame]) -> None:
        for event in events:
            if event.seq > self.sent_seq:
                self.held[event.seq] = event
        if len(self.held) > self.max_held:
            # Keep the newest: they are what the log may not have yet.
            for seq in sorted(self.held)[: len(self.held) - self.max_held]:
                del self.held[seq]

    def merge(
        self, fetched: Iterable[EventFrame], target_seq: int
    ) -> tuple[list[EventFrame], bool]:
        """Events fetched from the log (or PostgreSQL) merged with the held ones: the run that
        follows `sent_seq` without a gap, in order, and whether the subscriber may go live
        (it reached `target_seq`, the newest seq known to exist, and holds nothing past a
        gap). Not live: the caller fetches again."""
        self.hold(fetched)
        ready: list[EventFrame] = []
        while (nxt := self.held.pop(self.sent_seq + 1, None)) is not None:
            ready.append(nxt)
            self.sent_seq = nxt.seq
        self.live = not self.held and self.sent_seq >= target_seq
        return ready, self.live

    @property
    def wanted_seq(self) -> int:
        """The newest seq the subscriber knows exists but does not have (held events
        included): a catch-up fetches at least up to it."""
        return max(self.held, default=self.sent_seq)
