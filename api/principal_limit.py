"""Each outside caller's share of an api process: a token bucket per principal.

A tenant that floods the api (a runaway integration, a script in a loop) is refused with
429 and Retry-After, and every other tenant goes on. Outside callers are customers and
drivers; dispatchers and ops are the operator's own staff, whose consoles read many jobs
at once, and are bounded by the edge's per-client limits only. The promise is per
process: a principal gets `rate_per_s` requests a second from each api process, in bursts of up to
`burst`; behind HAProxy with n processes, at most n times that. Kept in memory, not in
Redis: the check costs no round trip on the cached views' hot path, and with Redis away
the limit still holds.

At most `max_tracked` principals are remembered; past that, the one idle longest is
forgotten (it comes back with a full bucket, the most it could have had anyway after
enough idle time)."""

import math
from collections import OrderedDict

from api.errors import TooManyRequests
from runtime.clock import Clock, SystemClock
from schemas.auth import Principal, Role

LIMITED_ROLES = frozenset({Role.CUSTOMER, Role.DRIVER})


class PrincipalLimit:
    """A token bucket per caller (customers and drivers), in this process: `admit` raises
    TooManyRequests past the rate. Bounded in how many callers it tracks; for one event loop's
    tasks."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_tracked: int = 100_000,
        clock: Clock | None = None,
    ) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._max_tracked = max_tracked
        self._clock = clock or SystemClock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def admit(self, who: Principal) -> None:
        """Takes one of the caller's tokens, or raises TooManyRequests with the wait."""
        if who.role in LIMITED_ROLES:
            self.take(who.key)

    def take(self, key: str) -> None:
        """Takes one of `key`'s tokens, or raises TooManyRequests with the wait."""
        now = self._clock.monotonic()
        tokens, at = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        refused = tokens < 1.0
        self._buckets[key] = (tokens if refused else tokens - 1.0, now)
        if len(self._buckets) > self._max_tracked:
            self._buckets.popitem(last=False)
        if refused:
            wait_s = (1.0 - tokens) / self._rate
            raise TooManyRequests(math.ceil(wait_s))
