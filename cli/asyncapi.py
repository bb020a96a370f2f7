"""The AsyncAPI 3.0 document of the platform's asynchronous contract (docs/asyncapi.json):
the notifier's WebSocket protocol and the Kafka topics, their messages' schemas generated
from the same pydantic models the services use (schemas/). `python -m cli.docs` writes
it; a test reads the notifier's real frames and the topics' real records through it."""

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from infra.config import StackConfig
from infra.kafka import TOPICS
from runtime.settings import LOCAL_KAFKA
from schemas import topics
from schemas.devices import DeviceRecord
from schemas.jobs import JobEvent
from schemas.notifier import CLIENT_MESSAGES, SERVER_MESSAGES, WS_PATH
from schemas.pings import PingBatchRecord
from schemas.positions import PositionUpdate
from schemas.tasks import ProofPhotoTask

REF = "#/components/schemas/{model}"
# Each topic's record (value, JSON) and what its key is.
TOPIC_RECORDS: dict[str, tuple[type[BaseModel], str]] = {
    topics.PINGS: (PingBatchRecord, "the driver id: one request's accepted pings"),
    topics.POSITIONS: (PositionUpdate, "the driver id: the driver's latest fix moved"),
    topics.JOB_EVENTS: (JobEvent, "the job id: a job's change, with its per-job seq"),
    topics.TASKS: (ProofPhotoTask, "the job id: a completion's proof photo to process"),
    topics.DEVICES: (DeviceRecord, "the device id; no value removes it (compacted)"),
}


def _message_name(model: type[BaseModel]) -> str:
    return model.__name__[0].lower() + model.__name__[1:]


def _schemas(models: list[type[BaseModel]]) -> dict[str, Any]:
    _, top = models_json_schema([(m, "serialization") for m in models], ref_template=REF)
    return dict(top.get("$defs", {}))


def _message(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "name": model.__name__,
        "title": model.__name__,
        "summary": (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "),
        "contentType": "application/json",
        "payload": {"$ref": REF.format(model=model.__name__)},
    }


def document() -> dict[str, Any]:
    public_host = f"127.0.0.1:{StackConfig.model_fields['edge_port'].default}"
    partitions = dict(TOPICS)
    models = [*CLIENT_MESSAGES, *SERVER_MESSAGES, *(m for m, _ in TOPIC_RECORDS.values())]
    ws_messages = {_message_name(m): {"$ref": f"#/components/messages/{_message_name(m)}"}
                   for m in (*CLIENT_MESSAGES, *SERVER_MESSAGES)}  # fmt: skip
    channels: dict[str, Any] = {
        "notifier": {
            "address": WS_PATH,
            "title": "Live push of jobs and positions (docs/notifier.md)",
            "servers": [{"$ref": "#/servers/edge"}],
            "messages": ws_messages,
        }
    }
    operations: dict[str, Any] = {}
    for model, action in [(m, "receive") for m in CLIENT_MESSAGES] + [
        (m, "send") for m in SERVER_MESSAGES
    ]:
        name = _message_name(model)
        operations[f"{action}{model.__name__}"] = {
            "action": action,
            "channel": {"$ref": "#/channels/notifier"},
            "messages": [{"$ref": f"#/channels/notifier/messages/{name}"}],
        }
    for topic, (model, key) in TOPIC_RECORDS.items():
        channel = topic.replace(".", "_").replace("-", "_")
        name = _message_name(model)
        channels[channel] = {
            "address": topic,
            "description": f"Key: {key}.",
            "servers": [{"$ref": "#/servers/kafka"}],
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "bindings": {"kafka": {"topic": topic, "partitions": partitions[topic]}},
        }
        operations[f"send_{channel}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [{"$ref": f"#/channels/{channel}/messages/{name}"}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "telemetry platform: live push and event topics",
            "version": "1",
            "description": (
                "The notifier's WebSocket protocol (the server receives auth, subscribe,"
                " unsubscribe and pong, and sends the rest) and the Kafka topics the"
                " services write. Generated from the models in schemas/ by"
                " `python -m cli.docs`."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "edge": {"host": public_host, "protocol": "ws", "description": "the edge (nginx)"},
            "kafka": {"host": LOCAL_KAFKA, "protocol": "kafka", "description": "the broker"},
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": {_message_name(m): _message(m) for m in models},
            "schemas": _schemas(models),
        },
    }
