"""The Kafka adapter of ingest: publishes a driver's batch and waits, within a deadline,
for the ack."""

from ingest.errors import BrokerUnavailable
from ingest.metrics import IngestMetrics
from runtime.clock import Clock, SystemClock
from runtime.kafka import AckedProducer, Headers, Message, ProduceFailed


class PingPublisher:
    """The Publisher port on Kafka: `publish` returns once the broker has acked the record
    (acks=all), BrokerUnavailable otherwise."""

    def __init__(
        self,
        producer: AckedProducer,
        topic: str,
        metrics: IngestMetrics,
        clock: Clock | None = None,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._metrics = metrics
        self._clock = clock or SystemClock()

    async def start(self) -> None:
        await self._producer.start()

    async def publish(self, key: bytes, value: bytes, headers: Headers = ()) -> None:
        """Returns once the broker acked (acks=all); BrokerUnavailable past the deadline."""
        started = self._clock.monotonic()
        try:
            await self._producer.send_all([Message(self._topic, key, value, headers)])
        except ProduceFailed as exc:
            raise BrokerUnavailable(str(exc)) from exc
        finally:
            self._metrics.producers_replaced.set(self._producer.replaced)
        self._metrics.produce_latency.observe(self._clock.monotonic() - started)

    async def ready(self) -> bool:
        return await self._producer.broker_reachable()

    async def close(self) -> None:
        await self._producer.close()
