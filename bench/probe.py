"""Ping-to-queryable latency: posts one probe ping at a time through ingest and times how
long until it is the driver's position in the database."""

import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg

from bench.stats import new_histogram
from runtime.auth import issue_token
from schemas.auth import Role


class LatencyProbe(threading.Thread):
    """A thread that posts a marked ping now and then and times it until it is queryable in
    PostgreSQL."""

    def __init__(
        self,
        ingest_url: str,
        dsn: str,
        private_key: Path,
        interval_s: float = 0.25,
        give_up_s: float = 30.0,
    ) -> None:
        super().__init__(daemon=True, name="latency-probe")
        self.driver = f"probe-{uuid.uuid4().hex[:8]}"
        self._url = ingest_url
        self._dsn = dsn
        self._token = issue_token(private_key, sub=self.driver, role=Role.DRIVER)
        self._interval_s = interval_s
        self._give_up_s = give_up_s
        self._halt = threading.Event()
        self.histogram = new_histogram()  # microseconds
        self.lost = 0  # probes not visible within give_up_s

    def run(self) -> None:
        with httpx.Client(timeout=5) as client, psycopg.connect(self._dsn, autocommit=True) as conn:
            while not self._halt.is_set():
                ping_id = str(uuid.uuid4())
                ping = {
                    "ping_id": ping_id,
                    "ts": datetime.now(UTC).isoformat(),
                    "lat": 12.9,
                    "lon": 77.6,
                }
                posted = time.perf_counter()
                try:
                    r = client.post(
                        self._url,
                        json={"pings": [ping]},
                        headers={"Authorization": f"Bearer {self._token}"},
                    )
                except httpx.HTTPError:
                    continue
                if r.status_code != 202:
                    self._halt.wait(self._interval_s)
                    continue
                while time.perf_counter() - posted < self._give_up_s:
                    row = conn.execute(
                        "SELECT 1 FROM driver_positions WHERE driver_id = %s AND ping_id = %s",
                        [self.driver, ping_id],
                    ).fetchone()
                    if row:
                        self.histogram.record_value(
                            max(1, int((time.perf_counter() - posted) * 1e6))
                        )
                        break
                    time.sleep(0.005)
                else:
                    self.lost += 1
                self._halt.wait(self._interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=self._give_up_s + 10)

    def percentile_ms(self, p: float) -> float:
        if self.histogram.get_total_count() == 0:
            return float("nan")
        return float(self.histogram.get_value_at_percentile(p)) / 1000.0
