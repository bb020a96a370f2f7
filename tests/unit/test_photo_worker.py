"""The photo worker's poison policy, on recorded steps: whatever one `tasks.v1` record
makes it raise, the record is dead-lettered with its error, its job goes back to the
driver, and the records after it are handled; only what is transient is retried."""

import uuid

import psycopg
import pytest

from jobs.errors import Conflict
from photo_worker.worker import settle
from schemas.tasks import ProofPhotoTask


def record(task_id: uuid.UUID | None = None) -> tuple[bytes, bytes]:
    task = ProofPhotoTask(task_id=task_id or uuid.uuid4(), job_id=uuid.uuid4(), blob="b")
    return str(task.job_id).encode(), task.model_dump_json().encode()


class RecordedSteps:
    """Handles tasks as told: `fail[task_id]` is raised (a list: one per attempt)."""

    def __init__(self, fail: dict[uuid.UUID, list[Exception]], refuse_fails: bool = False) -> None:
        self.fail = fail
        self.refuse_fails = refuse_fails
        self.handled: list[uuid.UUID] = []
        self.refused: list[tuple[uuid.UUID, str]] = []
        self.dead: list[tuple[bytes | None, bytes, str]] = []

    async def handle(self, task: ProofPhotoTask) -> str:
        if self.fail.get(task.task_id):
            raise self.fail[task.task_id].pop(0)
        self.handled.append(task.task_id)
        return "done"

    async def refuse(self, task: ProofPhotoTask, reason: str) -> str:
        if self.refuse_fails:
            raise Conflict("cannot refuse_proof a job that is completed")
        self.refused.append((task.task_id, reason))
        return "failed"

    async def dead_letter(self, key: bytes | None, value: bytes, error: str) -> None:
        self.dead.append((key, value, error))


async def test_a_record_raising_an_unexpected_error_is_dead_lettered_and_the_next_handled() -> None:
    poison, good = uuid.uuid4(), uuid.uuid4()
    steps = RecordedSteps({poison: [TypeError("The fill character must be a unicode character")]})
    key, value = record(poison)
    assert await settle(steps, key, value, retry_s=0) == "dead_lettered"
    assert steps.dead == [(key, value, "TypeError: The fill character must be a unicode character")]
    [(refused, reason)] = steps.refused
    assert refused == poison and "TypeError" in reason
    assert await settle(steps, *record(good), retry_s=0) == "done"
    assert steps.handled == [good]


async def test_a_transient_failure_is_retried_never_dead_lettered() -> None:
    task = uuid.uuid4()
    steps = RecordedSteps({task: [psycopg.OperationalError("server closed"), OSError("EIO")]})
    assert await settle(steps, *record(task), retry_s=0) == "done"
    assert steps.handled == [task] and steps.dead == [] and steps.refused == []


async def test_a_record_that_is_no_task_is_dead_lettered() -> None:
    steps = RecordedSteps({})
    assert await settle(steps, b"k", b'{"v": 1, "kind": "other"}', retry_s=0) == "malformed"
    [(key, value, error)] = steps.dead
    assert (key, value) == (b"k", b'{"v": 1, "kind": "other"}') and "not a task" in error


async def test_poison_whose_job_refuses_the_refusal_too_still_moves_on() -> None:
    task = uuid.uuid4()
    steps = RecordedSteps({task: [KeyError("result")]}, refuse_fails=True)
    assert await settle(steps, *record(task), retry_s=0) == "dead_lettered"
    assert len(steps.dead) == 1


@pytest.mark.parametrize("raised", [MemoryError(), RecursionError(), ZeroDivisionError()])
async def test_any_exception_type_is_poison(raised: Exception) -> None:
    task = uuid.uuid4()
    steps = RecordedSteps({task: [raised]})
    assert await settle(steps, *record(task), retry_s=0) == "dead_lettered"
