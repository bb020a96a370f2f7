"""The outbox relay's publishing step on a recorded producer: a row Kafka refuses for good,
or one that makes the relay raise, is found and dead-lettered once rounds have failed, and
the rows after it go out in order; an outage dead-letters nothing."""

from collections.abc import Sequence

import pytest

from jobs.relay import Row, publish
from runtime.kafka import Message, ProduceFailed


def rows(*keys: str) -> list[Row]:
    return [(i, "job-events.v1", key, '{"seq": 1}') for i, key in enumerate(keys, start=1)]


class RecordedProducer:
    """Acks every message but those of `refused` keys (each refusal an `error`)."""

    def __init__(self, refused: dict[bytes, Exception]) -> None:
        self.refused = refused
        self.acked: list[bytes | None] = []

    async def send_all(self, messages: Sequence[Message]) -> None:
        for m in messages:
            if m.key in self.refused:
                raise self.refused[m.key]
        self.acked.extend(m.key for m in messages)


async def test_a_round_raises_what_the_send_raised_until_it_isolates() -> None:
    producer = RecordedProducer({b"big": ProduceFailed("too large", retriable=False)})
    with pytest.raises(ProduceFailed):
        await publish(producer, rows("a", "big", "c"), isolate=False)
    assert producer.acked == []


@pytest.mark.parametrize(
    "error",
    [ProduceFailed("MessageSizeTooLargeError", retriable=False), TypeError("a bug"), KeyError("k")],
)
async def test_isolating_dead_letters_the_row_at_fault_and_sends_the_rest_in_order(
    error: Exception,
) -> None:
    producer = RecordedProducer({b"bad": error})
    dead = await publish(producer, rows("a", "bad", "c", "d"), isolate=True)
    assert list(dead) == [2] and dead[2]
    assert producer.acked == [b"a", b"c", b"d"]


async def test_an_outage_while_isolating_dead_letters_nothing() -> None:
    producer = RecordedProducer({b"b": ProduceFailed("no ack in time", retriable=True)})
    with pytest.raises(ProduceFailed):
        await publish(producer, rows("a", "b", "c"), isolate=True)


async def test_every_row_failing_alone_is_not_one_rows_fault() -> None:
    broken = RuntimeError("the producer is broken")
    producer = RecordedProducer({b"a": broken, b"b": broken})
    with pytest.raises(RuntimeError, match="not one row's fault"):
        await publish(producer, rows("a", "b"), isolate=True)
