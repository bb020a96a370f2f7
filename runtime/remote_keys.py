"""An identity provider's keys, from its JWKS URL (`*_JWT_JWKS_URL`, docs/auth.md).

Fetched at start (a service that cannot fetch them refuses to start), again every
`refresh_s`, and when a token names a key id not held (at most once per `min_fetch_s`, so
made-up kids cannot make us hammer the provider). Fetches run on a thread of their own:
a request never waits for the provider. A token whose key arrives with the fetch it
started is refused (401) and passes when sent again; a fetch that fails keeps the keys
held (and says so in the log)."""

import logging
import threading

import httpx

from runtime.clock import Clock
from runtime.jwks import VerifyingKey, pick, read_keys

log = logging.getLogger(__name__)


class RemoteKeySet:
    """A key source over a JWKS URL. Safe to use from the event loop's thread."""

    def __init__(
        self,
        url: str,
        clock: Clock,
        *,
        refresh_s: float = 300.0,
        min_fetch_s: float = 10.0,
        timeout_s: float = 5.0,
    ) -> None:
        self._url = url
        self._clock = clock
        self._refresh_s = refresh_s
        self._min_fetch_s = min_fetch_s
        self._timeout_s = timeout_s
        self._keys = self._fetch()
        self._fetched = clock.monotonic()
        self._fetching = threading.Lock()

    def _fetch(self) -> dict[str, VerifyingKey]:
        answer = httpx.get(self._url, timeout=self._timeout_s, follow_redirects=True)
        answer.raise_for_status()
        return read_keys(answer.content)

    def _fetch_in_background(self) -> None:
        if self._clock.monotonic() - self._fetched < self._min_fetch_s:
            return
        if not self._fetching.acquire(blocking=False):
            return  # one fetch at a time
        self._fetched = self._clock.monotonic()

        def fetch() -> None:
            try:
                self._keys = self._fetch()  # one assignment: readers see old or new
                log.info("keys fetched from %s: %s", self._url, ", ".join(self._keys))
            except (httpx.HTTPError, ValueError) as exc:
                log.error("keys not fetched from %s, the held ones stay: %r", self._url, exc)
            finally:
                self._fetching.release()

        threading.Thread(target=fetch, name="jwks-fetch", daemon=True).start()

    def current(self) -> dict[str, VerifyingKey]:
        if self._clock.monotonic() - self._fetched >= self._refresh_s:
            self._fetch_in_background()
        return self._keys

    def candidates(self, kid: str | None) -> list[VerifyingKey]:
        # Not held: the provider may have rotated; its fetch runs aside, this token is refused.
        return pick(self.current, kid, self._fetch_in_background)
