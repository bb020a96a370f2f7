"""The Publisher port on confluent-kafka (librdkafka): the records are batched and sent by
librdkafka's own threads, outside the event loop and the GIL; the acks come back through
one polling thread, handed to the loop a poll's worth at a time.

The contract is the aiokafka publisher's (ingest/publisher.py): `publish` returns once
the broker acked (acks=all, idempotence), BrokerUnavailable past the deadline; a record
may still be written after the deadline, as with aiokafka, and the stream deduplicates
by ping id."""

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import confluent_kafka

from ingest.errors import BrokerUnavailable
from ingest.metrics import IngestMetrics
from runtime.clock import Clock, SystemClock
from runtime.kafka import Headers

log = logging.getLogger(__name__)

# How long the polling thread blocks in one poll: the upper bound on noticing `close`.
POLL_S = 0.1

Settle = tuple[asyncio.Future[None], str | None]


def producer_config(bootstrap: str, *, client_id: str, timeout_s: float) -> dict[str, Any]:
    """A producer whose ack means durable, partitioning as aiokafka and the Java clients
    do (murmur2, so a driver's records land on the same partition whichever client wrote
    them), and giving up on a record at the publish deadline."""
    return {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 2,
        "compression.type": "none",
        "partitioner": "murmur2_random",
        "message.timeout.ms": int(timeout_s * 1000),
        "socket.connection.setup.timeout.ms": int(timeout_s * 1000),
    }


class ConfluentPublisher:
    """`publish` hands the record to librdkafka and awaits its delivery report. A fatal
    error (idempotence broken) replaces the producer, as AckedProducer does for aiokafka."""

    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        metrics: IngestMetrics,
        *,
        timeout_s: float,
        clock: Clock | None = None,
        factory: Callable[[dict[str, Any]], Any] = confluent_kafka.Producer,
    ) -> None:
        self._config = config
        self._topic = topic
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._clock = clock or SystemClock()
        self._factory = factory
        self._producer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: threading.Thread | None = None
        self._closing = threading.Event()
        self._settled: list[Settle] = []  # filled by delivery reports, inside one poll
        self.replaced = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._producer = self._factory(self._config)
        self._poller = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._closing.is_set():
            producer = self._producer
            producer.poll(POLL_S)
            # Every ack of this poll in one hand-over: one wake-up of the loop, not one each.
            settled, self._settled = self._settled, []
            if settled and self._loop is not None:
                self._loop.call_soon_threadsafe(_settle_all, settled)

    def _on_delivery(self, future: asyncio.Future[None], err: Any, _msg: Any) -> None:
        # In the polling thread, inside poll().
        if err is not None and err.fatal():
            self._replace(err)
        self._settled.append((future, None if err is None else str(err)))

    def _replace(self, err: Any) -> None:
        log.error("producer failed for good (%s): replacing it", err)
        self._producer = self._factory(self._config)
        self.replaced += 1

    async def publish(self, key: bytes, value: bytes, headers: Headers = ()) -> None:
        """Returns once the broker acked (acks=all); BrokerUnavailable past the deadline."""
        assert self._loop is not None, "start() first"
        started = self._clock.monotonic()
        future: asyncio.Future[None] = self._loop.create_future()
        try:
            self._producer.produce(
                self._topic,
                value,
                key,
                headers=list(headers),
                on_delivery=lambda err, msg: self._on_delivery(future, err, msg),
            )
            async with asyncio.timeout(self._timeout_s):
                await future
        except BufferError as exc:  # librdkafka's queue is full: the broker is not keeping up
            raise BrokerUnavailable(f"Kafka's send queue is full: {exc}") from exc
        except confluent_kafka.KafkaException as exc:
            raise BrokerUnavailable(f"Kafka refused: {exc}") from exc
        except TimeoutError as exc:
            raise BrokerUnavailable("Kafka did not acknowledge in time") from exc
        finally:
            self._metrics.producers_replaced.set(self.replaced)
        self._metrics.produce_latency.observe(self._clock.monotonic() - started)

    async def ready(self) -> bool:
        try:
            await asyncio.to_thread(self._producer.list_topics, self._topic, self._timeout_s)
        except confluent_kafka.KafkaException:
            return False
        return True

    async def close(self) -> None:
        if self._producer is None:
            return
        # What is queued gets its chance to be acked before the threads stop.
        await asyncio.to_thread(self._producer.flush, self._timeout_s)
        self._closing.set()
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join)


def _settle_all(settled: list[Settle]) -> None:
    for future, error in settled:
        if future.done():  # its request gave up (deadline, hang-up)
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(confluent_kafka.KafkaException(error))
