"""The ceiling: a bare aiokafka producer, same settings as ingest (acks=all, idempotent),
sending the same records as fast as it can, with no HTTP, auth or validation."""

import asyncio
import time
from dataclasses import dataclass

from runtime.kafka import durable_producer

WINDOW = 2000  # records awaiting their ack at once


@dataclass(frozen=True)
class BareResult:
    """What the bare producer sent: records and the time it took."""

    records: int
    seconds: float

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


async def produce(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], duration_s: float
) -> BareResult:
    """Cycles through `records` for `duration_s`; counts acknowledged records."""
    producer = durable_producer(bootstrap, client_id="bench-bare")
    await producer.start()
    sent = 0
    try:
        started = time.perf_counter()
        deadline = started + duration_s
        i = 0
        while time.perf_counter() < deadline:
            pending = []
            for _ in range(WINDOW):
                key, value = records[i % len(records)]
                pending.append(await producer.send(topic, value=value, key=key))
                i += 1
            await asyncio.gather(*pending)
            sent += len(pending)
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
    return BareResult(sent, elapsed)


async def produce_each(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]
) -> BareResult:
    """Sends every record once, `WINDOW` awaiting their acks at a time."""
    producer = durable_producer(bootstrap, client_id="bench-preload")
    await producer.start()
    try:
        started = time.perf_counter()
        for at in range(0, len(records), WINDOW):
            pending = [
                await producer.send(topic, value=value, key=key)
                for key, value in records[at : at + WINDOW]
            ]
            await asyncio.gather(*pending)
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
    return BareResult(len(records), elapsed)
