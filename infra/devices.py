"""The device registry, for operators (`telemetry device add|list|remove`): which driver
each GPS device sends fixes for. It lives in the compacted topic `devices.v1` (one record
per device, the latest kept for good; a tombstone removes one), which every ingest
process reads whole and follows (ingest/devices.py). A write returns once the broker has
it (acks=all)."""

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka.errors import KafkaError
from pydantic import TypeAdapter, ValidationError

from infra.config import StackConfig
from infra.procs import StackError
from runtime.clock import SystemClock
from runtime.kafka import durable_producer
from runtime.kafka_table import KafkaTable
from schemas import topics
from schemas.devices import DeviceId, DeviceRecord
from schemas.ids import EntityId

T = TypeVar("T")
_DEVICE_ID: TypeAdapter[str] = TypeAdapter(DeviceId)
_DRIVER_ID: TypeAdapter[str] = TypeAdapter(EntityId)


def _checked(adapter: TypeAdapter[str], value: str, what: str) -> str:
    try:
        return adapter.validate_python(value)
    except ValidationError:
        raise StackError(
            f"{what} {value[:140]!r}: 1 to 128 of A-Z a-z 0-9 . _ : @ -, starting with a letter"
            " or a digit"
        ) from None


async def _write(config: StackConfig, key: str, value: bytes | None) -> None:
    producer = durable_producer(config.kafka_bootstrap, client_id="telemetry-devices")
    try:
        await asyncio.wait_for(producer.start(), 15)
        await asyncio.wait_for(producer.send_and_wait(topics.DEVICES, value, key.encode()), 15)
    finally:
        await producer.stop()  # also after a failed start: nothing left open


def _run(config: StackConfig, work: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(work)
    except (KafkaError, TimeoutError, OSError) as exc:
        raise StackError(
            f"the device registry on {config.kafka_bootstrap} did not answer: {exc!r}"
            " (is the stack up?)"
        ) from exc


def add(config: StackConfig, device_id: str, driver_id: str) -> DeviceRecord:
    """Registers the device to the driver (again: to another driver)."""
    device_id = _checked(_DEVICE_ID, device_id, "device id")
    record = DeviceRecord(driver_id=_checked(_DRIVER_ID, driver_id, "driver id"),
                          added_at=datetime.now(UTC))  # fmt: skip
    _run(config, _write(config, device_id, record.model_dump_json().encode()))
    return record


def remove(config: StackConfig, device_id: str) -> bool:
    """Removes the device; False when it was not registered."""
    if device_id not in listing(config):
        return False
    _run(config, _write(config, device_id, None))
    return True


def listing(config: StackConfig) -> dict[str, DeviceRecord]:
    """Every registered device, as the topic holds them now."""
    table = KafkaTable(
        config.kafka_bootstrap,
        topics.DEVICES,
        DeviceRecord.model_validate_json,
        SystemClock(),
        client_id="telemetry-devices",
    )
    return _run(config, table.read_once())
