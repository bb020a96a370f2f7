"""The device registry as ingest holds it: `devices.v1` read whole into memory at start and
followed (runtime/kafka_table.py), so a fix needs no lookup off the process. A device
added or removed with `telemetry device` reaches every ingest process within a second or
so; until a process has read the registry, fixes get 503."""

import asyncio
import contextlib

from ingest.config import IngestSettings
from ingest.errors import DevicesUnavailable
from ingest.metrics import IngestMetrics
from runtime.clock import Clock
from runtime.kafka_table import KafkaTable
from schemas.devices import DeviceRecord


class KafkaDevices:
    """The registry, read from Kafka. `start` and `close` once each; one event loop."""

    def __init__(self, settings: IngestSettings, metrics: IngestMetrics, clock: Clock) -> None:
        self._table = KafkaTable(
            settings.kafka_bootstrap,
            settings.devices_topic,
            DeviceRecord.model_validate_json,
            clock,
            client_id="ingest-devices",
            on_bad=metrics.device_records_failed.inc,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._table.run_forever(), name="devices")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def loaded(self) -> bool:
        return self._table.loaded.is_set()

    @property
    def alive(self) -> bool:
        """The reader runs (it never ends but by a bug: then /healthz says so)."""
        return self._task is not None and not self._task.done()

    def driver_of(self, device_id: str) -> str | None:
        """The driver the device is registered to, or None; DevicesUnavailable before the
        registry is read."""
        if not self.loaded:
            raise DevicesUnavailable("the device registry is not read yet")
        record = self._table.rows.get(device_id)
        return None if record is None else record.driver_id
