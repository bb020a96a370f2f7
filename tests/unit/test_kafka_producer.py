"""The acked producer: a fatal error replaces the producer instead of failing every later
send; a broker that does not answer is a ProduceFailed within the deadline."""

import asyncio
from typing import Any

import pytest
from aiokafka.errors import OutOfOrderSequenceNumber
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from runtime.kafka import AckedProducer, Message, ProduceFailed, partition_by_key


class FakeProducer:
    """Acks every send, except that the first `fatal` producers made die on their first."""

    def __init__(self, fatal: bool = False, hang: bool = False) -> None:
        self.fatal = fatal
        self.hang = hang
        self.sent: list[bytes] = []
        self.stopped = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, value: bytes, key: Any = None, headers: Any = None) -> Any:
        if self.fatal:
            raise OutOfOrderSequenceNumber()
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.hang:
            self.sent.append(value)
            ack.set_result(None)
        return ack


async def test_a_fatal_error_replaces_the_producer() -> None:
    made: list[FakeProducer] = []

    def factory() -> Any:
        made.append(FakeProducer(fatal=not made))  # the first one is broken for good
        return made[-1]

    producer = AckedProducer(factory, timeout_s=1, shutdown_timeout_s=1)
    with pytest.raises(ProduceFailed):
        await producer.send_all([Message("t", b"k", b"one")])
    await producer.send_all([Message("t", b"k", b"two")])
    assert len(made) == 2 and made[0].stopped
    assert made[1].sent == [b"two"]
    assert producer.replaced == 1


async def test_no_ack_within_the_deadline_is_a_produce_failure() -> None:
    producer = AckedProducer(lambda: FakeProducer(hang=True), timeout_s=0.1, shutdown_timeout_s=1)
    with pytest.raises(ProduceFailed, match="in time"):
        await producer.send_all([Message("t", None, b"x")])
    assert producer.replaced == 0  # a slow broker is not a broken producer


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=20), st.integers(1, 64))
def test_the_producers_partitioner_is_kafkas_default_one(
    keys: list[bytes], partitions: int
) -> None:
    # Remembered hashes change nothing: each key twice, the second from the cache.
    everyone = list(range(partitions))
    for key in keys + keys:
        assert partition_by_key(key, everyone, everyone) == DefaultPartitioner()(
            key, everyone, everyone
        )
