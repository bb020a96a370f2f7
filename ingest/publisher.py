"""The Kafka adapter: publishes a driver's batch and waits, with a bound, for the ack."""

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
    """Owns one producer; recreates it when the broker was unreachable at start."""

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
                # start() itself may hang while no broker answers (aiokafka issue 1101).
                await asyncio.wait_for(producer.start(), self._timeout_s)
            except (TimeoutError, KafkaError, OSError) as exc:
                await self._stop(producer)
                raise BrokerUnavailable(f"Kafka unreachable: {exc!r}") from exc
            self._producer = producer
            return producer

    async def start(self) -> None:
        """Try once; a broker that is down now must not stop the service from starting."""
        try:
            await self._ensure_started()
        except BrokerUnavailable as exc:
            log.warning("producer not started yet: %s", exc)

    async def publish(self, key: bytes, value: bytes) -> None:
        """Returns once the broker acked (acks=all); BrokerUnavailable otherwise."""
        producer = await self._ensure_started()
        started = time.perf_counter()
        try:
            await asyncio.wait_for(
                producer.send_and_wait(self._topic, value=value, key=key), self._timeout_s
            )
        except (TimeoutError, KafkaError) as exc:
            # The record may still be written after we gave up: the client will retry with
            # the same ping_ids and the stream deduplicates them (design section 13).
            raise BrokerUnavailable(f"Kafka did not acknowledge: {exc!r}") from exc
        self._metrics.produce_latency.observe(time.perf_counter() - started)

    async def _stop(self, producer: AIOKafkaProducer) -> None:
        try:
            await asyncio.wait_for(producer.stop(), self._shutdown_timeout_s)
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("producer did not stop cleanly: %r", exc)

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._stop(producer)
