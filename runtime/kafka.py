"""Kafka producers whose ack means durable (docs/architecture.md, "Invariants"), and one
adapter that waits for the broker's ack within a deadline and heals itself."""

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner, murmur2

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1 << 16)
def _key_hash(key: bytes) -> int:
    # aiokafka's murmur2 is pure Python (a few microseconds a key), and a fleet's keys, its
    # drivers, come back every few seconds: recent ones are remembered.
    return int(murmur2(key)) & 0x7FFFFFFF


def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a key (murmur2, as the Java clients
    and aiokafka's DefaultPartitioner)."""
    return _key_hash(key) % partitions


def partition_by_key(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka's DefaultPartitioner with remembered hashes (the same partition per key)."""
    if key is None:
        chosen: int = DefaultPartitioner()(key, all_partitions, available)
        return chosen
    return all_partitions[key_partition(key, len(all_partitions))]


def durable_producer(
    bootstrap: str, *, client_id: str, request_timeout_ms: int = 5000
) -> AIOKafkaProducer:
    """A producer whose ack means durable: acks=all and idempotence, both explicit because
    aiokafka defaults to acks=1 without idempotence. Not started."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        request_timeout_ms=request_timeout_ms,
        compression_type=None,
        partitioner=partition_by_key,
    )


class ProduceFailed(Exception):
    """Kafka did not acknowledge within the deadline (or refused). `retriable` False: the
    broker refused these records for good (too large, say); sending them again fails too."""

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable


# A record's headers, in order (a name may repeat).
Headers = Sequence[tuple[str, bytes]]
# Header values are bytes; an error stays readable and its record under the size limit.
MAX_ERROR_HEADER_BYTES = 4000


def error_header(error: str) -> tuple[str, bytes]:
    """The header a dead-lettered record carries: why it was dead-lettered."""
    return ("error", error.encode()[:MAX_ERROR_HEADER_BYTES])


@dataclass(frozen=True, slots=True)
class Message:
    """One record to produce: its topic, key, value and headers."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers = ()


ProducerFactory = Callable[[], AIOKafkaProducer]


class AckedProducer:
    """Owns one producer. Creates it lazily, so a service starts (and answers 503) while
    the broker is down and recovers by itself when it returns. A producer that failed for
    good (a non-retriable error such as OutOfOrderSequenceNumber kills aiokafka's sender,
    and every later send would fail the same way) is replaced by a fresh one."""

    def __init__(
        self, factory: ProducerFactory, *, timeout_s: float, shutdown_timeout_s: float
    ) -> None:
        self._factory = factory
        self._timeout_s = timeout_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self.replaced = 0  # producers discarded after a fatal error (a metric reads it)

    @property
    def started(self) -> bool:
        return self._producer is not None

    async def _ensure_started(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer  # the usual case, without the lock
        async with self._starting:
            if self._producer is not None:
                return self._producer
            producer = self._factory()
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

    async def send_all(self, messages: Sequence[Message]) -> None:
        """Returns once the broker acked every message (acks=all); ProduceFailed past the
        deadline. One deadline for everything, connecting, queueing and the acks: aiokafka
        can otherwise wait forever when every broker is gone (aiokafka issue 1101)."""
        producer: AIOKafkaProducer | None = None
        try:
            async with asyncio.timeout(self._timeout_s):
                producer = await self._ensure_started()
                acks = [
                    await producer.send(m.topic, value=m.value, key=m.key, headers=list(m.headers))
                    for m in messages
                ]
                await asyncio.gather(*acks)
        except KafkaError as exc:
            if not exc.retriable and producer is not None:
                await self._discard(producer, exc)
            raise ProduceFailed(f"Kafka refused: {exc!r}", retriable=exc.retriable) from exc
        except (TimeoutError, OSError) as exc:
            # The record may still be written after we gave up: consumers deduplicate
            # (pings by ping_id, positions by driver and fix time).
            raise ProduceFailed(f"Kafka did not acknowledge in time: {exc!r}") from exc

    async def broker_reachable(self) -> bool:
        """A metadata request answered within the deadline (for /readyz)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                producer = await self._ensure_started()
                await producer.client.fetch_all_metadata()
        except (TimeoutError, KafkaError, OSError):
            return False
        return True

    async def _discard(self, producer: AIOKafkaProducer, exc: KafkaError) -> None:
        async with self._starting:
            if self._producer is producer:
                self._producer = None
                self.replaced += 1
        log.error("producer failed for good (%r): replacing it", exc)
        await self._stop(producer)

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
