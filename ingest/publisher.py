"""The Kafka adapter: publishes a driver's batch and waits, within a deadline, for the ack."""

import asyncio
import logging
import time

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ingest.errors import BrokerUnavailable
from ingest.metrics import IngestMetrics
from runtime.kafka import durable_producer

log = logging.getLogger(__name__)


class PingPublisher:
    """Owns one producer; creates it lazily so the service starts (and answers 503) while
    the broker is down, and recovers by itself when it returns."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        timeout_s: float,
        shutdown_timeout_s: float,
        metrics: IngestMetrics,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._timeout_s = timeout_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._metrics = metrics
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    @property
    def ready(self) -> bool:
        return self._producer is not None

    async def _ensure_started(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is not None:
                return self._producer
            producer = durable_producer(self._bootstrap, client_id="ingest")
            try:
                await producer.start()
            except BaseException:
                # Failed or cancelled by the caller's deadline: drop this producer (its
                # background tasks included) and try a fresh one next time.
                await asyncio.shield(self._stop(producer))
                raise
            self._producer = producer
            return producer

    async def start(self) -> None:
        """Try once; a broker that is down now must not stop the service from starting."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._ensure_started()
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("producer not started yet: %r", exc)

    async def publish(self, key: bytes, value: bytes) -> None:
        """Returns once the broker acked (acks=all); BrokerUnavailable past the deadline."""
        started = time.perf_counter()
        try:
            # One deadline for everything: connecting, queueing and the ack. aiokafka can
            # otherwise wait forever when every broker is gone (aiokafka issue 1101).
            async with asyncio.timeout(self._timeout_s):
                producer = await self._ensure_started()
                ack = await producer.send(self._topic, value=value, key=key)
                await ack
        except (TimeoutError, KafkaError, OSError) as exc:
            # The record may still be written after we gave up: the client retries with
            # the same ping_ids and the stream deduplicates them (design section 13).
            raise BrokerUnavailable(f"Kafka did not acknowledge: {exc!r}") from exc
        self._metrics.produce_latency.observe(time.perf_counter() - started)

    async def _stop(self, producer: AIOKafkaProducer) -> None:
        try:
            async with asyncio.timeout(self._shutdown_timeout_s):
                await producer.stop()
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("producer did not stop cleanly: %r", exc)

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._stop(producer)
