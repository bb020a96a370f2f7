"""docs/asyncapi.yaml against reality: every frame the notifier builds and every record the
services write validates against the schema the document publishes for it, and a frame
that breaks the shape does not (jsonschema, Draft 2020-12, over the document itself)."""

import uuid
from datetime import UTC, datetime
from typing import Any

import jsonschema
import orjson
import pytest

from cli.asyncapi import document
from notifier.frames import event_frame, ping_frame, position_frame, resync_frame, snapshot_frame
from schemas.devices import DeviceRecord
from schemas.jobs import JobEvent, JobStatus
from schemas.notifier import Auth, CloseCode, Subscribe
from schemas.pings import Ping
from schemas.pings_wire import encode_record, wire_ping
from schemas.positions import PositionUpdate
from schemas.tasks import ProofPhotoTask

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
DOC = document()
JOB = uuid.uuid4()
POSITION = PositionUpdate(driver_id="d1", ping_id=uuid.uuid4(), ts=NOW, lat=12.9, lon=77.6,
                          speed_mps=4.2, heading_deg=None)  # fmt: skip
EVENT = JobEvent(job_id=JOB, seq=3, type="job.status", status=JobStatus.PICKED_UP, at=NOW,
                 data={"driver_id": "d1"})  # fmt: skip


def valid(message: str, instance: Any) -> bool:
    """Whether `instance` is what the document's `message` carries."""
    ref = DOC["components"]["messages"][message]["payload"]["$ref"]
    schema = {"$ref": ref, "components": DOC["components"]}
    try:
        jsonschema.Draft202012Validator(schema).validate(instance)
    except jsonschema.ValidationError:
        return False
    return True


def test_every_operation_and_channel_points_at_something_the_document_has() -> None:
    assert DOC["asyncapi"] == "3.0.0"
    for name, operation in DOC["operations"].items():
        channel = operation["channel"]["$ref"].removeprefix("#/channels/")
        assert channel in DOC["channels"], name
        for message in operation["messages"]:
            _, _, key = message["$ref"].partition(f"#/channels/{channel}/messages/")
            assert key in DOC["channels"][channel]["messages"], name
    for channel in DOC["channels"].values():
        for message in channel["messages"].values():
            assert (
                message["$ref"].removeprefix("#/components/messages/")
                in DOC["components"]["messages"]
            )


def test_every_frame_the_notifier_sends_is_published() -> None:
    frames = {
        "snapshot": snapshot_frame(
            JOB, 3, {"job_id": str(JOB), "status": "picked_up"}, POSITION, 1
        ),
        "eventMessage": event_frame(EVENT).full,
        "positionMessage": position_frame(JOB, POSITION),
        "resync": resync_frame(JOB, "not_retained"),
        "serverPing": ping_frame(NOW),
    }
    for message, frame in frames.items():
        assert valid(message, orjson.loads(frame)), message
    assert valid("eventMessage", orjson.loads(event_frame(EVENT).public))  # a share's
    assert valid("snapshot", orjson.loads(snapshot_frame(JOB, 0, {}, None, None)))


@pytest.mark.parametrize(
    ("message", "frame"),
    [
        ("positionMessage", {"type": "position", "job_id": str(JOB), "lat": 1.0}),
        ("eventMessage", {"type": "job.renamed", "job_id": str(JOB), "seq": 1, "status": "x",
                          "at": NOW.isoformat(), "data": {}}),
        ("serverPing", {"type": "ping", "ts": NOW.isoformat(), "extra": 1}),
    ],
)  # fmt: skip
def test_a_frame_off_the_published_shape_is_caught(message: str, frame: dict[str, Any]) -> None:
    assert not valid(message, frame)


def test_what_a_client_sends_and_the_topics_records_are_published() -> None:
    assert valid("auth", Auth(type="auth", token="t").model_dump(mode="json"))
    assert valid(
        "subscribe", orjson.loads(Subscribe(type="subscribe", job_id=JOB).model_dump_json())
    )
    ping = Ping(ping_id=uuid.uuid4(), ts=NOW, lat=12.9, lon=77.6, speed_mps=3.0)
    task = ProofPhotoTask(task_id=uuid.uuid4(), job_id=JOB, blob="ab")
    records = {
        "pingBatchRecord": encode_record("d1", NOW, [wire_ping(ping)]),
        "positionUpdate": POSITION.model_dump_json().encode(),
        "jobEvent": EVENT.model_dump_json().encode(),
        "proofPhotoTask": task.model_dump_json().encode(),
        "deviceRecord": DeviceRecord(driver_id="d1", added_at=NOW).model_dump_json().encode(),
    }
    for message, record in records.items():
        assert valid(message, orjson.loads(record)), message


def test_the_close_codes_and_the_dead_letter_topics_are_published() -> None:
    notifier = DOC["channels"]["notifier"]
    assert notifier["x-close-codes"] == {str(int(c)): c.name for c in CloseCode}
    for code in CloseCode:
        assert f"- {int(code)} {code.name}:" in notifier["description"]
    addresses = {channel["address"] for channel in DOC["channels"].values()}
    assert {"pings.v1.dlq", "tasks.v1.dlq", "pings.v1", "positions.v1", "job-events.v1",
            "tasks.v1", "devices.v1"} <= addresses  # fmt: skip
