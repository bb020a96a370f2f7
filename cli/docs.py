"""Generated reference docs: every setting (docs/configuration.md) and the HTTP API
(docs/api.md with each service's OpenAPI). `python -m cli.docs` rewrites them; a test
checks they are current."""

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI
from pydantic_settings import BaseSettings

from api.app import create_app as create_api
from api.config import ApiSettings
from cli import asyncapi
from infra.config import REPO_ROOT, StackConfig
from ingest.app import build_adapters
from ingest.app import create_app as create_ingest
from ingest.config import IngestSettings
from notifier.config import NotifierSettings
from photo_worker.config import PhotoWorkerSettings
from runtime.auth import generate_keypair
from streams.config import StreamsSettings

DOCS = REPO_ROOT / "docs"
SETTINGS: list[tuple[str, type[BaseSettings], str]] = [
    ("The local stack (`telemetry`)", StackConfig, "TELEMETRY_"),
    ("Ingest (`python -m ingest`)", IngestSettings, "INGEST_"),
    ("Streams (`python -m streams`)", StreamsSettings, "STREAMS_"),
    ("Api (`python -m api`)", ApiSettings, "API_"),
    ("Photo worker (`python -m photo_worker`)", PhotoWorkerSettings, "PHOTO_WORKER_"),
    ("Notifier (`python -m notifier`)", NotifierSettings, "NOTIFIER_"),
]


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, Path):
        # Paths under the checkout or in the home dir differ per machine.
        for base, name in ((REPO_ROOT, "<repo>"), (Path.home(), "~")):
            if value.is_relative_to(base):
                return f"`{name}/{value.relative_to(base)}`"
        return f"`{value}`"
    return f"`{value}`"


def configuration_markdown() -> str:
    lines = [
        "# Configuration",
        "",
        "Every setting, by environment variable, with its default. Generated from the",
        "settings classes by `python -m cli.docs`; a test fails when this file is stale.",
        "",
    ]
    for title, cls, prefix in SETTINGS:
        lines += [f"## {title}", "", "| variable | type | default |", "|---|---|---|"]
        for name, field in cls.model_fields.items():
            required = field.is_required()
            default = "required" if required else _default(field.get_default())
            kind = getattr(field.annotation, "__name__", str(field.annotation))
            kind = str(kind).replace("typing.", "").replace("pathlib.", "")
            # A pipe would end the table's cell, even inside backticks.
            kind = kind.replace(" | ", " or ")
            lines.append(f"| `{prefix}{name.upper()}` | {kind} | {default} |")
        lines.append("")
    return "\n".join(lines)


def _apps(key_dir: Path) -> dict[str, FastAPI]:
    private, public = key_dir / "k.pem", key_dir / "k.pub.pem"
    generate_keypair(private, public)
    ingest_settings = IngestSettings(jwt_public_key_path=public)
    return {
        "ingest": create_ingest(ingest_settings, build_adapters(ingest_settings)),
        "api": create_api(ApiSettings(jwt_public_key_path=public)),
    }


def openapi_documents() -> dict[str, dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        return {name: app.openapi() for name, app in _apps(Path(tmp)).items()}


def api_markdown(documents: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# HTTP API reference",
        "",
        "Generated from each service's OpenAPI by `python -m cli.docs` (the full documents",
        "are `docs/openapi-<service>.json`). Every error answers the envelope",
        '`{"error": {"code", "message", "details"}}`. Authentication: `Authorization: Bearer',
        "<JWT>` (EdDSA; `telemetry token` issues one: docs/operations.md).",
        "",
    ]
    for service, doc in documents.items():
        lines += [f"## {service}", "", "| method | path | summary | answers |", "|---|---|---|---|"]
        for path, operations in doc["paths"].items():
            for method, op in operations.items():
                statuses = ", ".join(sorted(op.get("responses", {})))
                summary = op.get("summary", "")
                lines.append(f"| {method.upper()} | `{path}` | {summary} | {statuses} |")
        lines.append("")
    return "\n".join(lines)


def rendered() -> dict[Path, str]:
    documents = openapi_documents()
    files = {
        DOCS / "configuration.md": configuration_markdown(),
        DOCS / "api.md": api_markdown(documents),
    }
    for service, doc in documents.items():
        files[DOCS / f"openapi-{service}.json"] = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    # YAML, as AsyncAPI documents are usually written (and read by its tools).
    files[DOCS / "asyncapi.yaml"] = yaml.safe_dump(asyncapi.document(), sort_keys=True, width=100)
    return files


def main() -> int:
    for path, text in rendered().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
