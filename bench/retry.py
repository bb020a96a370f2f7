"""When a driver app retries a post: honour Retry-After, else back off with full jitter."""

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """How a simulated app retries: backoff with jitter, honouring Retry-After, reusing the ping
    ids."""

    max_attempts: int = 8
    base_s: float = 0.25
    cap_s: float = 30.0

    def delay_s(
        self,
        attempt: int,
        status: int | None,
        retry_after: str | None,
        rng: random.Random,
        now: datetime,
    ) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to stop.

        `status` None means the request failed without an answer (timeout, refused)."""
        if attempt >= self.max_attempts:
            return None
        if status is not None and status not in RETRYABLE_STATUS:
            return None  # success, or a 4xx that the same bytes would get again
        hinted = parse_retry_after(retry_after, now)
        if hinted is not None:
            # A little jitter so a fleet told "1 s" does not come back in one spike.
            return min(self.cap_s, hinted + rng.uniform(0.0, 0.25 * max(hinted, 0.2)))
        return rng.uniform(0.0, min(self.cap_s, self.base_s * 2**attempt))
