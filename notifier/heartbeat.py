"""When each connection is due its next keepalive, pure: every `interval_s`, the first one
at a random point of the interval, so thousands of clients that came back at once (a
process died, they all reconnected here) are not pinged in the same instant, which would
stall everything else the process does for a while."""

import heapq
import itertools
import random
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class Schedule(Generic[T]):
    """When each connection's next keepalive is due: spread over the interval, so a storm of new
    connections does not ping in step. Pure; not thread-safe."""

    def __init__(self, interval_s: float, rng: random.Random | None = None) -> None:
        self._interval = interval_s
        self._rng = rng or random.Random()
        self._heap: list[tuple[float, int, T]] = []
        self._order = itertools.count()  # ties: first in, first out (entries never compare)
        self._members: set[T] = set()

    def add(self, item: T, now: float) -> None:
        self._members.add(item)
        due = now + self._rng.uniform(0, self._interval)
        heapq.heappush(self._heap, (due, next(self._order), item))

    def remove(self, item: T) -> None:
        self._members.discard(item)  # its heap entry is dropped when it comes due

    def due(self, now: float) -> list[T]:
        """The items due by `now`, each rescheduled an interval after its due time."""
        found: list[T] = []
        while self._heap and self._heap[0][0] <= now:
            due, _, item = heapq.heappop(self._heap)
            if item not in self._members:
                continue
            found.append(item)
            heapq.heappush(self._heap, (due + self._interval, next(self._order), item))
        return found

    def __len__(self) -> int:
        return len(self._members)
