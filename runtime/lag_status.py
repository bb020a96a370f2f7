"""A partition's consumer status from samples of its lag over a window, after Burrow's
evaluation rules (github.com/linkedin/Burrow, "Consumer Lag Evaluation Rules"), with one
observable difference: a consumer has stopped when its group has no member left, rather
than when its last commit is older than the window.

- OK: the lag was zero at some point of the window, or the group commits and keeps up.
- WARN: the group commits, but the lag grew in every interval: it is falling behind.
- STALL: lag, and the committed offset did not move over the whole window: a consumer is
  assigned but stuck (a paused process, a poison record, a batch failing again and again).
- STOP: lag, and the group has no member: nobody is consuming.
- REWIND: the committed offset went backwards (a reset, or a bug)."""

import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """A partition's lag status over a window of looks, after Burrow's rules."""

    OK = "OK"
    WARN = "WARN"
    STALL = "STALL"
    STOP = "STOP"
    REWIND = "REWIND"


@dataclass(frozen=True)
class Sample:
    """One look at a partition: the committed offset (None: never committed) and the lag."""

    committed: int | None
    lag: int


def evaluate(window: Sequence[Sample], *, group_has_members: bool) -> Status:
    """The status of one partition over `window` (oldest first, at least one sample)."""
    if not window:
        raise ValueError("a status needs at least one sample")
    if any(s.lag == 0 for s in window):
        return Status.OK
    if not group_has_members:
        return Status.STOP
    committed = [s.committed for s in window]
    known = [c for c in committed if c is not None]
    if any(later < earlier for earlier, later in itertools.pairwise(known)):
        return Status.REWIND
    if len(window) < 2:
        return Status.OK  # one look: nothing to compare yet
    if len(set(committed)) == 1:
        return Status.STALL
    lags = [s.lag for s in window]
    if all(later > earlier for earlier, later in itertools.pairwise(lags)):
        return Status.WARN
    return Status.OK


class LagWindow:
    """The last `size` samples of each partition (keyed by group, topic, partition), for
    `evaluate`: a live view adds one look at a time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._samples: dict[tuple[str, str, int], deque[Sample]] = {}

    def add(self, key: tuple[str, str, int], sample: Sample) -> None:
        self._samples.setdefault(key, deque(maxlen=self.size)).append(sample)

    def status(self, key: tuple[str, str, int], *, group_has_members: bool) -> Status:
        return evaluate(list(self._samples[key]), group_has_members=group_has_members)
