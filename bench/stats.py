"""Counters and an HdrHistogram of request latency that several processes can merge."""

from dataclasses import dataclass, field, fields
from typing import Any

from hdrh.histogram import HdrHistogram

# Microseconds, from 1 us to 2 minutes, 3 significant digits.
LATENCY_MAX_US = 120_000_000


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, LATENCY_MAX_US, 3)


@dataclass
class FleetStats:
    """A fleet's running counts and latency histogram; safe to read from the display while the fleet
    updates it."""

    requests: int = 0
    pings_sent: int = 0  # pings in requests that got an answer, counted once per batch
    accepted: int = 0
    rejected: int = 0
    retried: int = 0  # attempts after the first
    failed_batches: int = 0  # given up after retries, or refused as a whole
    failed_pings: int = 0
    dropped_offline: int = 0  # fell off a full offline buffer on the phone
    # Fleet processes stopped at the deadline with retries still pending (an overloaded
    # ingest): their figures are those of their last report.
    unfinished_slices: int = 0
    # The jobs flow (bench/jobs_flow.py), when the fleet runs one.
    jobs_created: int = 0
    jobs_assigned: int = 0
    jobs_picked_up: int = 0
    jobs_completed: int = 0  # complete answered 202
    job_failures: int = 0  # a job call refused, or unanswered after its retries
    eta_samples: list[list[Any]] = field(default_factory=list)  # Order.scored()'s rows
    status_counts: dict[str, int] = field(default_factory=dict)
    latency_us: HdrHistogram = field(default_factory=new_histogram)

    def record_latency(self, seconds: float) -> None:
        self.latency_us.record_value(max(1, min(LATENCY_MAX_US, int(seconds * 1e6))))

    def count_status(self, status: int | str) -> None:
        key = str(status)
        self.status_counts[key] = self.status_counts.get(key, 0) + 1

    def percentile_ms(self, p: float) -> float:
        if self.latency_us.get_total_count() == 0:
            return 0.0
        return float(self.latency_us.get_value_at_percentile(p)) / 1000.0

    def snapshot(self) -> dict[str, Any]:
        """A picklable copy for another process (the histogram travels encoded)."""
        data: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name != "latency_us"
        }
        data["status_counts"] = dict(self.status_counts)
        data["eta_samples"] = list(self.eta_samples)
        data["latency_us"] = self.latency_us.encode()
        return data

    @classmethod
    def merged(cls, snapshots: list[dict[str, Any]]) -> "FleetStats":
        total = cls()
        for snap in snapshots:
            for f in fields(cls):
                if f.name in ("latency_us", "status_counts"):
                    continue
                setattr(total, f.name, getattr(total, f.name) + snap[f.name])
            for key, value in snap["status_counts"].items():
                total.status_counts[key] = total.status_counts.get(key, 0) + value
            total.latency_us.add(HdrHistogram.decode(snap["latency_us"]))
        return total

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "pings_sent": self.pings_sent,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "retried": self.retried,
            "failed_batches": self.failed_batches,
            "failed_pings": self.failed_pings,
            "dropped_offline": self.dropped_offline,
            "unfinished_slices": self.unfinished_slices,
            "status_counts": dict(self.status_counts),
            "jobs": {
                "created": self.jobs_created,
                "assigned": self.jobs_assigned,
                "picked_up": self.jobs_picked_up,
                "completed": self.jobs_completed,
                "failures": self.job_failures,
                "eta_samples": len(self.eta_samples),
            },
            "latency_ms": {
                "p50": self.percentile_ms(50),
                "p90": self.percentile_ms(90),
                "p99": self.percentile_ms(99),
                "max": self.percentile_ms(100),
            },
        }
