"""The AsyncAPI 3.0 document of the platform's asynchronous contract (docs/asyncapi.yaml):
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
from schemas.notifier import CLIENT_MESSAGES, SERVER_MESSAGES, WS_PATH, CloseCode
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


# What a client does on each close code (docs/notifier.md, "Close codes").
CLOSE_ACTIONS = {
    CloseCode.GOING_AWAY: "reconnect (another process) and resume",
    CloseCode.INTERNAL_ERROR: "reconnect after a backoff and resume",
    CloseCode.TRY_AGAIN_LATER: "reconnect after a backoff and resume",
    CloseCode.BAD_MESSAGE: "fix the client",
    CloseCode.AUTH_FAILED: "get a new token",
    CloseCode.FORBIDDEN: "do not retry",
    CloseCode.SLOW_CONSUMER: "reconnect and resume, reading faster",
    CloseCode.TOO_MANY_SUBSCRIPTIONS: "follow fewer jobs on one connection",
}
DEAD_LETTERS = {
    topics.dlq(topics.PINGS): "a pings.v1 record the stream could not take",
    topics.dlq(topics.TASKS): "a tasks.v1 record the photo worker could not process",
}
DEAD_LETTER: dict[str, Any] = {
    "name": "DeadLetter",
    "title": "DeadLetter",
    "summary": "The original record's bytes, as they came; its key is the original key.",
    "contentType": "application/octet-stream",
    "headers": {
        "type": "object",
        "properties": {"error": {"type": "string", "description": "why it was refused"}},
    },
    "payload": {"type": "string", "format": "binary"},
}


def _close_codes() -> str:
    lines = [f"- {int(code)} {code.name}: {CLOSE_ACTIONS[code]}" for code in CloseCode]
    return "Close codes (the server's, with what a client does):\n" + "\n".join(lines)


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
            "description": _close_codes(),
            "servers": [{"$ref": "#/servers/edge"}],
            "messages": ws_messages,
            "x-close-codes": {str(int(c)): c.name for c in CloseCode},
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
    for topic, what in DEAD_LETTERS.items():
        channel = topic.replace(".", "_").replace("-", "_")
        channels[channel] = {
            "address": topic,
            "description": f"Dead letters: {what}, with its error.",
            "servers": [{"$ref": "#/servers/kafka"}],
            "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
            "bindings": {"kafka": {"topic": topic, "partitions": partitions[topic]}},
        }
        operations[f"send_{channel}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [{"$ref": f"#/channels/{channel}/messages/deadLetter"}],
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
            "messages": {_message_name(m): _message(m) for m in models}
            | {"deadLetter": DEAD_LETTER},
            "schemas": _schemas(models),
        },
    }
