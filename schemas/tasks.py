"""Background tasks: the api's answers about them and the records on `tasks.v1`."""

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict

# A proof photo: what `POST /v1/jobs/{id}/complete` accepts (docs/api.md).
MAX_PHOTO_BYTES = 10 * 1024 * 1024
PHOTO_FORMATS = frozenset({"JPEG", "PNG"})
# Past this many pixels an image is a decompression bomb, whatever its file size.
MAX_PHOTO_PIXELS = 50_000_000


class TaskStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class TaskAccepted(BaseModel):
    task_id: UUID


class Task(BaseModel):
    task_id: UUID
    kind: str
    job_id: UUID | None
    status: TaskStatus
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    updated_at: datetime


class ProofPhotoTask(BaseModel):
    """The value of a `tasks.v1` record (key: the job id)."""

    model_config = ConfigDict(frozen=True)

    v: Literal[1] = 1
    kind: Literal["proof_photo"] = "proof_photo"
    task_id: UUID
    job_id: UUID
    blob: str  # the photo's key in the blob store
